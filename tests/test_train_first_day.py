"""Issue 11, Train tab, without a browser: runs trained with the CLI are listed, the form follows the starting
point and the device and estimates the duration, local weights files, resume only from a checkpoint, the
form filled from a run's settings, and words the page uses (completed iterations, Resume, offline weights)."""

import json
import sys
from pathlib import Path

import pytest

from app.core.datasets.storage import LabelStore
from app.core.jobs import form, monitor
from app.core.jobs import manager as jobs
from app.core.jobs.form import FormError, parse_settings
from app.core.jobs.manager import JobError, JobManager
from app.core.jobs.service import TrainingService
from app.views.train import TrainView
from multimask.config import get_multimask_cfg
from multimask.data.synth import CLASSES, generate_synthetic_dataset

FORM = {
    "dataset": "shapes",
    "start": "tiny",
    "iterations": 200,
    "batch_size": 2,
    "lr": 0.01,
    "image_size": 320,
    "val_fraction": 0.2,
    "device": "cpu",
    "amp": False,
    "eval_period": 50,
}


@pytest.fixture
def service(tmp_path):
    """A service over a 'shapes' dataset of 12 labelled images (no GPU), whose jobs may run plain scripts."""
    synth = generate_synthetic_dataset(tmp_path / "synth", num_train=12, num_val=0, seed=1, height=64, width=80)
    LabelStore(tmp_path / "datasets").create("shapes", CLASSES).import_multimask(synth["train"])
    service = TrainingService(tmp_path / "datasets", tmp_path / "runs", gpus=0)
    service.jobs = JobManager(service.jobs.jobs_root, service.runs_root, require_module=None)
    return service


def _cli_run(runs_root: Path, name: str, metrics: int = 0, summary: bool = False) -> Path:
    """A run folder as `python -m multimask train --output-dir` leaves it: config, metrics, maybe summary."""
    run = runs_root / name
    run.mkdir(parents=True)
    cfg = get_multimask_cfg("tiny_cpu", ["SOLVER.MAX_ITER", 40, "SOLVER.IMS_PER_BATCH", 2, "MODEL.DEVICE", "cpu"])
    (run / "config.yaml").write_text(cfg.dump())
    (run / "metrics.json").write_text(
        "".join(json.dumps({"iteration": i, "total_loss": 1.0, "time": 0.5}) + "\n" for i in range(metrics))
    )
    (run / "run_info.json").write_text(
        json.dumps(
            {"starts": [{"time": "2026-01-02T03:04:05+00:00"}], "data": {"train": {"path": "/data/leaves/train.json"}}}
        )
    )
    if summary:
        (run / "summary.json").write_text(json.dumps({"iterations": 40, "max_iter": 40, "best": None}))
    return run


def _job(service, run_name, script="pass", settings=None):
    argv = [sys.executable, "-c", script, "train"]
    job = service.jobs.submit(
        argv, service.runs_root / run_name, "cpu", run_name=run_name, dataset="shapes", max_iter=10, settings=settings
    )
    return service.jobs.wait(job["id"], timeout=60)


# --- (3) runs trained with the CLI


def test_cli_runs_are_listed_read_only_with_their_progress(service):
    _job(service, "app-run")
    _cli_run(service.runs_root, "cli-training", metrics=7)  # before its first checkpoint: no weights yet
    _cli_run(service.runs_root, "group/cli-done", metrics=40, summary=True)
    (service.runs_root / ".weights").mkdir()
    (service.runs_root / "not-a-run").mkdir()
    assert set(service.run_names()) == {"app-run", "cli-training", "group/cli-done"}

    snap = service.snapshot("cli-training")
    assert snap["job"]["state"] == "external" and snap["record"]["external"] is True
    assert snap["record"]["progress"]["iteration"] == 7 and snap["record"]["progress"]["max_iter"] == 40
    assert snap["record"]["can_resume"] is False and snap["job"]["dataset"] == "leaves/train.json"
    assert service.snapshot("group/cli-done")["job"]["state"] == "completed"
    rows = {r["run"]: r for r in service.runs_overview()}
    assert (rows["cli-training"]["state"], rows["cli-training"]["iterations"]) == ("external", "7/40")
    assert rows["group/cli-done"]["started"] == "2026-01-02 03:04"
    for action in (service.stop, service.resume):
        with pytest.raises(JobError, match="trained outside this app"):
            action("cli-training")
    with pytest.raises(JobError, match="trained outside this app"):
        service.delete("cli-training", True)
    assert (service.runs_root / "cli-training").is_dir()


