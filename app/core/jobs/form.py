"""The Train form: checking what the browser sent (`parse_settings`) and turning it into a training command.

Every value is checked here, whatever the page allowed: the command is built from these checked values only,
as an argument list (no shell), and advanced config options may not redirect data, weights or outputs.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from multimask.config import get_multimask_cfg, preset_path
from multimask.run_folder import CONFIG_FILE, run_weights

from ..roots import inside, locate, shown

# key -> (label, preset). "run:<name>" starts from a previous run's weights and config.
STARTING_POINTS: dict[str, tuple[str, str]] = {
    "coco": ("COCO Mask R-CNN R50-FPN (model zoo; downloaded once, needs internet)", "mask_rcnn_R_50_FPN_3x"),
    "local": (
        "Local weights file (Mask R-CNN R50-FPN .pkl/.pth on the server, e.g. the model zoo's model_final_f10217.pkl)",
        "mask_rcnn_R_50_FPN_3x",
    ),
    "scratch": (
        "From scratch: R50-FPN with GroupNorm (no download; needs long training)",
        "scratch_mask_rcnn_R_50_FPN_gn",
    ),
    "tiny": ("Tiny model from scratch (quick CPU try-out; low accuracy)", "tiny_cpu"),
}
LOCAL_LABEL = "Local weights file"  # how the form names the "local" starting point in messages
WEIGHTS_SUFFIXES = (".pth", ".pkl")
RUN_PREFIX = "run:"
SCHEDULES = {"step": "step decay at 75% and 90%", "cosine": "cosine", "constant": "constant"}
DEVICES = ("auto", "cuda", "cpu")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")
# Set by the form or by the app itself: an advanced option must not point training elsewhere.
RESERVED_KEYS = (
    "OUTPUT_DIR",
    "DATASETS.",
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "SEED",
    "SOLVER.AMP.",
    "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES",
    "MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "MULTIMASK.CLASS_NAMES",
)
# Options the form's fields set (the job's record, progress and checks follow the fields): not in the text box.
FORM_FIELD_KEYS = {
    "SOLVER.MAX_ITER": "iterations",
    "SOLVER.IMS_PER_BATCH": "batch size",
    "SOLVER.BASE_LR": "learning rate",
    "SOLVER.LR_SCHEDULER_NAME": "schedule",
    "TEST.EVAL_PERIOD": "evaluation period",
    "MULTIMASK.EARLY_STOP_PATIENCE": "early stopping",
    "MULTIMASK.BEST_METRIC": "best checkpoint metric",
}
MAX_ADVANCED_CHARS = 4000

DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "run_name": "",
    "start": "coco",
    "iterations": 1000,
    "batch_size": 4,
    "lr": 0.005,
    "schedule": "step",
    "image_size": 800,
    "val_fraction": 0.2,
    "seed": 0,
    "device": "auto",
    "num_gpus": 1,
    "amp": True,
    "eval_period": 250,
    "patience": 0,
    "best_metric": "",
    "advanced": "",
    "weights_file": "",
}
FIELDS = tuple(DEFAULTS)


# Values the form starts from, by model ("tiny" ResNet-18, or "r50" R50-FPN) and whether it trains on a GPU:
# a CPU try-out of the tiny model takes minutes; R50-FPN on the CPU takes seconds per image (see SPEED).
START_DEFAULTS: dict[tuple[str, bool], dict[str, Any]] = {
    ("tiny", False): {"iterations": 200, "batch_size": 2, "lr": 0.01, "image_size": 320},
    ("tiny", True): {"iterations": 1000, "batch_size": 4, "lr": 0.01, "image_size": 512},
    ("r50", False): {"iterations": 200, "batch_size": 2, "lr": 0.005, "image_size": 512},
    ("r50", True): {"iterations": 1000, "batch_size": 4, "lr": 0.005, "image_size": 800},
}
SCRATCH_GPU_ITERATIONS = 3000  # R50-FPN from random weights needs longer training than a fine-tune

# The Train button's estimate, without measuring: seconds per iteration ≈ step + images per process x image x
# (image size / ref)², per evaluation ≈ EVAL_OVERHEAD + validation images x infer x (image size / ref)², plus
# startup (imports, model, data; CUDA's start on a GPU), by (model, on a GPU): (startup, step, image, infer, ref).
# CPU figures: `python -m multimask train` on 640x480 synthetic images (2026-11-27) on this project's machine:
# 2 vCPUs of an "Intel(R) Xeon(R) Processor", shared with other work (load 1-2.5), torch CPU. Measured
# s/iteration (median after the first): tiny batch 2 at 256/320/384/512/800 px: 0.44/0.53/0.68/1.45/2.80,
# batch 1 and 4 at 320: 0.31 and 1.30; batch 2 at 128 px (a 300-iteration run, load 2-3): 0.46; inference
# 0.08-0.13 s/image at 320, 0.37 at 800; startup ~9 s.
# R50-FPN (COCO preset, frozen BatchNorm) batch 2 at 320/512/800 px: 2.97/8.6/~19 s (800: first iteration),
# inference 0.40/0.88/2.37 s/image; R50-FPN-GN (scratch) batch 2 at 320: 10.7 s, inference 1.9 s/image.
# GPU figures: the H200 of bench/README.md (R50-FPN-GN batch 4 at 640-800 px: 0.154 s a step, 0.027 s/image
# inference; 200 iterations at 256 px, batch 8, took 79 s with startup and 3 evaluations); the tiny model's
# are scaled from R50's. Other machines differ, and the estimate says so.
SPEED: dict[tuple[str, bool], tuple[float, float, float, float, int]] = {
    ("tiny", False): (9.0, 0.15, 0.2, 0.10, 320),
    ("r50", False): (10.0, 0.1, 1.5, 0.4, 320),
    ("r50-gn", False): (15.0, 0.5, 5.1, 1.9, 320),
    ("tiny", True): (25.0, 0.03, 0.01, 0.008, 800),
    ("r50", True): (30.0, 0.05, 0.025, 0.027, 800),
    ("r50-gn", True): (30.0, 0.05, 0.03, 0.03, 800),
}
EVAL_OVERHEAD = 1.5  # seconds per evaluation besides inference (data loader, COCO evaluation)
MODEL_NAMES = {"tiny": "tiny model", "r50": "R50-FPN", "r50-gn": "R50-FPN-GN"}


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
    weights_file: str = ""  # for the "local" starting point, named from its root folder (`runs/.weights/w.pkl`)
    weights_path: str = field(default="", compare=False)  # that file resolved, what training loads
    notes: tuple[str, ...] = field(default=(), compare=False)  # what the checks adjusted, for the user

    def to_dict(self) -> dict:
        """The form's fields (what a job records as its settings)."""
        out = asdict(self)
        del out["notes"], out["weights_path"]
        return out


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
    ok = (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and (lo < v if lo_open else lo <= v)
        and v <= hi
    )
    if not ok:
        raise FormError(
            f"{name.replace('_', ' ')}: expected a number {'>' if lo_open else '>='} {lo} and <= {hi}, got {v!r}"
        )
    return float(v)


