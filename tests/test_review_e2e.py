"""The review queue in headless Chromium: rank the demo dataset with a run, step through it worst first."""

import pytest

from app import build_app
from tests.conftest import serve_app
from tests.test_app import _make_run


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_app")
    _make_run(root / "runs" / "tiny")  # random weights over the demo's classes: it disagrees somewhere
    app = build_app(root / "data", root / "runs")
    app.label.view.create_demo()
    server = serve_app(app)
    yield app, f"{server.local_url}/"
    server.close()


def _shown_file(pg) -> str:
    return pg.inner_text("#mm-editor .mm-info .mm-file")


@pytest.mark.slow
def test_rank_then_step_through_the_queue_worst_first(served, browser):
    app, url = served
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.locator("#mm-label-dataset input").click()
    pg.get_by_role("option", name="demo").click()
    pg.wait_for_function("() => window.mmEditor && window.mmEditor.state().dataset === 'demo'")
    pg.get_by_text("Model-assisted labelling").click()
    pg.locator("#mm-label-run input").click()
    pg.get_by_role("option", name="tiny").click()
    pg.click("#mm-review-rank")
    pg.locator("#mm-review-summary").get_by_text("Ranked 24 labelled image(s) by tiny").wait_for(timeout=120_000)

    def cell(row, col):  # Gradio's Dataframe: a virtual grid of cells
        return pg.locator(f"#mm-review-table [data-testid=cell-{row}-{col}]")

    files = [cell(k, 1).inner_text().strip() for k in range(3)]
    scores = [float(cell(k, 2).inner_text()) for k in range(3)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    # The ranking is the server's own, worst first.
    _, table, queue, _ = app.label.view.review.rank(
        "demo", "tiny", pg.locator("#mm-label-threshold input").first.input_value()
    )
    assert list(table["image"][:3]) == files
    # Next in queue opens them in order; a click on a row opens that one.
    for k in range(2):
        pg.click("#mm-review-next")
        pg.wait_for_function(
            "f => document.querySelector('#mm-editor .mm-info .mm-file')?.innerText === f", arg=files[k]
        )
        # Gradio's queue overlay ("queue: 1/1") covers the text while the event runs: wait for the text.
        pg.locator("#mm-review-where").get_by_text(f"Image {k + 1} of 24 in the queue.", exact=True).wait_for()
    cell(2, 1).click()
    pg.wait_for_function("f => document.querySelector('#mm-editor .mm-info .mm-file')?.innerText === f", arg=files[2])
    pg.click("#mm-review-next")  # from the clicked row on
    pg.locator("#mm-review-where").get_by_text("Image 4 of 24 in the queue.").wait_for()
    assert _shown_file(pg) == table["image"][3]
    assert not errors, errors
