"""The Train form: checking what the browser sent (`parse_settings`) and turning it into a training command.

Every value is checked here, whatever the page allowed: the command is built from these checked values only,
as an argument list (no shell), and advanced config options may not redirect data, weights or outputs.
"""

from __future__ import annotations

import math
import re
import sys
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from multimask.config import get_multimask_cfg, preset_path

# key -> (label, preset). "run:<name>" starts from a previous run's weights and config.
STARTING_POINTS: dict[str, tuple[str, str]] = {
    "coco": ("COCO Mask R-CNN R50-FPN (model zoo; downloaded once, needs internet)", "mask_rcnn_R_50_FPN_3x"),
    "scratch": ("From scratch: R50-FPN with GroupNorm (no download; needs long training)",
                "scratch_mask_rcnn_R_50_FPN_gn"),
    "tiny": ("Tiny model from scratch (quick CPU try-out; low accuracy)", "tiny_cpu"),
}
RUN_PREFIX = "run:"
SCHEDULES = {"step": "step decay at 75% and 90%", "cosine": "cosine", "constant": "constant"}
DEVICES = ("auto", "cuda", "cpu")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")
# Set by the form or by the app itself: an advanced option must not point training elsewhere.
RESERVED_KEYS = ("OUTPUT_DIR", "DATASETS.", "MODEL.WEIGHTS", "MODEL.DEVICE", "SEED", "SOLVER.AMP.",
                 "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES", "MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK",
                 "MODEL.ROI_HEADS.NUM_CLASSES", "MULTIMASK.CLASS_NAMES")
# Options the form's fields set (the job's record, progress and checks follow the fields): not in the text box.
FORM_FIELD_KEYS = {"SOLVER.MAX_ITER": "iterations", "SOLVER.IMS_PER_BATCH": "batch size",
                   "SOLVER.BASE_LR": "learning rate", "SOLVER.LR_SCHEDULER_NAME": "schedule",
                   "TEST.EVAL_PERIOD": "evaluation period", "MULTIMASK.EARLY_STOP_PATIENCE": "early stopping",
                   "MULTIMASK.BEST_METRIC": "best checkpoint metric"}
MAX_ADVANCED_CHARS = 4000

DEFAULTS: dict[str, Any] = {
    "dataset": None, "run_name": "", "start": "coco", "iterations": 1000, "batch_size": 4, "lr": 0.005,
    "schedule": "step", "image_size": 800, "val_fraction": 0.2, "seed": 0, "device": "auto", "num_gpus": 1,
    "amp": True, "eval_period": 250, "patience": 0, "best_metric": "", "advanced": "",
}
FIELDS = tuple(DEFAULTS)


class FormError(ValueError):
    """A form value the server refuses; the message names the field and what is allowed."""


@dataclass(frozen=True)
class TrainSettings:
    """A checked Train form (see DEFAULTS for the defaults of a first fine-tune)."""

    dataset: str
    run_name: str
    start: str
    iterations: int
    batch_size: int
    lr: float
    schedule: str
    image_size: int
    val_fraction: float
    seed: int
    device: str
    num_gpus: int
    amp: bool
    eval_period: int
    patience: int
    best_metric: str
    advanced: str

    def to_dict(self) -> dict:
        return asdict(self)


def _int(values: dict, name: str, lo: int, hi: int) -> int:
    v = values.get(name)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise FormError(f"{name.replace('_', ' ')}: expected a whole number from {lo} to {hi}, got {v!r}")
    return v


