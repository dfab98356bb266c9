"""Best checkpoint, early stopping, summary.json, GPU memory in metrics.json, and the run record (run_info.json)."""

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from detectron2.engine import hooks as d2hooks
from detectron2.utils.events import EventStorage

from multimask.data import register_multimask_dataset
from multimask.engine import MultiMaskTrainer
from multimask.engine.hooks import (
    BestCheckpointer,
    EarlyStopped,
    EarlyStopping,
    GPUMemory,
    GracefulStop,
    MetricTracker,
    TrainingStopped,
    track,
)
from multimask.run_folder import RUN_INFO_FILE, record_start, run_weights
from tests.conftest import tiny_cfg

SMALL = {
    "INPUT.MIN_SIZE_TRAIN": (128,),
    "INPUT.MAX_SIZE_TRAIN": 160,
    "INPUT.MIN_SIZE_TEST": 128,
    "INPUT.MAX_SIZE_TEST": 160,
    "SOLVER.IMS_PER_BATCH": 1,
    "SOLVER.WARMUP_ITERS": 0,
    "SOLVER.CHECKPOINT_PERIOD": 1000,
}


def _cfg(synth_data, out, max_iter, **extra):
    register_multimask_dataset("synth_train", synth_data["train"])
    register_multimask_dataset("synth_val", synth_data["val"])
    return tiny_cfg(
        num_classes=3,
        **{
            "SOLVER.MAX_ITER": max_iter,
            "OUTPUT_DIR": str(out),
            "SEED": 1,
            "DATASETS.TRAIN": ("synth_train",),
            "DATASETS.TEST": ("synth_val",),
            "TEST.EVAL_PERIOD": 1,
            **SMALL,
            **extra,
        },
    )


