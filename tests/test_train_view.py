"""The Train tab end to end: a real app process, real CPU training jobs, driven through gradio_client and a
headless Chromium. The app is restarted mid-run to check that jobs outlive it."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError

from app.core.datasets.storage import LabelStore
from multimask.data.synth import CLASSES, generate_synthetic_dataset
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # every test here starts the app and trains

ROOT = Path(__file__).resolve().parent.parent
STATE, RECORD, RUNS, EVAL = 0, 8, 9, 6  # positions in /train_status's outputs (see build_train_tab)
TINY = {
    "start": "tiny",
    "batch_size": 2,
    "lr": 0.01,
    "image_size": 128,
    "device": "cpu",
    "amp": False,
    "val_fraction": 0.25,
    "seed": 0,
    "patience": 0,
    "best_metric": "segm/primary/AP",
    "advanced": "",
    "schedule": "step",
    "num_gpus": 1,
}


class App:
    """`python launch.py` in its own process, restartable on the same folders and port."""

    def __init__(self, data_root: Path, runs_root: Path):
        self.args = [
            sys.executable,
            "launch.py",
            "--data-root",
            str(data_root),
            "--runs-root",
            str(runs_root),
            "--port",
            str(free_port()),
        ]
        self.url = f"http://127.0.0.1:{self.args[-1]}/"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, "the app exited while starting"
            try:
                urllib.request.urlopen(self.url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from gradio_client import Client

        self.client = Client(self.url, verbose=False)
        return self

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, api, *args, **kwargs):
        return self.client.predict(*args, api_name=api, **kwargs)

    def status(self, run):
        out = self.call("/train_status", run)
        return out[RECORD], out

    def wait(self, run, until, timeout=600, what="the condition"):
        """Poll until `until(record)`; fail at once when the job ended otherwise."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            record, out = self.status(run)
            if until(record):
                return record, out
            if record["state"] in ("completed", "failed", "cancelled"):
                pytest.fail(f"{run}: {record['state']} before {what}: {record['error']}")
            time.sleep(0.5)
        pytest.fail(f"{run}: timed out waiting for {what}; last record: {record}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_app")
    synth = generate_synthetic_dataset(base / "synth", num_train=12, num_val=0, seed=1, height=128, width=160)
    store = LabelStore(base / "datasets")
    store.create("shapes", CLASSES).import_multimask(synth["train"])
    broken = store.create("broken", CLASSES)
    broken.import_multimask(synth["train"])
    for image in (base / "datasets" / "broken" / "images").iterdir():
        image.write_bytes(b"not an image any more")  # damaged on disk after labelling
    server = App(base / "datasets", base / "runs").start()
    yield server
    server.stop()


def _start(app, run, dataset="shapes", **form):
    message, _ = app.call("/train_start", **{**TINY, "dataset": dataset, "run_name": run, **form})
    assert message.startswith(f"Run **{run}**"), message
    return message


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_train_stop_resume_restart_and_complete(app):
    _start(app, "first", iterations=60, eval_period=30)
    record, _ = app.wait("first", lambda r: r["progress"]["iteration"] >= 3, what="progress")
    assert record["state"] == "running" and record["images"] == {"train": 9, "val": 3}
    first_job = record["id"]

    assert "stopping" in app.call("/train_stop", "first")
    record, _ = app.wait("first", lambda r: r["state"] == "cancelled", what="the graceful stop")
    stopped_at = record["progress"]["iteration"]
    assert record["error"] == f"stopped after {stopped_at} iterations (checkpoint saved); press Resume to continue"
    assert stopped_at < 60

    assert "resuming" in app.call("/train_resume", "first")
    record, _ = app.wait("first", lambda r: r["id"] != first_job and r["state"] == "running", what="resume")
    pid = record["pid"]

    app.stop()  # the job runs on without the app (on a fast machine it may even finish meanwhile)
    alive = _pid_alive(pid)
    app.start()
    record, _ = app.status("first")
    assert record["id"] != first_job and record["state"] in ("running", "completed"), record
    assert alive or record["state"] == "completed", "the job's process ended with the app, unfinished"

    record, out = app.wait("first", lambda r: r["state"] == "completed", timeout=900, what="completion")
    assert record["progress"]["iteration"] == 60 and len(record["jobs"]) == 2
    assert set(record["final_ap"]) == {"bbox", "segm/primary", "segm/secondary"}
    table = out[EVAL]
    assert table["headers"] == ["metric", "bbox", "segm/primary", "segm/secondary"]
    assert [row[0] for row in table["data"] if row[0].startswith("AP-")] == [f"AP-{c}" for c in CLASSES]
    runs = out[RUNS]
    row = runs["data"][[r[0] for r in runs["data"]].index("first")]
    assert row[1:4] == ["completed", "shapes", "60/60"]
    assert record["run_dir"] == "runs/first", "named from the runs folder, not as a server path"
    logged = Path(app.args[app.args.index("--runs-root") + 1]) / "first"
    assert (logged / "model_best.pth").is_file() and (logged / "data" / "train.json").is_file()


def test_a_broken_dataset_fails_with_its_error(app):
    _start(app, "broken-run", dataset="broken", iterations=5, eval_period=0)
    record, out = app.wait("broken-run", lambda r: r["state"] in ("failed", "completed"), what="the failure")
    assert record["state"] == "failed"
    assert record["error"].startswith("error: ") and " datasets/broken/images/" in record["error"]
    assert "cannot read the image" in record["error"]
    assert "mm-job-error" in out[STATE]