def _float(values: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    v = values.get(name)
    if isinstance(v, str):
        with suppress(ValueError):
            v = float(v)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        raise FormError(f"{name.replace('_', ' ')}: expected a number {'>' if lo_open else '>='} {lo} and "
                        f"<= {hi}, got {v!r}")
    return float(v)


def _choice(values: dict, name: str, allowed) -> str:
    v = values.get(name)
    if v not in allowed:
        raise FormError(f"{name.replace('_', ' ')}: {v!r} is not one of {', '.join(map(str, allowed))}")
    return v


def parse_settings(values: dict, runs: list[str]) -> TrainSettings:
    """Check raw form values (anything a client may send); `runs` are the runs one may start from."""
    if not isinstance(values, dict):
        raise FormError("the form must be sent as named values")
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise FormError(f"unknown form fields: {', '.join(sorted(map(str, unknown)))}")
    values = {**DEFAULTS, **values}
    dataset = values["dataset"]
    if not isinstance(dataset, str) or not dataset:
        raise FormError("choose a dataset (create and label one in the Label tab first)")
    run_name = values["run_name"] if values["run_name"] is not None else ""
    if not isinstance(run_name, str) or (run_name.strip() and not RUN_NAME_RE.fullmatch(run_name.strip())):
        raise FormError(f"run name: {run_name!r} is not allowed; use 1 to 64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit (or leave it empty for an automatic name)")
    start = values["start"]
    if not (start in STARTING_POINTS or (isinstance(start, str) and start.startswith(RUN_PREFIX)
                                         and start[len(RUN_PREFIX):] in runs)):
        raise FormError(f"starting point: {start!r} is not a model-zoo preset or a run with weights")
    iterations = _int(values, "iterations", 1, 1_000_000)
    batch_size = _int(values, "batch_size", 1, 512)
    num_gpus = _int(values, "num_gpus", 1, 64)
    if batch_size % num_gpus:
        raise FormError(f"batch size {batch_size} must be a multiple of the number of GPUs ({num_gpus})")
    eval_period = _int(values, "eval_period", 0, iterations)
    advanced = values["advanced"] if values["advanced"] is not None else ""
    if not isinstance(advanced, str) or len(advanced) > MAX_ADVANCED_CHARS:
        raise FormError(f"advanced options: expected at most {MAX_ADVANCED_CHARS} characters of text")
    best = values["best_metric"] if values["best_metric"] is not None else ""
    if not isinstance(best, str) or (best and not re.fullmatch(r"(bbox|segm/[A-Za-z_]\w*)/AP(50|75|s|m|l)?", best)):
        raise FormError(f"best metric: {best!r} is not a metric such as segm/primary/AP or bbox/AP50")
    if not isinstance(values["amp"], bool):
        raise FormError(f"mixed precision: expected true or false, got {values['amp']!r}")
    settings = TrainSettings(
        dataset=dataset, run_name=run_name.strip(), start=start, iterations=iterations, batch_size=batch_size,
        lr=_float(values, "lr", 0.0, 10.0, lo_open=True), schedule=_choice(values, "schedule", tuple(SCHEDULES)),
        image_size=_int(values, "image_size", 64, 4096), val_fraction=_float(values, "val_fraction", 0.0, 0.9),
        seed=_int(values, "seed", 0, 2**31 - 1), device=_choice(values, "device", DEVICES), num_gpus=num_gpus,
        amp=values["amp"], eval_period=eval_period, patience=_int(values, "patience", 0, 1000),
        best_metric=best, advanced=advanced)
    parse_advanced(settings.advanced)
    return settings


def parse_advanced(text: str) -> list[str]:
    """`KEY VALUE` lines (blank lines and `#` comments ignored) as a flat option list for merge_from_list."""
    opts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.rstrip(":"), value.strip()
        if not _KEY_RE.fullmatch(key) or not value:
            raise FormError(f"advanced options, line {n}: expected `KEY VALUE` such as `SOLVER.MOMENTUM 0.9`, "
                            f"got {line[:80]!r}")
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESERVED_KEYS):
            raise FormError(f"advanced options, line {n}: {key} is set by the form or the app, not here")
        if key in FORM_FIELD_KEYS:
            raise FormError(f"advanced options, line {n}: {key} is the form's {FORM_FIELD_KEYS[key]!r} field; "
                            "set it there")
        opts += [key, value]
    return opts


def resolve_device(settings: TrainSettings, gpu_count: int) -> tuple[str, str, list[str]]:
    """(MODEL.DEVICE, job device 'cpu' or 'cuda*K' (any K free GPUs), notes for the user) for the form."""
    device = settings.device
    if device == "auto":
        device = "cuda" if gpu_count else "cpu"
    if device == "cuda":
        if not gpu_count:
            raise FormError("device: no CUDA GPU is visible to this server; choose device 'cpu' to train on the "
                            "CPU (slow: use the tiny model or few iterations)")
        if settings.num_gpus > gpu_count:
            raise FormError(f"number of GPUs: {settings.num_gpus} asked for, {gpu_count} visible")
        return "cuda", f"cuda*{settings.num_gpus}", []  # the job manager picks free GPUs when it starts
    if settings.num_gpus != 1:
        raise FormError("number of GPUs: CPU training runs one process; set it to 1")
    notes = ["mixed precision is off: it needs a CUDA GPU"] if settings.amp else []
    return "cpu", "cpu", notes