def test_the_monitor_shows_a_cli_run_without_stop_or_resume(service):
    run = _cli_run(service.runs_root, "cli-run", metrics=3)
    (run / "log.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    out = TrainView(service).status("cli-run")
    assert "data-state='external'" in out["progress"] and "python -m multimask train" in out["progress"]
    assert out["log"].endswith("line 99"), "its log.txt is the log"
    assert out["stop"]["interactive"] is False and out["resume"]["interactive"] is False, "no Stop, no Resume"


def test_the_timer_sends_the_run_list_only_when_runs_appear(service):
    view = TrainView(service)
    first = view.tick(None, None, None)
    assert first["run"]["choices"] == [] and first["names"] == []
    assert view.tick(None, first["shown"], first["names"])["run"] == {"__type__": "update"}, "unchanged: skipped"
    _cli_run(service.runs_root, "cli-run", metrics=1)
    later = view.tick(None, first["shown"], first["names"])
    assert later["run"]["choices"] == ["cli-run"] and later["names"] == ["cli-run"]
    assert view.run_choices(None)["choices"] == ["cli-run"]
    assert view.refresh_form("shapes", "tiny", None)[2]["choices"] == ["cli-run"], "tab select, ↻"


def test_refreshing_the_lists_leaves_the_page_s_choices_alone(service):
    """Opening the tab refreshes the lists with the values it saw; sending those back undid the page load's choice
    of the running run (the page then followed an older one: the Train page 'stalled' in full-suite runs)."""
    view = TrainView(service)
    _cli_run(service.runs_root, "old", metrics=1)
    _cli_run(service.runs_root, "new", metrics=1)
    dataset, start, run = view.refresh_form("shapes", "tiny", "old")
    assert "value" not in run and "value" not in dataset and "value" not in start, "still offered: the page's own"
    assert set(run["choices"]) == {"old", "new"}
    gone = view.refresh_form("deleted-dataset", "no-such-start", "deleted-run")
    assert gone[2]["value"] in ("old", "new") and gone[0]["value"] == "shapes" and gone[1]["value"] == "tiny"


# --- (4) defaults that follow the starting point and device; the estimate


def test_the_form_follows_the_starting_point_and_the_device(service):
    view = TrainView(service)
    assert view.default_start() == "tiny", "no GPU visible: the quick CPU try-out"
    tiny_cpu = [u["value"] for u in view.follow_start("tiny", "auto")]
    assert tiny_cpu == [200, 2, 0.01, 320, 50], "auto means the CPU when no GPU is visible"
    assert [u["value"] for u in view.follow_start("coco", "cuda")] == [1000, 4, 0.005, 800, 250]
    assert [u["value"] for u in view.follow_start("scratch", "cuda")][0] == form.SCRATCH_GPU_ITERATIONS
    service.gpus = 1
    assert [u["value"] for u in view.follow_start("coco", "auto")] == [1000, 4, 0.005, 800, 250]


def test_an_evaluation_period_above_the_iterations_is_clamped_with_a_note():
    s = parse_settings({**FORM, "eval_period": 250}, runs=[])
    assert s.eval_period == 200 and s.notes == (
        "evaluate every: 250 is more than the 200 iterations; set to 200 (one evaluation, at the end)",
    )
    assert "notes" not in s.to_dict()
    assert TrainView.fit_eval_period(None, 200, 250)["value"] == 200
    assert TrainView.fit_eval_period(None, 200, 50) == {"__type__": "update"}


def test_the_split_counted_for_the_estimate_is_the_one_training_exports(service, tmp_path):
    for fraction in (0.2, 0.5):
        paths = service.store.open("shapes").export(tmp_path / str(fraction), val_fraction=fraction, seed=0)
        exported = tuple(len(json.loads(paths[k].read_text())["images"]) for k in ("train", "val"))
        assert service.split("shapes", fraction) == exported


def test_the_estimate_names_the_split_the_duration_and_small_validation_sets(service):
    text = service.estimate({**FORM, "run_name": "", "advanced": ""})
    assert "**Estimate: about 2 min** on the CPU (tiny model): 200 iterations of 2 images at 320 px" in text
    assert "Split of shapes: 8 training and 2 validation images" in text  # 10 of the 12 images have objects
    assert "only 2 validation images" in text
    assert "no validation images" in service.estimate({**FORM, "val_fraction": 0.0})
    assert "⚠️" not in service.estimate({**FORM, "val_fraction": 0.5})
    slow = service.estimate({**FORM, "start": "coco", "image_size": 800, "batch_size": 4, "iterations": 1000})
    assert "R50-FPN on the CPU takes seconds per image" in slow and " h " in slow.split("**")[1]
    assert service.estimate({**FORM, "iterations": 0}).startswith("⚠️ iterations: expected a whole number")
    assert "set to 200" in service.estimate({**FORM, "eval_period": 250})


def test_the_estimate_grows_with_iterations_batch_image_size_and_validation():
    s = parse_settings(FORM, runs=[])
    base = form.estimate_seconds(s, "tiny", False, n_val=2)
    for change in ({"iterations": 400}, {"batch_size": 4}, {"image_size": 640}):
        assert form.estimate_seconds(parse_settings({**FORM, **change}, runs=[]), "tiny", False, 2) > base
    assert form.estimate_seconds(s, "tiny", False, n_val=20) > base
    assert form.estimate_seconds(s, "r50", False, 2) > base > form.estimate_seconds(s, "tiny", True, 2)


def test_a_cpu_try_out_on_a_small_dataset_is_estimated_in_minutes():
    s = parse_settings({**FORM, **form.form_defaults("tiny", on_gpu=False)}, runs=[])
    assert 60 < form.estimate_seconds(s, "tiny", False, n_val=3) < 300


# --- (5) local weights, the offline message, resume only from a checkpoint


def test_a_local_weights_file_must_be_a_pth_or_pkl_inside_an_allowed_folder(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    (root / ".weights").mkdir(parents=True)
    outside.mkdir()
    good = root / ".weights" / "model_final_f10217.pkl"
    good.write_bytes(b"x")
    (outside / "w.pth").write_bytes(b"x")
    (root / ".weights" / "escape.pth").symlink_to(outside / "w.pth")
    (root / "notes.txt").write_text("x")
    local = {**FORM, "start": "local"}
    # a server path, a path from the runs folder's name, or one inside it: the same file, named from its root
    for given in (str(good), "runs/.weights/model_final_f10217.pkl", ".weights/model_final_f10217.pkl"):
        s = parse_settings({**local, "weights_file": given}, runs=[], weights_roots=[root])
        assert s.weights_file == "runs/.weights/model_final_f10217.pkl" and s.weights_path == str(good.resolve())
        assert form.preset_for(s, {})[1] == str(good.resolve()) and "weights_path" not in s.to_dict()
    for path, words in (
        (str(outside / "w.pth"), "outside the folders"),
        (str(root / "notes.txt"), "not a .pth"),
        (str(root / ".weights" / "escape.pth"), "outside the folders"),
        ("runs/.weights/escape.pth", "outside the folders"),
        ("../elsewhere/w.pth", "outside the"),
        (str(root / "missing.pth"), "no file"),
        ("", "give the path .* in `runs/`"),
        (str(root / ".weights" / ".." / ".." / "elsewhere" / "w.pth"), "outside the folders"),
    ):
        with pytest.raises(FormError, match=f"^local weights file: .*{words}") as e:
            parse_settings({**local, "weights_file": path}, runs=[], weights_roots=[root])
        assert str(tmp_path) not in str(e.value).replace(path, ""), "only the path as given is named"


def test_starting_from_a_local_pkl_says_it_is_unpickled(service, monkeypatch):
    weights = service.runs_root / ".weights" / "model_final_f10217.pkl"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    monkeypatch.setattr(service.jobs, "submit", lambda argv, *a, **k: {"state": "queued", "id": "x", "argv": argv, **k})
    job, notes = service.start({**FORM, "start": "local", "weights_file": str(weights), "run_name": "local-run"})
    assert job["settings"]["weights_file"] == f"{service.runs_root.name}/.weights/model_final_f10217.pkl"
    argv = job["argv"]  # the training command: the job loads exactly that file
    assert argv[argv.index("MODEL.WEIGHTS") + 1] == str(weights.resolve())
    assert any("loaded with pickle, which can run code: only use files you trust" in n for n in notes)


def test_offline_coco_weights_are_refused_in_the_form_naming_its_option(service, monkeypatch):
    import multimask.engine.weights as weights

    monkeypatch.setattr(weights, "downloadable", lambda path, timeout=3.0: False)
    with pytest.raises(FormError) as e:
        service.start({**FORM, "start": "coco", "run_name": "offline"})
    message = str(e.value)
    assert "choose 'Local weights file' under Starting point" in message and "model_final_f10217.pkl" in message
    assert f"copy it into {service.runs_root.name}/.weights/," in message and "MODEL.WEIGHTS" not in message
    assert str(service.runs_root) not in message
    assert not (service.runs_root / "offline").exists()


def test_a_job_that_could_not_download_its_weights_names_the_forms_option():
    log = (
        "error: cannot download model weights 'detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/"
        "137849600/model_final_f10217.pkl' (URLError: ...). Fetching them needs internet access; on an offline "
        "machine download the file elsewhere and set MODEL.WEIGHTS to its local path, or ..."
    )
    message = jobs.classify_failure(log)
    assert "download model_final_f10217.pkl" in message and "'Local weights file' under Starting point" in message
    assert "MODEL.WEIGHTS" not in message


def test_resume_needs_a_checkpoint(service):
    view = TrainView(service)
    _job(service, "crashed", "import sys; sys.exit(1)")
    assert view.status("crashed")["resume"]["interactive"] is False, "Resume is disabled"
    assert "nothing to resume" in view.act("resume")("crashed")
    (service.runs_root / "crashed" / "last_checkpoint").write_text("model_0000004.pth")
    assert view.status("crashed")["resume"]["interactive"] is True
    assert "resuming from its last checkpoint" in view.act("resume")("crashed")


# --- (10) the form after a reload, words of the page


def test_selecting_a_run_fills_the_form_with_its_settings(service):
    view = TrainView(service)
    settings = parse_settings(
        {
            **FORM,
            "run_name": "recorded",
            "iterations": 77,
            "eval_period": 7,
            "best_metric": "segm/secondary/AP",
            "advanced": "SOLVER.MOMENTUM 0.8",
        },
        runs=[],
    )
    _job(service, "recorded", settings=settings.to_dict())
    filled = dict(zip((f for f in form.FIELDS if f != "run_name"), view.fill_form("recorded")))
    assert filled["iterations"]["value"] == 77 and filled["eval_period"]["value"] == 7
    assert filled["dataset"]["value"] == "shapes" and filled["advanced"]["value"] == "SOLVER.MOMENTUM 0.8"
    assert filled["best_metric"]["value"] == "segm/secondary/AP"
    assert ("secondary mask AP", "segm/secondary/AP") in filled["best_metric"]["choices"]
    assert view.on_dataset("shapes", "segm/secondary/AP")["value"] == "segm/secondary/AP", (
        "the dataset's change event keeps the filled metric"
    )
    _cli_run(service.runs_root, "cli-run")
    assert all(u == {"__type__": "update"} for u in view.fill_form("cli-run")), "no settings: unchanged"


def test_a_graceful_stop_is_reported_in_completed_iterations_with_the_resume_button():
    assert (
        jobs.stopped_message("...\nstopped at iteration 27; resume with --resume\n")
        == "stopped after 28 iterations (checkpoint saved); press Resume to continue"
    )
    assert jobs.stopped_message("Traceback") is None


def test_the_final_evaluation_counts_as_after_the_last_iteration(tmp_path):
    """detectron2 writes the final evaluation at iteration max_iter, periodic ones at (iterations done) - 1."""
    rows = [{"iteration": 9, "bbox/AP": 1.0}, {"iteration": 19, "total_loss": 1.0}, {"iteration": 20, "bbox/AP": 2.0}]
    assert monitor.ap_points(rows, max_iter=20) == [(10, 1.0, "bbox"), (20, 2.0, "bbox")]
    (tmp_path / "eval_results.json").write_text(json.dumps({"bbox": {"AP": 2.0}}))
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "iterations": 20,
                "max_iter": 20,
                "best": {"metric": "bbox/AP", "mode": "max", "value": 2.0, "iteration": 20},
            }
        )
    )
    assert monitor.evaluation(tmp_path, 20)[0].endswith(
        "best bbox/AP 2.00 after 20 iterations: model_best.pth, used by Predict and Propose"
    )


def test_the_progress_panel_and_run_selector_never_show_gradios_progress(service):
    """Every event writing the progress panel or the Run selector above it hides Gradio's "processing" text."""
    from app import build_app

    demo = build_app(service.store.root, service.runs_root).blocks
    ids = {c._id for c in demo.blocks.values() if getattr(c, "elem_id", None) in ("mm-train-progress", "mm-train-run")}
    deps = [d for d in demo.config["dependencies"] if ids & set(d["outputs"])]
    assert len(ids) == 2 and len(deps) >= 8
    assert [d["show_progress"] for d in deps] == ["hidden"] * len(deps)


def test_behind_a_proxy_the_download_decides(monkeypatch):
    """A direct TCP probe ignores the proxy that the download itself would use: with one set, no probe."""
    from multimask.engine import weights

    def no_network(*args, **kwargs):
        raise OSError("no route")

    monkeypatch.setattr(weights.socket, "create_connection", no_network)
    url = "https://example.invalid/model_final_never_cached.pkl"
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    assert weights.downloadable(url) is False
    monkeypatch.setenv("https_proxy", "http://proxy.lab.invalid:3128")
    assert weights.downloadable(url) is True