def _choice(values: dict, name: str, allowed) -> str:
    v = values.get(name)
    if v not in allowed:
        raise FormError(f"{name.replace('_', ' ')}: {v!r} is not one of {', '.join(map(str, allowed))}")
    return v


def parse_settings(values: dict, runs: list[str], weights_roots: Sequence[Path] = ()) -> TrainSettings:
    """Check raw form values (anything a client may send); `runs` are the runs one may start from, and a local
    weights file must lie in one of `weights_roots`."""
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
        raise FormError(
            f"run name: {run_name!r} is not allowed; use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (or leave it empty for an automatic name)"
        )
    start = values["start"]
    if not (
        start in STARTING_POINTS
        or (isinstance(start, str) and start.startswith(RUN_PREFIX) and start[len(RUN_PREFIX) :] in runs)
    ):
        raise FormError(f"starting point: {start!r} is not a model-zoo preset or a run with weights")
    weights_file, weights_path = (
        check_weights_file(values["weights_file"], weights_roots) if start == "local" else ("", "")
    )
    iterations = _int(values, "iterations", 1, 1_000_000)
    batch_size = _int(values, "batch_size", 1, 512)
    num_gpus = _int(values, "num_gpus", 1, 64)
    if batch_size % num_gpus:
        raise FormError(f"batch size {batch_size} must be a multiple of the number of GPUs ({num_gpus})")
    eval_period, note = fit_eval_period(_int(values, "eval_period", 0, 1_000_000), iterations)
    advanced = values["advanced"] if values["advanced"] is not None else ""
    if not isinstance(advanced, str) or len(advanced) > MAX_ADVANCED_CHARS:
        raise FormError(f"advanced options: expected at most {MAX_ADVANCED_CHARS} characters of text")
    best = values["best_metric"] if values["best_metric"] is not None else ""
    if not isinstance(best, str) or (best and not re.fullmatch(r"(bbox|segm/[A-Za-z_]\w*)/AP(50|75|s|m|l)?", best)):
        raise FormError(f"best metric: {best!r} is not a metric such as segm/primary/AP or bbox/AP50")
    if not isinstance(values["amp"], bool):
        raise FormError(f"mixed precision: expected true or false, got {values['amp']!r}")
    settings = TrainSettings(
        dataset=dataset,
        run_name=run_name.strip(),
        start=start,
        iterations=iterations,
        batch_size=batch_size,
        lr=_float(values, "lr", 0.0, 10.0, lo_open=True),
        schedule=_choice(values, "schedule", tuple(SCHEDULES)),
        image_size=_int(values, "image_size", 64, 4096),
        val_fraction=_float(values, "val_fraction", 0.0, 0.9),
        seed=_int(values, "seed", 0, 2**31 - 1),
        device=_choice(values, "device", DEVICES),
        num_gpus=num_gpus,
        amp=values["amp"],
        eval_period=eval_period,
        patience=_int(values, "patience", 0, 1000),
        best_metric=best,
        advanced=advanced,
        weights_file=weights_file,
        weights_path=weights_path,
        notes=(note,) if note else (),
    )
    parse_advanced(settings.advanced)
    return settings


