"""The Train tab's form checks, command building, run-folder reading and run actions (no training here)."""

import json
import sys
from pathlib import Path

import pytest

from app.core.jobs import form, monitor
from app.core.jobs.form import FormError, parse_settings, resolve_device
from multimask import run_folder

VALID = {
    "dataset": "shapes",
    "start": "tiny",
    "iterations": 40,
    "batch_size": 2,
    "lr": 0.01,
    "device": "cpu",
    "amp": False,
    "eval_period": 20,
}


def _settings(**changes):
    return parse_settings({**VALID, **changes}, runs=["old-run"])


def test_defaults_make_a_first_fine_tune():
    s = parse_settings({"dataset": "shapes"}, runs=[])
    assert (s.start, s.iterations, s.batch_size, s.lr, s.schedule, s.device, s.amp) == (
        "coco",
        1000,
        4,
        0.005,
        "step",
        "auto",
        True,
    )
    assert (s.val_fraction, s.seed, s.eval_period, s.patience) == (0.2, 0, 250, 0)


def test_numbers_may_arrive_as_text_or_floats():
    s = _settings(iterations="40", batch_size=2.0, lr="0.02", seed="7")
    assert (s.iterations, s.batch_size, s.lr, s.seed) == (40, 2, 0.02, 7)


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("iterations", 0, "iterations"),
        ("iterations", 1.5, "iterations"),
        ("iterations", True, "iterations"),
        ("iterations", "ten", "iterations"),
        ("batch_size", None, "batch size"),
        ("lr", float("nan"), "lr"),
        ("lr", 0, "lr"),
        ("lr", "inf", "lr"),
        ("image_size", 10, "image size"),
        ("val_fraction", 0.95, "val"),
        ("device", "gpu", "device"),
        ("schedule", "poly", "schedule"),
        ("start", "run:missing", "starting point"),
        ("start", "../../etc", "starting point"),
        ("run_name", "../escape", "run name"),
        ("run_name", 5, "run name"),
        ("dataset", "", "dataset"),
        ("dataset", ["a"], "dataset"),
        ("amp", "yes", "mixed precision"),
        ("eval_period", -1, "eval period"),
        ("best_metric", "segm/primary/AP; rm", "best metric"),
        ("num_gpus", 3, "multiple of the number of GPUs"),
        ("advanced", 7, "advanced"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(field, value, words):
    with pytest.raises(FormError, match=words):
        _settings(**{field: value})


def test_unknown_fields_and_non_dict_forms_are_refused():
    with pytest.raises(FormError, match="unknown form fields: extra"):
        parse_settings({**VALID, "extra": 1}, runs=[])
    with pytest.raises(FormError, match="named values"):
        parse_settings(["shapes"], runs=[])


def test_starting_from_a_listed_run():
    assert _settings(start="run:old-run").start == "run:old-run"


@pytest.mark.parametrize(
    "text,words",
    [
        ("OUTPUT_DIR /tmp/elsewhere", "set by the form"),
        ("DATASETS.TRAIN ('x',)", "set by the form"),
        ("MODEL.WEIGHTS /etc/passwd", "set by the form"),
        ("SOLVER.AMP.ENABLED True", "set by the form"),
        ("SOLVER.MAX_ITER 5000", "the form's 'iterations' field"),
        ("SOLVER.IMS_PER_BATCH 3", "'batch size' field"),
        ("solver.base_lr 1", "line 1"),
        ("SOLVER.MOMENTUM", "line 1"),
        ("\n\nSOLVER.MOMENTUM 0.9\nbad", "line 4"),
    ],
)
def test_advanced_options_cannot_redirect_the_run(text, words):
    with pytest.raises(FormError, match=words):
        _settings(advanced=text)


def test_advanced_options_are_parsed_in_order():
    assert form.parse_advanced("# comment\nSOLVER.MOMENTUM 0.8\n\nMODEL.RPN.NMS_THRESH: 0.6\n") == [
        "SOLVER.MOMENTUM",
        "0.8",
        "MODEL.RPN.NMS_THRESH",
        "0.6",
    ]


def test_device_resolution():
    assert resolve_device(_settings(device="auto", amp=True), gpu_count=0) == (
        "cpu",
        "cpu",
        ["mixed precision is off: it needs a CUDA GPU"],
    )
    assert resolve_device(_settings(device="auto"), gpu_count=1) == ("cuda", "cuda*1", [])
    assert resolve_device(_settings(device="cuda", num_gpus=2), gpu_count=2) == ("cuda", "cuda*2", [])
    with pytest.raises(FormError, match="choose device 'cpu'"):
        resolve_device(_settings(device="cuda"), gpu_count=0)
    with pytest.raises(FormError, match="2 asked for, 1 visible"):
        resolve_device(_settings(device="cuda", num_gpus=2), gpu_count=1)
    with pytest.raises(FormError, match="set it to 1"):
        resolve_device(_settings(device="cpu", num_gpus=2), gpu_count=0)


def test_command_and_options(tmp_path):
    from multimask.config import get_multimask_cfg

    s = _settings(advanced="SOLVER.MOMENTUM 0.8", patience=2, best_metric="bbox/AP")
    config_file, weights = form.preset_for(s, {})
    opts = form.training_options(
        s, get_multimask_cfg(config_file), "cpu", ["whole", "part", "core"], weights, has_val=True
    )
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES"] == "['whole', 'part', 'core']"
    assert pairs["MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK"] == "3"
    assert (pairs["SOLVER.MAX_ITER"], pairs["SOLVER.STEPS"], pairs["SOLVER.AMP.ENABLED"]) == ("40", "(30, 36)", "False")
    assert (pairs["TEST.EVAL_PERIOD"], pairs["MULTIMASK.EARLY_STOP_PATIENCE"]) == ("20", "2")
    assert pairs["MULTIMASK.BEST_METRIC"] == "bbox/AP"
    assert opts[-2:] == ["SOLVER.MOMENTUM", "0.8"], "advanced options come last, so they win"
    cfg = get_multimask_cfg(config_file, opts)  # the job builds the same config
    assert cfg.SOLVER.MOMENTUM == 0.8 and list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES) == ["whole", "part", "core"]
    argv = form.build_command(config_file, tmp_path / "t.json", None, tmp_path / "run", 1, opts)
    assert argv[:4] == [sys.executable, "-m", "multimask", "train"] and "--val-json" not in argv
    no_val = dict(zip(*[iter(form.training_options(s, cfg, "cpu", ["a"], None, has_val=False))] * 2))
    assert (no_val["TEST.EVAL_PERIOD"], no_val["MULTIMASK.EARLY_STOP_PATIENCE"]) == ("0", "0")