def test_queued_jobs_run_one_after_the_other(app):
    _start(app, "queued-a", iterations=4, eval_period=0, val_fraction=0.0)
    message = _start(app, "queued-b", iterations=4, eval_period=0, val_fraction=0.0)
    assert "queued" in message
    a, _ = app.wait("queued-a", lambda r: r["state"] == "completed", what="the first job")
    b, _ = app.wait("queued-b", lambda r: r["state"] == "completed", what="the second job")
    assert b["started"] >= a["ended"]


def test_form_errors_reach_the_page(app):
    message, _ = app.call(
        "/train_start", **{**TINY, "dataset": "shapes", "run_name": "../x", "iterations": 5, "eval_period": 0}
    )
    assert message.startswith("⚠️ run name")
    with pytest.raises(AppError, match="nope is not in the list of choices"):  # Gradio's own check
        app.call("/train_start", **{**TINY, "dataset": "nope", "run_name": "", "iterations": 5, "eval_period": 0})


def _page_run(page) -> str:
    """The run the Train page's dropdown shows (diagnosis of a stalled page: is it the run the test watches?)."""
    return page.locator("#mm-train-run input").input_value()


def test_the_loss_plot_appears_and_updates(app, browser):
    _start(app, "watched", iterations=2000, eval_period=0, val_fraction=0.0)
    app.wait("watched", lambda r: r["progress"]["iteration"] >= 2, what="progress")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app.url)
        page.get_by_role("tab", name="Train").click()
        # The page shows the running run, and keeps it: opening the tab once sent back the run it saw before the
        # page load had chosen (an older one), so the page followed that run and seemed stalled (_choices_keeping).
        page.wait_for_function(
            "() => document.querySelector('#mm-train-run input').value === 'watched'", timeout=60_000
        )
        progress = page.locator(".mm-train-progress")
        progress.wait_for(timeout=30_000)
        plot = page.locator("#mm-loss-plot canvas, #mm-loss-plot svg").first
        plot.wait_for(timeout=30_000)
        first_it = int(progress.get_attribute("data-iteration"))
        first_png = page.locator("#mm-loss-plot").screenshot()
        deadline = time.time() + 150  # 5 iterations take ~3 s here; generous for a 10x slower machine
        while time.time() < deadline and int(progress.get_attribute("data-iteration")) < first_it + 5:
            time.sleep(2.5)
        shown = int(progress.get_attribute("data-iteration"))
        assert shown >= first_it + 5, (
            f"the page's progress stayed at {shown} (first {first_it}) for 150 s; "
            f"the run's own record says {app.status('watched')[0]['progress']['iteration']}; the page shows run "
            f"{_page_run(page)!r} ({progress.inner_text()[:120]!r})"
        )
        assert _page_run(page) == "watched"
        time.sleep(2.5)  # one more tick of the page's timer
        assert page.locator("#mm-loss-plot").screenshot() != first_png, "the loss plot did not change"
    finally:
        page.close()
        app.call("/train_stop", "watched")
    app.wait("watched", lambda r: r["state"] == "cancelled", what="the stop")


def test_a_run_opens_in_predict_and_for_labelling(app, browser):
    _start(app, "quick", iterations=2, eval_period=0, val_fraction=0.0)
    app.wait("quick", lambda r: r["state"] == "completed", what="completion")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app.url)
        time.sleep(3)  # the page's load events have run
        app.call("/create_dataset", "made-later", "leaf", "whole, lesion")
        page.get_by_role("tab", name="Train").click()
        page.locator("#mm-train-dataset input").click()
        page.get_by_role("option", name="made-later", exact=True).click()  # offered: refreshed on opening
        page.locator("#mm-train-best input").click()
        page.get_by_role("option", name="lesion mask AP", exact=True).click()  # its own mask names
        page.locator("#mm-train-start").click()
        message = page.locator("#mm-train-message")
        message.get_by_text("has no labelled images for training yet").wait_for(timeout=10_000)
        page.locator("#mm-train-run input").click()
        page.get_by_role("option", name="quick", exact=True).click()
        page.get_by_role("button", name="Open in Predict").click()
        page.get_by_role("tab", name="Predict", selected=True).wait_for(timeout=10_000)
        assert page.locator("#mm-predict-run input").input_value().startswith("quick  (")
        page.get_by_role("tab", name="Train").click()
        page.get_by_role("button", name="Use for labelling").click()
        page.get_by_role("tab", name="Label", selected=True).wait_for(timeout=10_000)
        assert page.locator("#mm-label-run input").input_value() == "quick"
    finally:
        page.close()


def test_the_app_names_an_upload_that_is_not_an_image(app, tmp_path):
    """A bad upload is named in the Predict tab's status line (Gradio's own decoding failed with a bare error)."""
    from gradio_client import handle_file

    bad = tmp_path / "photo.png"
    bad.write_bytes(b"not an image")
    overlay, _, status = app.client.predict(None, handle_file(str(bad)), 0.5, [], api_name="/predict")
    assert overlay is None and status == (
        "⚠️ The upload is not a readable image: 'photo.png' is text, not an image. Use PNG, JPEG, BMP, TIFF or WebP."
    )