def fit_eval_period(eval_period: int, iterations: int) -> tuple[int, str | None]:
    """The evaluation period clamped to the iterations (evaluating at the end only), and a note when it was."""
    if eval_period <= iterations:
        return eval_period, None
    return iterations, (
        f"evaluate every: {eval_period} is more than the {iterations} iterations; set to "
        f"{iterations} (one evaluation, at the end)"
    )


def check_weights_file(path: Any, roots: Sequence[Path]) -> tuple[str, str]:
    """A local weights file: an existing .pth or .pkl file that resolves (links followed) inside one of `roots`,
    given as a server path or from a root's folder name (`runs/.weights/w.pkl`) or inside a root
    (`.weights/w.pkl`). Returns (the file named from its root, as messages name it; the resolved path)."""
    where = " or ".join(f"`{shown(r, roots)}/`" for r in roots) or "(no folder is allowed)"
    if not isinstance(path, str) or not path.strip():
        raise FormError(
            f"local weights file: give the path of a .pth or .pkl file in {where}, e.g. "
            f"`{shown(roots[0], roots) if roots else 'runs'}/.weights/model_final_f10217.pkl`"
        )
    if "\0" in path:
        raise FormError("local weights file: the path contains a NUL character")
    given = locate(path.strip(), roots)
    resolved = inside(given, roots)
    if given.suffix.lower() not in WEIGHTS_SUFFIXES or (resolved and resolved.suffix.lower() not in WEIGHTS_SUFFIXES):
        raise FormError(f"local weights file: {path!r} is not a .pth or .pkl file")
    if resolved is None:
        raise FormError(
            f"local weights file: {path!r} is outside the folders the app may read ({where}); copy it there"
        )
    if not resolved.is_file():
        raise FormError(f"local weights file: no file {path!r}")
    return shown(given, roots), str(resolved)


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
            raise FormError(
                f"advanced options, line {n}: expected `KEY VALUE` such as `SOLVER.MOMENTUM 0.9`, got {line[:80]!r}"
            )
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESERVED_KEYS):
            raise FormError(f"advanced options, line {n}: {key} is set by the form or the app, not here")
        if key in FORM_FIELD_KEYS:
            raise FormError(
                f"advanced options, line {n}: {key} is the form's {FORM_FIELD_KEYS[key]!r} field; set it there"
            )
        opts += [key, value]
    return opts