def preset_for(settings: TrainSettings, run_dirs: dict[str, Path]) -> tuple[Path, str | None]:
    """(config file, weights or None for the config's own) of the starting point."""
    if settings.start.startswith(RUN_PREFIX):
        from multimask.engine.weights import run_weights

        run_dir = run_dirs[settings.start[len(RUN_PREFIX):]]
        return run_dir / "config.yaml", str(run_weights(run_dir))
    return preset_path(STARTING_POINTS[settings.start][1]), None


def training_options(settings: TrainSettings, base_cfg, model_device: str, mask_names: list[str],
                     weights: str | None, has_val: bool) -> list[str]:
    """Config options (KEY VALUE pairs as strings) for `python -m multimask train`, advanced options last."""
    it = settings.iterations
    max_size = str(round(settings.image_size * 1333 / 800))  # detectron2's 800 / 1333 aspect limit
    opts = {
        "MODEL.DEVICE": model_device,
        "MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK": str(len(mask_names)),
        "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES": repr(list(mask_names)),
        "MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS": repr([1.0] * len(mask_names)),
        "SOLVER.MAX_ITER": str(it),
        "SOLVER.IMS_PER_BATCH": str(settings.batch_size),
        "SOLVER.BASE_LR": repr(settings.lr),
        "SOLVER.WARMUP_ITERS": str(min(base_cfg.SOLVER.WARMUP_ITERS, it // 5)),
        "SOLVER.CHECKPOINT_PERIOD": str(settings.eval_period or max(1, it // 4)),
        "SOLVER.AMP.ENABLED": str(settings.amp and model_device == "cuda"),
        "INPUT.MIN_SIZE_TRAIN": f"({settings.image_size},)",
        "INPUT.MAX_SIZE_TRAIN": max_size,
        "INPUT.MIN_SIZE_TEST": str(settings.image_size),
        "INPUT.MAX_SIZE_TEST": max_size,
        "SEED": str(settings.seed),
        "TEST.EVAL_PERIOD": str(settings.eval_period if has_val else 0),
        "MULTIMASK.BEST_METRIC": settings.best_metric or f"segm/{mask_names[0]}/AP",
        "MULTIMASK.EARLY_STOP_PATIENCE": str(settings.patience if has_val and settings.eval_period else 0),
        "MULTIMASK.WRITE_PERIOD": "5" if model_device == "cuda" else "1",  # a live monitor
    }
    if weights is not None:
        opts["MODEL.WEIGHTS"] = weights
    if settings.schedule == "cosine":
        opts.update({"SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR", "SOLVER.STEPS": "()"})
    else:
        steps = sorted({s for s in (int(it * 0.75), int(it * 0.9)) if 0 < s < it}) \
            if settings.schedule == "step" else []
        opts.update({"SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR", "SOLVER.STEPS": repr(tuple(steps))})
    flat = [s for kv in opts.items() for s in kv]
    return flat + parse_advanced(settings.advanced)


def check_options(config_file: Path, opts: list[str]) -> None:
    """Build the config the job will build, so a bad option fails here with its message, not in the job."""
    try:
        get_multimask_cfg(config_file, list(opts))
    except (KeyError, ValueError, TypeError, AssertionError, SyntaxError) as e:
        raise FormError(f"the training options do not make a valid config: {e}") from None


def build_command(config_file: Path, train_json: Path, val_json: Path | None, run_dir: Path, num_gpus: int,
                  opts: list[str]) -> list[str]:
    """The argument list of the training job (this Python, `-m multimask train`)."""
    argv = [sys.executable, "-m", "multimask", "train", "--config-file", str(config_file),
            "--train-json", str(train_json), "--output-dir", str(run_dir), "--num-gpus", str(num_gpus)]
    if val_json is not None:
        argv += ["--val-json", str(val_json)]
    return argv + opts
