"""The Predict tab's run list: runs whose weights are partial are marked; the list follows new runs."""

import json
import os
import shutil

import gradio as gr
import pytest
import torch

from app.core.models.runs import RunProgress, find_runs, run_progress, weights_iteration
from app.views.predict import PredictView
from tests.test_app import _make_run


def _job(root, job_id, run, state):
    """A job record as the Train tab's JobManager writes it."""
    (root / ".jobs").mkdir(exist_ok=True)
    record = {
        "id": job_id,
        "command": ["python", "-m", "multimask", "train"],
        "run_dir": str(run.resolve()),
        "device": "cpu",
        "state": state,
        "log": str(root / ".jobs" / f"{job_id}.log"),
        "created": f"2026-01-01T00:00:0{job_id[-1]}+00:00",
    }
    (root / ".jobs" / f"{job_id}.json").write_text(json.dumps(record))


def _checkpoint(run, name, iteration=None):
    torch.save({"model": {}} if iteration is None else {"model": {}, "iteration": iteration}, run / name)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """done (CLI, summary.json), partial (CLI, last checkpoint of iteration 49), training (job running, best
    weights of iteration 19), stopped (job cancelled at 29), broke (job failed; resumed from a cancelled one),
    queued. Iterations count from 0: a checkpoint of iteration 49 holds 50 iterations of training."""
    root = tmp_path_factory.mktemp("progress") / "runs"
    _make_run(root / "done")
    (root / "done" / "summary.json").write_text('{"iterations": 100}')
    for name in ("partial", "training", "stopped", "broke", "queued"):
        (root / name).mkdir()
        shutil.copy(root / "done" / "config.yaml", root / name / "config.yaml")
    for name, it in (("partial", 49), ("stopped", 29), ("broke", 9)):
        _checkpoint(root / name, f"model_{it:07d}.pth")
        (root / name / "last_checkpoint").write_text(f"model_{it:07d}.pth")
    _checkpoint(root / "training", "model_best.pth", iteration=19)
    _checkpoint(root / "queued", "model_final.pth")
    _job(root, "job1", root / "training", "running")
    _job(root, "job2", root / "stopped", "cancelled")
    _job(root, "job3", root / "broke", "cancelled")
    _job(root, "job4", root / "broke", "failed")  # the newer job counts
    _job(root, "job5", root / "queued", "queued")
    _job(root, "job6", root / "done", "completed")
    return root


def test_run_progress_from_job_records_and_summaries(runs_root):
    progress = run_progress(runs_root, find_runs(runs_root))
    assert progress == {
        "done": RunProgress("complete"),
        "partial": RunProgress("unfinished", 50),
        "training": RunProgress("training", 20),
        "stopped": RunProgress("stopped", 30),
        "broke": RunProgress("failed", 10),
        "queued": RunProgress("training", None),
    }


def test_the_run_list_marks_partial_weights(runs_root):
    labels = dict((name, label) for label, name in PredictView(runs_root).run_choices())
    assert labels["done"].startswith("done  (") and "·" not in labels["done"]
    # completed iterations, as the Train tab counts them ("stopped after N iterations (checkpoint saved)")
    assert labels["training"].startswith("training · training… – weights after 20 iterations  (")
    assert labels["stopped"].startswith("stopped · stopped after 30 iterations  (")
    assert labels["broke"].startswith("broke · training failed – weights after 10 iterations  (")
    assert labels["partial"].startswith("partial · unfinished – weights after 50 iterations  (")
    assert labels["queued"].startswith("queued · training… – partial weights  (")


def test_runs_without_job_records_read_no_jobs_folder_into_being(tmp_path):
    _make_run(tmp_path / "runs" / "cli")
    assert run_progress(tmp_path / "runs", find_runs(tmp_path / "runs")) == {"cli": RunProgress("unfinished")}
    assert not (tmp_path / "runs" / ".jobs").exists()


def test_weights_iteration_from_the_name_or_the_checkpoint(tmp_path):
    _checkpoint(tmp_path, "model_best.pth", iteration=7)
    assert weights_iteration(tmp_path / "model_best.pth") == 7
    assert weights_iteration(tmp_path / "model_0000123.pth") == 123  # from the name alone
    (tmp_path / "model_final.pth").write_bytes(b"half a checkpoint")
    assert weights_iteration(tmp_path / "model_final.pth") is None
    assert weights_iteration(tmp_path / "missing.pth") is None


def test_the_timer_sends_the_run_list_only_when_it_changed(runs_root, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "done", root / "done")
    view = PredictView(root)
    update, listed = view.poll_runs(None, "done")
    assert [name for _, name in update["choices"]] == ["done"] and "value" not in update
    assert view.poll_runs(listed) == (gr.skip(), listed)
    shutil.copytree(runs_root / "partial", root / "new")
    os.utime(root / "new" / "model_0000049.pth")
    update, listed = view.poll_runs(listed, "done")
    assert [name for _, name in update["choices"]] == ["new", "done"] and "value" not in update
    (root / "new" / "summary.json").write_text("{}")  # it finished: the marker goes
    update, _ = view.poll_runs(listed)
    assert "unfinished" not in update["choices"][0][0]


def test_a_run_trained_after_the_page_opened_is_chosen_when_none_was(runs_root, tmp_path):
    root = tmp_path / "runs"
    view = PredictView(root)
    update, listed = view.poll_runs(None, None)
    assert update["choices"] == [] and "value" not in update
    shutil.copytree(runs_root / "done", root / "done")
    update, listed = view.poll_runs(listed, None)
    assert update["value"] == "done", "Predict picks the new run instead of answering 'Pick a run first'"