def resolve_device(settings: TrainSettings, gpu_count: int) -> tuple[str, str, list[str]]:
    """(MODEL.DEVICE, job device 'cpu' or 'cuda*K' (any K free GPUs), notes for the user) for the form."""
    device = settings.device
    if device == "auto":
        device = "cuda" if gpu_count else "cpu"
    if device == "cuda":
        if not gpu_count:
            raise FormError(
                "device: no CUDA GPU is visible to this server; choose device 'cpu' to train on the "
                "CPU (slow: use the tiny model or few iterations)"
            )
        if settings.num_gpus > gpu_count:
            raise FormError(f"number of GPUs: {settings.num_gpus} asked for, {gpu_count} visible")
        return "cuda", f"cuda*{settings.num_gpus}", []  # the job manager picks free GPUs when it starts
    if settings.num_gpus != 1:
        raise FormError("number of GPUs: CPU training runs one process; set it to 1")
    notes = ["mixed precision is off: it needs a CUDA GPU"] if settings.amp else []
    return "cpu", "cpu", notes


def model_kind(start: str, run_cfg: dict | None = None) -> str:
    """The model a starting point trains: "tiny" (ResNet-18), "r50" (R50-FPN, frozen BatchNorm) or "r50-gn"
    (R50-FPN with GroupNorm, every layer trained); `run_cfg`: `service.run_config` of a run started from."""
    if start.startswith(RUN_PREFIX):
        run_cfg = run_cfg or {}
        return "tiny" if run_cfg.get("depth") == 18 else "r50-gn" if run_cfg.get("norm") == "GN" else "r50"
    return {"tiny": "tiny", "scratch": "r50-gn"}.get(start, "r50")


