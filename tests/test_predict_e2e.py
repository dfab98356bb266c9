"""The Predict tab in headless Chromium at 1440x900: a small image shown larger, instance numbers, a row click
highlighting its instance, the downloads, and the run list following a new run."""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from app import build_app
from app.views.predict import RUNS_POLL_SECONDS
from tests.conftest import free_port
from tests.test_app import _make_run

SCREENSHOTS = Path(os.environ.get("MULTIMASK_SCREENSHOTS", "/nonexistent"))  # e.g. MULTIMASK_SCREENSHOTS=/tmp
WAIT_MS = 180_000  # for the model and the page on a slow, shared machine


def _image(h, w, seed):
    rng = np.random.RandomState(seed)
    img = np.full((h, w, 3), 60, np.uint8)
    for _ in range(12):
        x, y = rng.randint(0, w * 9 // 10), rng.randint(0, h * 9 // 10)
        img[y : y + rng.randint(h // 18, h // 5), x : x + rng.randint(w // 30, w // 8)] = rng.randint(120, 255, 3)
    return img


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_app")
    _make_run(root / "runs" / "exp1")
    for name, (h, w) in (("small", (120, 160)), ("photo", (1080, 1920))):
        cv2.imwrite(str(root / f"{name}.png"), _image(h, w, 0))
    demo = build_app(root / "data", root / "runs").blocks
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/", root
    demo.close()


def _screenshot(pg, name):
    """For the humans: the whole page as <MULTIMASK_SCREENSHOTS>/<name>.png when that names a folder."""
    if SCREENSHOTS.is_dir():
        pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _status(pg):
    return pg.locator("#mm-predict-status").inner_text()


def _wait_status(pg, text):
    """Wait until the status line contains `text`."""
    pg.wait_for_function(
        "t => document.querySelector('#mm-predict-status').innerText.includes(t)", arg=text, timeout=WAIT_MS
    )


def _overlay(pg):
    return pg.evaluate("""() => { const i = document.querySelector('#mm-predict-overlay img');
        return i && {src: i.src, natural: i.naturalWidth, shown: i.getBoundingClientRect().width}; }""")


def _cell(pg, row, column):
    return pg.locator(f"#mm-predict-table [data-testid=cell-{row}-{column}]")


def _set_threshold(pg, value):
    box = pg.get_by_label("number input for Score threshold")
    box.fill(str(value))
    box.press("Enter")


def _upload(pg, path):
    pg.locator("#mm-predict-image input[type=file]").set_input_files(str(path))


@pytest.mark.slow
def test_predict_tab_in_a_browser(served, browser):
    url, root = served
    pg = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.get_by_role("tab", name="Predict").click()
    _set_threshold(pg, 0.3)
    _upload(pg, root / "small.png")
    _wait_status(pg, "detections with score ≥ 0.30")
    pg.wait_for_function("() => document.querySelector('#mm-predict-overlay img')?.naturalWidth > 0", timeout=WAIT_MS)
    shown = _overlay(pg)
    assert shown["natural"] == 960, "a 160x120 image is drawn 6x, nearest-neighbour"
    assert shown["shown"] >= 600, "and fills the column"
    assert (
        pg.locator(
            "#mm-predict-overlay button[aria-label*='ullscreen'], #mm-predict-overlay button[title*='ullscreen']"
        ).count()
        == 1
    )
    rows = int(pg.locator("#mm-predict-table [role=grid]").get_attribute("aria-rowcount")) - 1  # less the header
    assert rows >= 2
    assert _cell(pg, 0, 0).inner_text().strip() == "1"
    _screenshot(pg, "predict_e2e_small")

    # downloads: the JSON lists the table's rows, in the upload's pixels
    pg.wait_for_function("() => !document.querySelector('#mm-predict-json').disabled", timeout=WAIT_MS)
    with pg.expect_download(timeout=WAIT_MS) as download:
        pg.locator("#mm-predict-json").click()
    doc = json.loads(Path(download.value.path()).read_text())
    assert download.value.suggested_filename == "small_predictions.json"
    (image,) = doc["images"]
    assert (image["height"], image["width"]) == (120, 160) and len(image["instances"]) == rows
    with pg.expect_download(timeout=WAIT_MS) as download:
        pg.locator("#mm-predict-png").click()
    overlay = cv2.imread(download.value.path())
    assert download.value.suggested_filename == "small_overlay.png" and overlay.shape == (720, 960, 3)

    # a click on row #2 highlights it; a second click shows all again
    before = _overlay(pg)["src"]
    _cell(pg, 1, 1).click()
    _wait_status(pg, "Instance #2 highlighted")
    pg.wait_for_function(
        "s => document.querySelector('#mm-predict-overlay img').src !== s", arg=before, timeout=WAIT_MS
    )
    _screenshot(pg, "predict_e2e_highlight")
    _cell(pg, 1, 1).click()
    _wait_status(pg, "detections with score")

    # a new run appears in the list without a reload (the timer), marked as unfinished (no summary.json)
    shutil.copytree(root / "runs" / "exp1", root / "runs" / "exp2")
    (root / "runs" / "exp1" / "summary.json").write_text("{}")
    pg.locator("#mm-predict-run input").click()
    pg.get_by_role("option", name="exp2 · unfinished").wait_for(timeout=WAIT_MS + RUNS_POLL_SECONDS * 1000)
    assert pg.get_by_role("option").count() == 2
    _screenshot(pg, "predict_e2e_runs")
    pg.keyboard.press("Escape")
    assert "Instance" not in _status(pg) and "⚠️" not in _status(pg)

    # a 1920x1080 photo with several instances, for the humans who look at the screenshots
    _set_threshold(pg, 0.32)
    _upload(pg, root / "photo.png")
    _wait_status(pg, "model ran in")
    pg.wait_for_function(
        "() => document.querySelector('#mm-predict-overlay img')?.naturalWidth === 1600", timeout=WAIT_MS
    )
    _screenshot(pg, "predict_e2e_photo")
    assert not errors, errors
