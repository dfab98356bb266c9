"""Issue 11, Train tab, in headless Chromium at 1440x900: what a newcomer sees. The app runs in this process over
run folders the tests write (no training), so every wait below is for a page condition, bounded generously."""

import json
import os
import sys
from pathlib import Path

import pytest

from app import build_app
from app.core.datasets.storage import LabelStore
from app.core.jobs.form import parse_settings
from app.core.jobs.manager import JobManager
from multimask.config import get_multimask_cfg
from multimask.data.synth import CLASSES, generate_synthetic_dataset
from tests.conftest import serve_app

pytestmark = pytest.mark.slow  # every test here drives the served app in a browser

WAIT_MS = 60_000  # for the page to show something: a 10x slower machine still makes it
MASKS = ("primary", "secondary", "core")
MANY_CLASSES = [f"class{i:02d}" for i in range(12)]
HEAD_SERIES = ["cls", "box_reg", "rpn_cls", "rpn_loc", *(f"mask_{m}" for m in MASKS)]
SCREENSHOTS = Path(os.environ.get("MULTIMASK_SCREENSHOTS", "/nonexistent"))  # e.g. MULTIMASK_SCREENSHOTS=/tmp


def _screenshot(page, name: str, full_page: bool = False) -> None:
    """For the humans: <MULTIMASK_SCREENSHOTS>/<name>.png when that names a folder."""
    if SCREENSHOTS.is_dir():
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def _external_run(runs_root, name):
    """A run folder trained with the CLI: config, 100 iterations of 7 head losses, final AP of 12 classes, log."""
    run = runs_root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(get_multimask_cfg("tiny_cpu", ["SOLVER.MAX_ITER", 100]).dump())
    rows = [
        {
            "iteration": i,
            "total_loss": 3.0 - i / 50,
            "lr": 0.01,
            "time": 0.5,
            **{f"loss_{s}": 0.1 * k + 0.1 for k, s in enumerate(HEAD_SERIES)},
        }
        for i in range(100)
    ]
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = ["bbox", *(f"segm/{m}" for m in MASKS)]
    (run / "eval_results.json").write_text(
        json.dumps(
            {
                t: {
                    "AP": 10.0,
                    "AP50": 20.0,
                    "AP75": 5.0,
                    "APs": 1.0,
                    "APm": 2.0,
                    "APl": 3.0,
                    **{f"AP-{c}": 12.5 for c in MANY_CLASSES},
                }
                for t in tasks
            }
        )
    )
    (run / "summary.json").write_text(json.dumps({"iterations": 100, "max_iter": 100, "best": None}))
    (run / "log.txt").write_text("".join(f"log line {i}\n" for i in range(300)))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_page")
    synth = generate_synthetic_dataset(base / "synth", num_train=12, num_val=0, seed=1, height=64, width=80)
    LabelStore(base / "datasets").create("shapes", CLASSES).import_multimask(synth["train"])
    runs = base / "runs"
    _external_run(runs, "cli-many")
    manager = JobManager(runs / ".jobs", runs, require_module=None)  # a job of this app that failed at once
    settings = parse_settings(
        {"dataset": "shapes", "start": "tiny", "iterations": 77, "eval_period": 7, "device": "cpu", "amp": False},
        runs=[],
    ).to_dict()
    job = manager.submit(
        [sys.executable, "-c", "import sys; sys.exit(1)", "train"],
        runs / "crashed",
        "cpu",
        run_name="crashed",
        dataset="shapes",
        max_iter=77,
        settings=settings,
    )
    assert manager.wait(job["id"], timeout=120)["state"] == "failed"
    demo = build_app(base / "datasets", runs)
    server = serve_app(demo)
    yield {"url": f"{server.local_url}/", "runs": runs}
    server.close()