def form_defaults(start: str, on_gpu: bool, kind: str | None = None) -> dict[str, Any]:
    """Iterations, batch size, learning rate, image size and evaluation period for a starting point (of model
    `kind`, see `model_kind`) on the device the form trains on; the evaluation period is a quarter of the
    iterations."""
    kind = kind or model_kind(start)
    values = dict(START_DEFAULTS["tiny" if kind == "tiny" else "r50", on_gpu])
    if start == "scratch":
        values["lr"] = 0.01
        if on_gpu:
            values["iterations"] = SCRATCH_GPU_ITERATIONS
    values["eval_period"] = max(1, values["iterations"] // 4)
    return values


def seconds_per_iteration(kind: str, gpu: bool, batch_per_process: int, image_size: int) -> float:
    """SPEED's heuristic seconds per training iteration."""
    _, step, image, _, ref = SPEED[kind, gpu]
    return step + batch_per_process * image * (image_size / ref) ** 2


def estimate_seconds(s: TrainSettings, kind: str, gpu: bool, n_val: int) -> float:
    """SPEED's heuristic duration of a run: startup, iterations, periodic and final evaluations."""
    startup, _, _, infer, ref = SPEED[kind, gpu]
    per_process = max(1, s.batch_size // s.num_gpus) if gpu else s.batch_size
    evaluations = 0 if not n_val else 1 + ((s.iterations - 1) // s.eval_period if s.eval_period else 0)
    per_eval = EVAL_OVERHEAD + n_val * infer * (s.image_size / ref) ** 2
    return startup + s.iterations * seconds_per_iteration(kind, gpu, per_process, s.image_size) + evaluations * per_eval


def duration_text(seconds: float) -> str:
    """ "40 s", "12 min", "2 h 10 min"."""
    if seconds < 90:
        return f"{max(5, round(seconds / 5) * 5)} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def split_warnings(n_train: int, n_val: int) -> list[str]:
    """What the user should know about a train/validation split before (and after) starting."""
    if not n_train:
        return ["no labelled images for training yet: label some (instances, or marked done) in the Label tab"]
    if not n_val:
        return ["no validation images (raise the validation fraction): no evaluation, no AP, no best checkpoint"]
    if n_val <= 2:
        return [
            f"only {n_val} validation image{'s' if n_val > 1 else ''}: AP on so few images is mostly noise, "
            "and the best checkpoint is chosen by it; raise the validation fraction or label more images"
        ]
    return []


def estimate_text(s: TrainSettings, kind: str, gpu: bool, n_train: int, n_val: int) -> str:
    """The Markdown next to the Train button: duration, split and warnings."""
    per_process = max(1, s.batch_size // s.num_gpus) if gpu else s.batch_size
    per_iter = seconds_per_iteration(kind, gpu, per_process, s.image_size)
    where = f"{s.num_gpus} GPU{'s' if s.num_gpus > 1 else ''}" if gpu else "the CPU"
    lines = [
        f"**Estimate: about {duration_text(estimate_seconds(s, kind, gpu, n_val))}** on {where} "
        f"({MODEL_NAMES[kind]}): {s.iterations} iterations of {s.batch_size} image"
        f"{'s' if s.batch_size > 1 else ''} at {s.image_size} px, ≈ {per_iter:.2g} s each"
        + (f", and evaluations of {n_val} validation images" if n_val else "")
        + ".",
        f"Split of {s.dataset}: {n_train} training and {n_val} validation images"
        + (f"; {s.iterations * s.batch_size / n_train:.0f} passes over the training images." if n_train else "."),
    ]
    warnings = [*s.notes, *split_warnings(n_train, n_val)]
    if not gpu and kind != "tiny":
        warnings.append(
            f"{MODEL_NAMES[kind]} on the CPU takes seconds per image; the tiny model is meant for a CPU try-out"
        )
    lines += [f"⚠️ {w}" for w in warnings]
    lines.append(
        f"<small>A rough figure, calibrated on a 2-core CPU{' and an H200 GPU' if gpu else ''}; the "
        "monitor shows the real speed once training runs.</small>"
    )
    return "\n\n".join(lines)


def on_gpu(device: str | None, gpu_count: int) -> bool:
    """Whether the form's device trains on a GPU ("auto": when one is visible)."""
    return device == "cuda" or (device == "auto" and gpu_count > 0)


def preset_for(settings: TrainSettings, run_dirs: dict[str, Path]) -> tuple[Path, str | None]:
    """(config file, weights or None for the config's own) of the starting point."""
    if settings.start == "local":
        return preset_path(STARTING_POINTS["local"][1]), settings.weights_path
    if settings.start.startswith(RUN_PREFIX):
        run_dir = run_dirs[settings.start[len(RUN_PREFIX) :]]
        return run_dir / CONFIG_FILE, str(run_weights(run_dir))
    return preset_path(STARTING_POINTS[settings.start][1]), None


def training_options(
    settings: TrainSettings, base_cfg, model_device: str, mask_names: list[str], weights: str | None, has_val: bool
) -> list[str]:
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
        steps = (
            sorted({s for s in (int(it * 0.75), int(it * 0.9)) if 0 < s < it}) if settings.schedule == "step" else []
        )
        opts.update({"SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR", "SOLVER.STEPS": repr(tuple(steps))})
    flat = [s for kv in opts.items() for s in kv]
    return flat + parse_advanced(settings.advanced)


def check_options(config_file: Path, opts: list[str]) -> None:
    """Build the config the job will build, so a bad option fails here with its message, not in the job."""
    try:
        get_multimask_cfg(config_file, list(opts))
    except (KeyError, ValueError, TypeError, AssertionError, SyntaxError) as e:
        raise FormError(f"the training options do not make a valid config: {e}") from None


def build_command(
    config_file: Path, train_json: Path, val_json: Path | None, run_dir: Path, num_gpus: int, opts: list[str]
) -> list[str]:
    """The argument list of the training job (this Python, `-m multimask train`)."""
    argv = [
        sys.executable,
        "-m",
        "multimask",
        "train",
        "--config-file",
        str(config_file),
        "--train-json",
        str(train_json),
        "--output-dir",
        str(run_dir),
        "--num-gpus",
        str(num_gpus),
    ]
    if val_json is not None:
        argv += ["--val-json", str(val_json)]
    return argv + opts