def test_unknown_advanced_keys_fail_before_the_job_starts():
    s = _settings(advanced="SOLVER.NOT_A_KEY 1")
    config_file, _ = form.preset_for(s, {})
    with pytest.raises(FormError, match="NOT_A_KEY"):
        form.check_options(config_file, form.parse_advanced(s.advanced))


def _write_lines(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_a_run_resumed_after_a_crash_shows_its_own_progress(tmp_path):
    """Crashed at iteration 9 after a checkpoint at 4; resumed, it has written iterations 5 and 6 so far."""
    rows = [{"iteration": i, "total_loss": 1.0, "time": 1.0} for i in range(10)]
    rows += [{"iteration": 5, "total_loss": 0.5, "time": 2.0}, {"iteration": 6, "total_loss": 0.4, "time": 2.0}]
    _write_lines(tmp_path / "metrics.json", rows)
    merged = run_folder.read_metrics(tmp_path)
    assert [r["iteration"] for r in merged] == list(range(7))
    assert monitor.progress(merged, max_iter=10, ims_per_batch=1)["iteration"] == 7
    assert run_folder.iterations_done(tmp_path) == 7


def test_metrics_are_merged_per_iteration_and_a_half_written_line_is_ignored(tmp_path):
    rows = [
        {"iteration": i, "total_loss": 2.0 - i / 10, "loss_mask_primary": 0.7, "lr": 0.01 * i, "time": 0.5}
        for i in range(5)
    ]
    rows.insert(3, {"iteration": 2, "bbox/AP": 12.5, "segm/primary/AP": 10.0, "segm/primary/AP-disc": 20.0})
    rows.append({"iteration": 4, "bbox/AP": 99.0})  # then the run is resumed from a checkpoint at 2
    rows += [{"iteration": 3, "total_loss": 1.5, "time": 0.25}, {"iteration": 4, "total_loss": 1.4, "time": 0.25}]
    _write_lines(tmp_path / "metrics.json", rows, tail='{"iteration": 5, "total_lo')
    merged = run_folder.read_metrics(tmp_path)
    assert [r["iteration"] for r in merged] == [0, 1, 2, 3, 4]
    assert merged[4]["total_loss"] == 1.4, "a resumed run's lines win"
    assert "bbox/AP" not in merged[4], "the evaluation at 4 was of the weights before the resume"
    assert merged[2]["total_loss"] == 1.8 and merged[2]["bbox/AP"] == 12.5
    assert run_folder.iterations_done(tmp_path) == 5 and run_folder.iterations_done(tmp_path / "none") == 0
    prog = monitor.progress(merged, max_iter=10, ims_per_batch=4)
    assert (prog["iteration"], prog["fraction"], prog["total_loss"]) == (5, 0.5, 1.4)
    assert prog["sec_per_iter"] == 0.5 and prog["images_per_sec"] == 8.0 and prog["eta_seconds"] == 2.5
    assert prog["max_mem_mb"] is None
    losses = monitor.loss_points(merged)
    assert {s for _, _, s in losses} == {"total_loss", "loss_mask_primary"} and min(i for i, _, _ in losses) == 1
    assert [lr for _, lr in monitor.lr_points(merged)][:2] == [0.0, 0.01]
    it, tasks = monitor.latest_evaluation(merged)
    assert it == 3 and tasks == {"bbox": {"AP": 12.5}, "segm/primary": {"AP": 10.0, "AP-disc": 20.0}}
    assert {s for _, _, s in monitor.ap_points(merged)} == {"bbox", "segm/primary"}


def test_evaluation_prefers_the_final_results(tmp_path):
    _write_lines(tmp_path / "metrics.json", [{"iteration": 9, "segm/primary/AP": 10.0}])
    assert monitor.evaluation(tmp_path)[0] == "evaluation after 10 iterations"
    final = {"bbox": {"AP": 50.0, "AP50": 70.123, "AP-disc": None}, "segm/primary": {"AP": 40.0, "AP-disc": 41.0}}
    (tmp_path / "eval_results.json").write_text(json.dumps(final))
    caption, results = monitor.evaluation(tmp_path)
    assert caption == "final evaluation" and results == final
    summary = {
        "iterations": 60,
        "max_iter": 100,
        "early_stopped": True,
        "best": {"metric": "segm/primary/AP", "mode": "max", "value": 41.234, "iteration": 39},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert monitor.evaluation(tmp_path)[0] == (
        "final evaluation; stopped early after 60 iterations, the results are the best evaluation's; "
        "best segm/primary/AP 41.23 after 40 iterations: model_best.pth, used by Predict and Propose"
    )
    from app.views.train import eval_table

    table = eval_table(results).set_index("metric")
    assert list(table.columns) == ["bbox", "segm/primary"], "a column per task, however many classes"
    assert list(table.index) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AP-disc"]
    assert table.loc["AP50", "bbox"] == 70.12 and table.loc["AP-disc", "segm/primary"] == 41.0
    assert monitor.final_ap(tmp_path) == {"bbox": 50.0, "segm/primary": 40.0}
    assert monitor.final_ap(tmp_path / "missing") == {}


def _view_with_job(tmp_path, script, **extra):
    """A TrainView whose job manager also runs plain Python scripts, with one finished job of `script`."""
    from app.core.jobs.manager import JobManager
    from app.core.jobs.service import TrainingService
    from app.views.train import TrainView

    service = TrainingService(tmp_path / "datasets", tmp_path / "runs", gpus=0)
    service.jobs = JobManager(service.jobs.jobs_root, service.runs_root, require_module=None)
    view = TrainView(service)
    argv = [sys.executable, "-c", script, "train", "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"]
    job = service.jobs.submit(argv, service.runs_root / "r1", "cpu", run_name="r1", dataset="shapes", max_iter=10)
    return view, service.jobs.wait(job["id"], timeout=30)


def test_a_job_without_a_gpu_is_offered_the_cpu(tmp_path):
    view, job = _view_with_job(tmp_path, "import sys; print('RuntimeError: Found no NVIDIA driver'); sys.exit(1)")
    assert job["state"] == "failed" and job["error"] == "no usable GPU: run on the CPU (device cpu)"
    out = view.status("r1")
    assert out["cpu"]["visible"] is True, "the 'Run on the CPU instead' button is shown"
    assert "running on the CPU" in view.act("retry_on_cpu")("r1")
    new = view.service.latest("r1")
    assert new["resumed_from"] == job["id"] and new["dataset"] == "shapes" and new["max_iter"] == 10
    cmd = new["command"]
    assert cmd[cmd.index("train") + 1] == "--resume"
    assert cmd[cmd.index("MODEL.DEVICE") + 1] == "cpu" and cmd[cmd.index("SOLVER.AMP.ENABLED") + 1] == "False"


def test_only_no_gpu_failures_are_retried_on_the_cpu(tmp_path):
    view, job = _view_with_job(tmp_path, "import sys; sys.exit(1)")
    assert job["state"] == "failed"
    assert view.status("r1")["cpu"]["visible"] is False
    retry = view.act("retry_on_cpu")
    assert retry("r1") == "⚠️ run r1 did not fail for want of a GPU"
    assert retry("../r1").startswith("⚠️ no run called")


def test_deleting_a_run_needs_the_confirmation_and_an_ended_job(tmp_path):
    view, job = _view_with_job(tmp_path, "pass")
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "model_final.pth").write_bytes(b"x")
    message, *_ = view.delete("r1", False)
    assert message.startswith("Tick 'confirm'") and run_dir.is_dir()
    assert view.delete("other", True)[0].startswith("⚠️ no run called")
    message, *_ = view.delete("r1", True)
    assert message == "Deleted run r1." and not run_dir.exists()
    assert view.service.run_names() == [] and not Path(job["log"]).exists()


@pytest.mark.parametrize("iterations,steps", [(100, "(75, 90)"), (4, "(3,)"), (2, "(1,)"), (1, "()")])
def test_step_milestones_stay_inside_short_runs(iterations, steps):
    from multimask.config import get_multimask_cfg

    s = _settings(iterations=iterations, eval_period=0)
    config_file, _ = form.preset_for(s, {})
    opts = form.training_options(s, get_multimask_cfg(config_file), "cpu", ["primary"], None, has_val=False)
    assert opts[opts.index("SOLVER.STEPS") + 1] == steps
    form.check_options(config_file, opts)


@pytest.mark.slow
def test_a_run_starts_from_a_previous_runs_weights(tmp_path):
    """A real two-iteration CPU job through the service, starting from a run folder the test builds."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from app.core.datasets.storage import LabelStore
    from app.core.jobs.service import TrainingService
    from multimask.config import get_multimask_cfg
    from multimask.data.synth import CLASSES, generate_synthetic_dataset

    synth = generate_synthetic_dataset(tmp_path / "synth", num_train=4, num_val=0, seed=2, height=96, width=128)
    LabelStore(tmp_path / "datasets").create("shapes", CLASSES).import_multimask(synth["train"])
    prev = tmp_path / "runs" / "prev"
    prev.mkdir(parents=True)
    cfg = get_multimask_cfg("tiny_cpu", ["MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.DEVICE", "cpu"])
    cfg.MULTIMASK.CLASS_NAMES = ["a", "b"]  # other classes: the class-specific layers start afresh
    (prev / "config.yaml").write_text(cfg.dump())
    DetectionCheckpointer(build_model(cfg), save_dir=str(prev)).save("model_final")
    torch.manual_seed(0)

    service = TrainingService(tmp_path / "datasets", tmp_path / "runs", gpus=0)
    job, _ = service.start(
        {
            **VALID,
            "run_name": "next",
            "start": "run:prev",
            "iterations": 2,
            "eval_period": 0,
            "val_fraction": 0.0,
            "image_size": 96,
        }
    )
    cmd = job["command"]
    assert cmd[cmd.index("--config-file") + 1] == str(prev.resolve() / "config.yaml")
    assert cmd[cmd.index("MODEL.WEIGHTS") + 1] == str(prev.resolve() / "model_final.pth")
    job = service.jobs.wait(job["id"], timeout=180)
    assert job["state"] == "completed", service.jobs.log_tail(job["id"])
    assert (tmp_path / "runs" / "next" / "model_final.pth").is_file()
    log = service.jobs.log_tail(job["id"], 400)
    assert f"Loading from {prev.resolve() / 'model_final.pth'}" in log, "the previous run's weights were loaded"


def test_the_timer_resends_curves_and_log_only_when_the_run_changed(tmp_path):
    from app.views.train import DETAILS

    view, job = _view_with_job(tmp_path, "print('done')")
    metrics = Path(job["run_dir"]) / "metrics.json"
    _write_lines(metrics, [{"iteration": 0, "total_loss": 1.0, "lr": 0.1}])
    first = view.tick("r1", None, None)
    assert len(first["total_plot"]) == 1 and "done" in first["log"], "the first tick sends everything"
    again = view.tick("r1", first["shown"], first["names"])
    assert all(again[k] == {"__type__": "update"} for k in DETAILS), "unchanged: skipped"
    assert again["progress"] == first["progress"] and again["record"] == first["record"], "always sent"
    _write_lines(metrics, [{"iteration": i, "total_loss": 1.0, "lr": 0.1} for i in range(2)])
    changed = view.tick("r1", again["shown"], again["names"])
    assert len(changed["total_plot"]) == 2, "a changed metrics.json is sent"
    assert view.tick("other", changed["shown"], changed["names"])["progress"].startswith("<p>No run called other")


@pytest.mark.slow
def test_the_training_service_imports_without_gradio_or_pandas():
    """The GPU machine has neither: bench/train_job.py runs the real worker there through these modules."""
    import subprocess

    code = (
        "import sys\nfor n in ('gradio', 'pandas'): sys.modules[n] = None\n"
        "import app.core.jobs.service, app.core.jobs.monitor, app.core.datasets.storage\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_iterations_done_reads_the_whole_file_when_its_tail_has_no_training_line(tmp_path):
    evals = [{"iteration": 7, **{f"segm/primary/AP-class{i}": 1.0 for i in range(3000)}}] * 2  # > 64 KiB
    _write_lines(tmp_path / "metrics.json", [{"iteration": 6, "total_loss": 1.0}, *evals])
    assert run_folder.iterations_done(tmp_path) == 7