def _scripted(values: list[float], seen_summary: list | None = None) -> type:
    """A trainer whose evaluations return `values` in turn as bbox/AP (and bbox/AP50 = value + 10).

    Each evaluation appends to `seen_summary` whether summary.json exists at that time.
    """

    class Scripted(MultiMaskTrainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            if seen_summary is not None:
                seen_summary.append((Path(cfg.OUTPUT_DIR) / "summary.json").exists())
            v = values.pop(0)
            return OrderedDict([("bbox", {"AP": v, "AP50": v + 10}), ("segm/primary", {"AP": 1.0})])

    return Scripted


def _train(trainer_cls, cfg, resume=False):
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _json(path):
    return json.loads(path.read_text())


def _iteration(path) -> int:
    return torch.load(path, weights_only=True)["iteration"]


# --- counting logic, without training


def test_metric_tracker_counts_evaluations_without_improvement():
    t = MetricTracker("max")
    assert t.update(2.0, 0) and (t.best, t.best_iter, t.stale) == (2.0, 0, 0)
    assert t.update(2.0, 1) and (t.best, t.best_iter, t.stale) == (2.0, 1, 1), (
        "an equal value moves the best to its later iteration, but is no improvement"
    )
    assert not t.update(float("nan"), 2) and not t.update(None, 3) and t.stale == 3
    assert t.update(2.5, 4) and (t.best, t.best_iter, t.stale) == (2.5, 4, 0)
    t = MetricTracker("min")
    assert t.update(float("inf"), 0) is False and t.best is None
    assert t.update(3.0, 1) and not t.update(4.0, 2) and t.update(1.0, 3) and t.best == 1.0
    evals = {5: {"bbox": {"AP": 1.0}}, 1: {"bbox": {"AP": 3.0}}, 3: {"bbox": {"AP": None}}}
    t = track(evals, "bbox/AP", "max")
    assert (t.best, t.best_iter, t.stale) == (3.0, 1, 2), "replayed in iteration order"


def _fake_trainer(max_iter=100):
    saved = []
    trainer = SimpleNamespace(
        iter=0,
        max_iter=max_iter,
        storage=EventStorage(),
        checkpointer=SimpleNamespace(save=lambda name, **kw: saved.append((name, kw))),
    )
    return trainer, saved


def _step(hook, it, value=None, metric="bbox/AP"):
    hook.trainer.iter = hook.trainer.storage.iter = it
    if value is not None:
        hook.trainer.storage.put_scalar(metric, value, smoothing_hint=False)
    hook.after_step()


def test_early_stopping_raises_after_patience_evaluations_without_improvement():
    hook = EarlyStopping(eval_period=2, metric="bbox/AP", mode="max", patience=2)
    hook.trainer, saved = _fake_trainer()
    _step(hook, 1, 5.0)
    _step(hook, 2, 1.0)  # not an evaluation step (period 2): ignored
    _step(hook, 3)  # evaluation step, but the metric is still the one from iteration 1: not counted
    assert (hook.tracker.best, hook.tracker.stale) == (5.0, 0)
    _step(hook, 5, 5.0)  # equal: no improvement, but the best is now the later one (as model_best.pth)
    assert hook.tracker.stale == 1 and not saved
    with pytest.raises(EarlyStopped) as e:
        _step(hook, 7, 4.0)
    assert str(e.value) == (
        "early stopping at iteration 7: bbox/AP did not improve for 2 evaluations; best 5 at iteration 5"
    )
    assert e.value.iteration == 7 and saved == [("model_final", {"iteration": 7})]


def test_early_stopping_leaves_the_last_evaluation_to_after_train():
    hook = EarlyStopping(eval_period=1, metric="bbox/AP", mode="min", patience=1)
    hook.trainer, _ = _fake_trainer(max_iter=3)
    _step(hook, 0, 1.0)
    _step(hook, 2, 9.0)  # the last iteration: the EvalHook evaluates after training, nothing to stop
    assert hook.tracker.stale == 0


def test_gpu_memory_hook_puts_peak_memory_in_mib(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**20)
    hook = GPUMemory()
    hook.trainer, _ = _fake_trainer()
    _step(hook, 4)
    assert hook.trainer.storage.latest()["max_mem_mb"] == (3.0, 4)


def test_run_weights_prefers_best_then_final_then_last(tmp_path):
    from multimask.engine import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="no model_best.pth, model_final.pth or last checkpoint"):
        run_weights(tmp_path)
    (tmp_path / "model_0000004.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    assert run_weights(tmp_path) == tmp_path / "model_0000004.pth"
    (tmp_path / "model_final.pth").write_bytes(b"x")
    assert run_weights(tmp_path) == tmp_path / "model_final.pth"
    (tmp_path / "model_best.pth").write_bytes(b"x")
    assert run_weights(tmp_path) == tmp_path / "model_best.pth"


def test_saving_model_best_leaves_last_checkpoint_alone(tmp_path):
    from multimask.engine import MultiMaskCheckpointer

    checkpointer = MultiMaskCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    checkpointer.save("model_best", iteration=5)
    assert (tmp_path / "model_best.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"


# --- hooks in the trainer


def test_hooks_order_and_when_they_are_added(synth_data, tmp_path):
    cfg = _cfg(
        synth_data,
        tmp_path,
        4,
        **{"TEST.EVAL_PERIOD": 2, "MULTIMASK.EARLY_STOP_PATIENCE": 3, "MULTIMASK.WRITE_PERIOD": 3},
    )
    hooks = MultiMaskTrainer(cfg)._hooks
    types = [type(h) for h in hooks]
    assert hooks[types.index(d2hooks.PeriodicWriter)]._period == 3
    i = types.index(d2hooks.EvalHook)
    assert types[i - 1] is GracefulStop, "a stop does not wait for an evaluation"
    assert types[i + 1 : i + 3] == [BestCheckpointer, EarlyStopping]
    assert types.index(d2hooks.PeriodicWriter) > i + 2
    assert GPUMemory not in types, "the model is on the CPU"
    cfg = _cfg(synth_data, tmp_path, 4, **{"TEST.EVAL_PERIOD": 0, "MULTIMASK.EARLY_STOP_PATIENCE": 3})
    types = [type(h) for h in MultiMaskTrainer(cfg)._hooks]
    assert BestCheckpointer not in types and EarlyStopping not in types
    cfg = _cfg(synth_data, tmp_path, 4, **{"MULTIMASK.BEST_METRIC": "segm/primary/AP-nope"})
    with pytest.raises(ValueError, match="dataset 'synth_val' has no class 'nope'"):
        MultiMaskTrainer(cfg)


class _StopAt(d2hooks.HookBase):
    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            next(h for h in self.trainer._hooks if isinstance(h, GracefulStop)).request_stop()


def test_a_stop_saves_and_ends_before_the_evaluation_of_its_step(synth_data, tmp_path):
    cfg = _cfg(synth_data, tmp_path, 10, **{"TEST.EVAL_PERIOD": 2})
    trainer = MultiMaskTrainer(cfg)
    trainer.register_hooks([_StopAt(3)])  # iteration 3 is an evaluation step ((3 + 1) % 2 == 0)
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingStopped, match="stopped at iteration 3"):
        trainer.train()
    assert [e["iteration"] for e in _json(tmp_path / "evaluations.json")] == [1]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert _iteration(tmp_path / "model_0000003.pth") == 3
    assert max(json.loads(line)["iteration"] for line in (tmp_path / "metrics.json").read_text().splitlines()) == 3


def test_amp_on_the_cpu_is_refused_before_training(synth_data, tmp_path):
    cfg = _cfg(synth_data, tmp_path, 2)
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = True
    with pytest.raises(ValueError, match=r"mixed precision \(SOLVER.AMP.ENABLED\) needs a CUDA GPU"):
        MultiMaskTrainer(cfg)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_early_stop_with_real_evaluation_keeps_the_best_checkpoint(synth_data, tmp_path):
    # LR 0: the weights never change, so every evaluation equals the first: no improvement after it, but the
    # best checkpoint follows the ties to the latest evaluation
    cfg = _cfg(
        synth_data, tmp_path, 20, **{"SOLVER.BASE_LR": 0.0, "TEST.EVAL_PERIOD": 2, "MULTIMASK.EARLY_STOP_PATIENCE": 1}
    )
    log, logger = _Records(), logging.getLogger("multimask.engine.trainer")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        _train(MultiMaskTrainer, cfg)
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    summary = _json(tmp_path / "summary.json")
    results = _json(tmp_path / "eval_results.json")
    assert summary == {
        "iterations": 4,
        "max_iter": 20,
        "early_stopped": True,
        "best": {
            "metric": "segm/primary/AP",
            "mode": "max",
            "value": results["segm/primary"]["AP"],
            "iteration": 3,
            "checkpoint": "model_best.pth",
        },
    }
    assert [e["iteration"] for e in _json(tmp_path / "evaluations.json")] == [1, 3]
    assert set(results) == {"bbox", "segm/primary", "segm/secondary"}
    assert _iteration(tmp_path / "model_best.pth") == 3
    assert _iteration(tmp_path / "model_final.pth") == 3
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth", "model_best is not a resume point"
    assert run_weights(tmp_path) == tmp_path / "model_best.pth"
    value = results["segm/primary"]["AP"]
    assert log.messages[-1] == (
        f"early stopping at iteration 3: segm/primary/AP did not improve for 1 "
        f"evaluations; best {value:.4g} at iteration 3"
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert rows and not any("max_mem_mb" in r for r in rows), "no GPU memory on the CPU"


def test_summary_after_a_normal_end_and_min_mode(synth_data, tmp_path):
    cfg = _cfg(synth_data, tmp_path, 3, **{"MULTIMASK.BEST_METRIC": "bbox/AP", "MULTIMASK.BEST_MODE": "min"})
    _train(_scripted([5.0, 3.0, 4.0]), cfg)  # evaluations after iterations 0, 1 and 2 (the final one)
    assert _json(tmp_path / "summary.json") == {
        "iterations": 3,
        "max_iter": 3,
        "early_stopped": False,
        "best": {"metric": "bbox/AP", "mode": "min", "value": 3.0, "iteration": 1, "checkpoint": "model_best.pth"},
    }
    assert _json(tmp_path / "eval_results.json")["bbox"] == {"AP": 4.0, "AP50": 14.0}, "the final evaluation"
    assert _iteration(tmp_path / "model_best.pth") == 1


@pytest.mark.parametrize("mode", ["max", "min"])
def test_equal_evaluations_keep_the_latest_checkpoint_as_the_best(synth_data, tmp_path, mode):
    """Every AP 0 (a short first run): model_best.pth is the last evaluated weights, not the first ones."""
    cfg = _cfg(synth_data, tmp_path, 3, **{"MULTIMASK.BEST_METRIC": "bbox/AP", "MULTIMASK.BEST_MODE": mode})
    _train(_scripted([0.0, 0.0, 0.0]), cfg)  # after iterations 0 and 1, and the final one (recorded at 3)
    assert _json(tmp_path / "summary.json")["best"]["iteration"] == 3
    assert _iteration(tmp_path / "model_best.pth") == 3


def test_equal_evaluations_do_not_delay_early_stopping(synth_data, tmp_path):
    cfg = _cfg(synth_data, tmp_path, 10, **{"MULTIMASK.BEST_METRIC": "bbox/AP", "MULTIMASK.EARLY_STOP_PATIENCE": 2})
    _train(_scripted([1.0, 1.0, 1.0, 5.0]), cfg)
    summary = _json(tmp_path / "summary.json")
    assert (summary["iterations"], summary["early_stopped"]) == (3, True), "ties are no improvement"
    assert (summary["best"]["value"], summary["best"]["iteration"]) == (1.0, 2), "the latest of the ties"
    assert _iteration(tmp_path / "model_best.pth") == 2


def test_early_stop_writes_the_best_evaluation_and_resume_restores_the_best(synth_data, tmp_path):
    cfg = _cfg(synth_data, tmp_path, 10, **{"MULTIMASK.BEST_METRIC": "bbox/AP", "MULTIMASK.EARLY_STOP_PATIENCE": 2})
    _train(_scripted([5.0, 7.0, 6.0, 6.5]), cfg)
    summary = _json(tmp_path / "summary.json")
    assert (summary["iterations"], summary["early_stopped"]) == (4, True)
    assert (summary["best"]["value"], summary["best"]["iteration"]) == (7.0, 1)
    assert _json(tmp_path / "eval_results.json")["bbox"] == {"AP": 7.0, "AP50": 17.0}, "the best evaluation"

    # resumed with more patience: the best (7 at iteration 1) and the 2 evaluations since are restored, so
    # 6.8 neither replaces model_best.pth nor resets the count, and training stops at the 3rd evaluation since
    cfg = _cfg(synth_data, tmp_path, 10, **{"MULTIMASK.BEST_METRIC": "bbox/AP", "MULTIMASK.EARLY_STOP_PATIENCE": 3})
    seen_summary = []
    trainer = _train(_scripted([6.8], seen_summary), cfg, resume=True)
    assert trainer.start_iter == 4
    assert seen_summary == [False], "the earlier start's summary.json is gone while training"
    summary = _json(tmp_path / "summary.json")
    assert (summary["iterations"], summary["early_stopped"]) == (5, True)
    assert (summary["best"]["value"], summary["best"]["iteration"]) == (7.0, 1)
    assert _iteration(tmp_path / "model_best.pth") == 1
    assert [e["iteration"] for e in _json(tmp_path / "evaluations.json")] == [0, 1, 2, 3, 4]


# --- run record


def test_resume_is_refused_when_the_training_json_changed(tmp_path):
    data = tmp_path / "train.json"
    data.write_text('{"a": 1}')
    run = tmp_path / "run"
    record_start(run, {"train": data, "val": None}, seed=7, resume=False, argv=["x"])
    info = _json(run / RUN_INFO_FILE)
    assert info["data"] == {
        "train": {"path": str(data), "sha256": hashlib.sha256(b'{"a": 1}').hexdigest(), "copy": "data/train.json"}
    }
    assert (run / "data/train.json").read_bytes() == data.read_bytes()
    record_start(run, {"train": data, "val": None}, seed=8, resume=True, argv=["y"])
    assert [(s["resume"], s["seed"], s["argv"]) for s in _json(run / RUN_INFO_FILE)["starts"]] == [
        (False, 7, ["x"]),
        (True, 8, ["y"]),
    ]
    data.write_text('{"a": 2}')
    with pytest.raises(
        ValueError,
        match=r"train.json: the train JSON changed since this run started .*start a new "
        r"run or restore it",
    ):
        record_start(run, {"train": data, "val": None}, seed=9, resume=True, argv=["z"])
    assert (run / "data/train.json").read_text() == '{"a": 1}', "the frozen copy is kept"
    assert len(_json(run / RUN_INFO_FILE)["starts"]) == 2
    record_start(run, {"train": data, "val": None}, seed=9, resume=False, argv=["z"])  # a new run: no check
    assert _json(run / RUN_INFO_FILE)["seed"] == 9


def test_a_training_start_trains_on_frozen_copies_and_resume_checks_them(synth_data, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from multimask.cli import TRAIN_NAME, VAL_NAME, build_parser, training_config

    train = tmp_path / "train.json"  # its image file names are relative to the synthetic set's folder
    train.write_bytes(synth_data["train"].read_bytes())
    run = tmp_path / "run"
    argv = [
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        str(train),
        "--val-json",
        str(synth_data["val"]),
        "--image-root",
        str(synth_data["images"].parent),
        "--output-dir",
        str(run),
    ]
    cfg = training_config(build_parser().parse_args([*argv, "MODEL.DEVICE", "cpu"]))
    info = _json(run / RUN_INFO_FILE)
    assert cfg.SEED >= 0 and info["seed"] == cfg.SEED, "a concrete seed, recorded"
    for name, kind, src in ((TRAIN_NAME, "train", train), (VAL_NAME, "val", synth_data["val"])):
        meta = MetadataCatalog.get(name)
        assert meta.json_file == str(run / "data" / f"{kind}.json")
        assert (run / "data" / f"{kind}.json").read_bytes() == src.read_bytes()
        assert info["data"][kind] == {
            "path": str(src.resolve()),
            "copy": f"data/{kind}.json",
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        }
    assert DatasetCatalog.get(TRAIN_NAME)[0]["file_name"].startswith(str(synth_data["images"].resolve()))
    versions = info["versions"]
    assert {
        "python",
        "torch",
        "torchvision",
        "detectron2",
        "multimask",
        "numpy",
        "opencv",
        "pycocotools",
        "cuda",
        "gpus",
    } <= set(versions)
    assert versions["multimask"] and versions["opencv"] and versions["pycocotools"]

    edited = json.loads(train.read_text())
    edited["info"] = {"description": "edited"}
    train.write_text(json.dumps(edited))
    args = build_parser().parse_args([*argv, "--resume", "MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"train.json: the train JSON changed since this run started"):
        args.func(args)  # the `train` command, through detectron2's launch


def _stop_together_worker(out_dir: str) -> None:
    """One of two CPU processes (gloo): only rank 1 gets the stop signal, at iteration 3."""
    import json
    import os
    from pathlib import Path
    from types import SimpleNamespace

    from detectron2.utils import comm

    from multimask.engine.hooks import GracefulStop, TrainingStopped

    saved = []
    hook = GracefulStop()
    hook.trainer = SimpleNamespace(
        iter=0,
        max_iter=10,
        checkpointer=SimpleNamespace(
            save=lambda name, iteration: saved.append(name) if comm.is_main_process() else None
        ),
    )
    outcome = "finished"
    try:
        for it in range(10):
            hook.trainer.iter = it
            if it == 3 and comm.get_rank() == 1:
                hook.request_stop()
            hook.after_step()
    except TrainingStopped as e:
        outcome = f"stopped at {e.iteration}"
    Path(out_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps({"outcome": outcome, "saved": saved}))
    os._exit(0)  # as the CLI's workers do after a stop: a normal exit with gloo's threads alive may abort


@pytest.mark.slow
def test_every_process_stops_at_the_same_iteration(tmp_path):
    import json

    from detectron2.engine import launch

    launch(_stop_together_worker, 2, dist_url="auto", args=(str(tmp_path),))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["outcome"] for r in ranks] == ["stopped at 3", "stopped at 3"]
    assert ranks[0]["saved"] == ["model_0000003"] and ranks[1]["saved"] == [], "the main process saves once"