@pytest.fixture
def page(app, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(app["url"])
    page.get_by_role("tab", name="Train").click()
    page.locator(".mm-train-progress").wait_for(timeout=WAIT_MS)  # the page's load events have run
    yield page
    page.close()


def _choose_run(page, name):
    page.locator("#mm-train-run input").click()
    page.get_by_role("option", name=name, exact=True).click()


def _inside(inner, outer) -> bool:
    return (
        outer["x"] - 1 <= inner["x"]
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 1
        and outer["y"] - 1 <= inner["y"]
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 1
    )


def test_a_cli_run_shows_every_loss_series_ap_column_and_the_end_of_its_log(page):
    _choose_run(page, "cli-many")
    page.locator("#mm-train-progress [data-state='completed']").wait_for(timeout=WAIT_MS)
    page.get_by_text("trained outside this app").wait_for(timeout=WAIT_MS)
    plot = page.locator("#mm-loss-plot")
    for name in HEAD_SERIES:  # every series in the legend, drawn inside the plot's box
        label = plot.get_by_text(name, exact=True)
        label.wait_for(timeout=WAIT_MS)
        assert _inside(label.bounding_box(), plot.bounding_box()), f"legend entry {name} is cut off"
    table = page.locator("#mm-train-ap-table")
    table.get_by_text("AP-class11").wait_for(timeout=WAIT_MS)
    box = table.bounding_box()
    headers = table.locator("thead th")
    assert headers.count() == 5, "metric, bbox and the three masks"
    for i in range(headers.count()):
        assert _inside(headers.nth(i).bounding_box(), box), f"column {headers.nth(i).inner_text()} is cut off"
    log = page.locator("#mm-train-log pre")
    log.get_by_text("log line 299").wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "(el) => el.scrollTop + el.clientHeight >= el.scrollHeight - 2", arg=log.element_handle(), timeout=WAIT_MS
    )  # scrolled to its end: the last line is in view
    _screenshot(page, "train_page_cli_run", full_page=True)


def test_disabled_buttons_look_disabled(page):
    _choose_run(page, "crashed")
    page.locator("#mm-train-progress [data-state='failed']").wait_for(timeout=WAIT_MS)
    opacity = "(el) => getComputedStyle(el).opacity"
    for name in ("Stop", "Resume"):  # failed before its first checkpoint: nothing to stop or resume
        button = page.get_by_role("button", name=name, exact=True)
        assert button.is_disabled()
        assert float(button.evaluate(opacity)) < 0.6, f"{name} is disabled but looks enabled"
    assert float(page.get_by_role("button", name="Open in Predict").evaluate(opacity)) == 1.0


def test_after_a_reload_the_form_shows_the_selected_runs_settings(page):
    assert page.locator("#mm-train-run input").input_value() == "crashed", "the newest run is shown first"
    page.wait_for_function("() => document.querySelector('#mm-train-iterations input').value === '77'", timeout=WAIT_MS)
    assert page.locator("#mm-train-eval-period input").input_value() == "7"


def test_the_starting_point_sets_the_fields_and_the_estimate_follows(page):
    estimate = page.locator("#mm-train-estimate")
    estimate.get_by_text("tiny model").wait_for(timeout=WAIT_MS)
    page.locator("#mm-train-start-point input").click()
    page.get_by_role("option", name="COCO Mask R-CNN", exact=False).click()
    page.wait_for_function(
        "() => document.querySelector('#mm-train-image-size input').value === '512'", timeout=WAIT_MS
    )  # R50-FPN on the CPU
    estimate.get_by_text("R50-FPN on the CPU takes seconds per image").wait_for(timeout=WAIT_MS)
    assert page.locator("#mm-train-iterations input").input_value() == "200"
    assert page.locator("#mm-train-eval-period input").input_value() == "50"
    iterations = page.locator("#mm-train-iterations input")
    iterations.fill("20")
    iterations.press("Enter")
    page.get_by_text("is more than the 20 iterations; set to 20").first.wait_for(timeout=WAIT_MS)  # a toast
    page.wait_for_function(
        "() => document.querySelector('#mm-train-eval-period input').value === '20'", timeout=WAIT_MS
    )
    estimate.get_by_text("20 iterations of 2 images at 512 px").wait_for(timeout=WAIT_MS)
    _screenshot(page, "train_page_estimate")


def test_an_action_is_confirmed_in_a_toast_at_the_top(page):
    _choose_run(page, "crashed")
    page.get_by_role("button", name="Delete run").click()
    toast = page.locator(".toast-body").filter(has_text="Tick 'confirm' to delete run crashed")
    toast.wait_for(timeout=WAIT_MS)
    assert toast.bounding_box()["y"] < 900, "in view without scrolling"


def test_a_run_folder_that_appears_is_listed_without_a_reload(app, page):
    _external_run(app["runs"], "cli-later")
    page.locator("#mm-train-run input").click()  # the timer refreshes the open list
    page.get_by_role("option", name="cli-later", exact=True).wait_for(timeout=WAIT_MS)
