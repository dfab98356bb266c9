"""Configuration: `add_multimask_config`, its validation, and the bundled presets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
HEAD_KEYS = ("MASK_NAMES", "NUM_MASK", "LOSS_WEIGHTS")  # the MODEL.ROI_MULTI_MASK_HEAD keys a dataset decides
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_valid_mask_name(name: object) -> bool:
    """Mask names are identifiers (letters, digits, '_'): they name losses, metrics and modules."""
    return isinstance(name, str) and bool(_NAME_RE.fullmatch(name))


def check_mask_names(names: Sequence[object], what: str) -> list[str]:
    """`names` as a list if they are one or more distinct valid mask names, else ValueError starting with `what`."""
    names = list(names)
    if not names:
        raise ValueError(f"{what}: no mask names given")
    bad = [n for n in names if not is_valid_mask_name(n)]
    if bad:
        raise ValueError(f"{what}: {bad} are not valid mask names (letters, digits and '_', not starting with a digit)")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: duplicate mask names {names}")
    return names


def add_multimask_config(cfg: CN) -> None:
    """Add `MODEL.ROI_MULTI_MASK_HEAD` (and the multimask meta-architecture defaults) to `cfg`."""
    cfg.MODEL.ROI_MULTI_MASK_HEAD = CN()
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    head.NAME = "MultiMaskRCNNConvUpsampleHead"
    head.NUM_MASK = 2
    head.MASK_NAMES = ["primary", "secondary"]
    head.NUM_CONV = 4
    head.CONV_DIM = 256
    head.NORM = ""
    head.POOLER_RESOLUTION = 14
    head.POOLER_SAMPLING_RATIO = 0
    head.POOLER_TYPE = "ROIAlignV2"
    head.CLS_AGNOSTIC_MASK = False
    head.LOSS_WEIGHTS = [1.0, 1.0]
    # Each mask's loss is LOSS_WEIGHTS[k] * (cross-entropy + DICE_WEIGHT * Dice loss); 0 is Mask R-CNN's own
    # loss. The bundled presets set 1.0: cross-entropy alone predicts a mask that covers a small share of its
    # ROI (a part inside its object) too small (bench/README.md).
    head.DICE_WEIGHT = 0.0
    # True: one conv trunk feeds NUM_MASK predictors. False: one conv trunk per mask.
    head.SHARED_TRUNK = True
    # Masks predicted a second time on their own grid, in a box of their own (PART_BOX_FROM;
    # multimask/modeling/part_box.py), e.g. ["secondary"] for a part that is small in its object's box.
    head.PART_BOX_MASKS = []
    head.PART_BOX_LOSS_WEIGHT = 1.0  # weight of each part's box loss, `loss_part_box_<name>` (L1 + 1 - GIoU)
    # Where a part's box comes from at inference: "coarse_mask" (around the part predicted on the instance's own
    # grid, which is trained as well, `loss_mask_<name>_coarse`) or "regression" (a box regressed from the
    # instance's features, `loss_part_box_<name>`; less accurate in bench/README.md's study).
    head.PART_BOX_FROM = "coarse_mask"
    head.PART_BOX_JITTER = 0.1  # training: the true part box, moved and scaled by up to this share of its size
    head.PART_BOX_CONTEXT = 1.25  # the part's features and mask are taken in its box enlarged by this factor
    # Training: at most this many (foreground ROI, part) pairs per image train the parts on their own grid, drawn
    # at random (0: all). A part's box is its jittered true box, whichever ROI it comes with: more add little.
    head.PART_BOX_BATCH_SIZE_PER_IMAGE = 16
    # Class names of the training data, stored with each run so a run folder is self-contained.
    cfg.MULTIMASK = CN()
    cfg.MULTIMASK.CLASS_NAMES = []
    # The evaluation result that picks model_best.pth: "bbox/<metric>" or "segm/<mask name>/<metric>", where
    # <metric> is AP, AP50, AP75, APs, APm, APl or AP-<class>. "" means "segm/<first mask name>/AP".
    cfg.MULTIMASK.BEST_METRIC = ""
    cfg.MULTIMASK.BEST_MODE = "max"  # "max" or "min": which way BEST_METRIC improves
    # Stop after this many evaluations in a row without improving BEST_METRIC (0: never stop early).
    cfg.MULTIMASK.EARLY_STOP_PATIENCE = 0
    # Write metrics.json, TensorBoard and the console every this many iterations (detectron2 uses 20).
    cfg.MULTIMASK.WRITE_PERIOD = 20
    cfg.MODEL.META_ARCHITECTURE = "MultiMaskRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "MultiMaskROIHeads"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.DEVICE = default_device()


def validate_multimask_config(cfg: CN) -> None:
    """Raise ValueError naming the offending key when the multimask settings disagree."""
    if "ROI_MULTI_MASK_HEAD" not in cfg.MODEL:
        raise ValueError("config has no MODEL.ROI_MULTI_MASK_HEAD: call add_multimask_config(cfg) first")
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    k = head.NUM_MASK
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK must be an integer >= 1, got {k!r}")
    names = list(head.MASK_NAMES)
    if len(names) != k:
        raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES has {len(names)} names {names} but NUM_MASK is {k}")
    check_mask_names(names, "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES")
    if len(head.LOSS_WEIGHTS) != k:
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS has {len(head.LOSS_WEIGHTS)} weights but NUM_MASK is {k}"
        )
    if any(float(w) < 0 for w in head.LOSS_WEIGHTS):
        raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS must be >= 0, got {list(head.LOSS_WEIGHTS)}")
    dice = head.DICE_WEIGHT
    if not isinstance(dice, (int, float)) or isinstance(dice, bool) or not 0 <= dice < float("inf"):
        raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.DICE_WEIGHT must be a number >= 0 (0: off), got {dice!r}")
    _validate_part_boxes(head, names)
    if head.NUM_CONV < 0 or head.CONV_DIM < 1 or head.POOLER_RESOLUTION < 1:
        raise ValueError("MODEL.ROI_MULTI_MASK_HEAD: NUM_CONV >= 0, CONV_DIM >= 1, POOLER_RESOLUTION >= 1")
    if not cfg.MODEL.MASK_ON:
        raise ValueError("MODEL.MASK_ON must be True for the multimask ROI heads")
    _validate_training(cfg)


def _validate_part_boxes(head: CN, names: list[str]) -> None:
    parts = list(head.PART_BOX_MASKS)
    unknown = [n for n in parts if n not in names]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS {parts} must be distinct names of MASK_NAMES "
            f"{names}" + (f" ({unknown} are not)" if unknown else "")
        )
    from .modeling.part_box import PART_BOX_SOURCES

    if head.PART_BOX_FROM not in PART_BOX_SOURCES:
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM must be one of {list(PART_BOX_SOURCES)}, "
            f"got {head.PART_BOX_FROM!r}"
        )
    size = head.PART_BOX_BATCH_SIZE_PER_IMAGE
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_BATCH_SIZE_PER_IMAGE must be a whole number >= 0 "
            f"(0: every foreground ROI), got {size!r}"
        )
    for key, low, high in (
        ("PART_BOX_LOSS_WEIGHT", 0, float("inf")),
        ("PART_BOX_JITTER", 0, 1),
        ("PART_BOX_CONTEXT", 1, 4),
    ):
        value = head[key]
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not low <= value <= high
            or value == float("inf")
        ):
            raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.{key} must be a number from {low} to {high}, got {value!r}")


def _validate_training(cfg: CN) -> None:
    mm = cfg.MULTIMASK
    names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    metric = best_metric(cfg)
    if split_metric(metric, names) is None:
        from .evaluation import METRICS

        tasks = ", ".join(["bbox", *(f"segm/{n}" for n in names)])
        raise ValueError(
            f"MULTIMASK.BEST_METRIC {metric!r} is not an evaluation result: use TASK/METRIC with TASK "
            f"one of {tasks} and METRIC one of {', '.join(METRICS)} or AP-<class name>"
        )
    if mm.BEST_MODE not in ("max", "min"):
        raise ValueError(f"MULTIMASK.BEST_MODE must be 'max' or 'min', got {mm.BEST_MODE!r}")
    _check_int("MULTIMASK.EARLY_STOP_PATIENCE", mm.EARLY_STOP_PATIENCE, 0, " (0: off)")
    _check_int("MULTIMASK.WRITE_PERIOD", mm.WRITE_PERIOD, 1)
    if cfg.SOLVER.AMP.ENABLED and str(cfg.MODEL.DEVICE).split(":")[0] != "cuda":
        raise ValueError("mixed precision (SOLVER.AMP.ENABLED) needs a CUDA GPU; turn it off to train on the CPU")


def _check_int(key: str, value: object, minimum: int, note: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}{note}, got {value!r}")


def best_metric(cfg: CN) -> str:
    """The flattened evaluation key that picks the best checkpoint (MULTIMASK.BEST_METRIC or its default)."""
    return cfg.MULTIMASK.BEST_METRIC or f"segm/{cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES[0]}/AP"


def split_metric(metric: str, mask_names: list[str]) -> tuple[str, str] | None:
    """(task, metric name) of a flattened evaluation key such as "segm/primary/AP50"; None if it is not one."""
    from .evaluation import METRICS

    for task in ["bbox", *(f"segm/{n}" for n in mask_names)]:
        name = metric[len(task) + 1 :] if metric.startswith(f"{task}/") else ""
        if name in METRICS or (name.startswith("AP-") and len(name) > 3):
            return task, name
    return None


def list_presets() -> list[str]:
    """Names of the bundled presets (files in multimask/configs)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if not p.stem.startswith("Base"))


def preset_path(name: str) -> Path:
    """Path of a bundled preset, by name (with or without `.yaml`)."""
    path = PRESETS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return path


def resolve_config_file(config_file: str | Path) -> Path:
    """A YAML file path as given, or the bundled preset of that name."""
    path = Path(config_file)
    return path if path.is_file() else preset_path(str(config_file))


def get_multimask_cfg(
    config_file: str | Path | None = None,
    opts: list[str] | None = None,
    *,
    dataset_mask_names: Sequence[str] | None = None,
    dataset: str | Path = "the dataset",
) -> CN:
    """A detectron2 config with the multimask keys, merged from a preset name or a YAML file, then `opts`.

    With `dataset_mask_names` (the `mask_names` of `dataset`, the training set), the heads follow the dataset
    (`follow_dataset_masks`) before the config is checked.

    The file is read with `yaml.safe_load` only (detectron2 would fall back to `yaml.unsafe_load`, which runs
    code a shared run folder's config.yaml could carry); a file that needs more is refused.
    """
    cfg = get_cfg()
    add_multimask_config(cfg)
    if config_file:
        path = resolve_config_file(config_file)
        try:
            cfg.merge_from_file(str(path), allow_unsafe=False)
        except yaml.YAMLError as e:
            raise ValueError(
                f"{path}: not a config file this tool reads (plain YAML only): {str(e).splitlines()[0]}"
            ) from None
    if opts:
        cfg.merge_from_list(list(opts))
    if dataset_mask_names is not None:
        follow_dataset_masks(cfg, dataset_mask_names, set_head_keys(config_file, opts), dataset)
    if not cfg.MODEL.DEVICE or cfg.MODEL.DEVICE == "auto":
        cfg.MODEL.DEVICE = default_device()
    validate_multimask_config(cfg)
    return cfg


def set_head_keys(config_file: str | Path | None, opts: list[str] | None) -> dict[str, str]:
    """The `HEAD_KEYS` that the config file (with its `_BASE_` files) or `opts` set, each with where it is set.

    The bundled presets set none of them; a run's config.yaml sets them all.
    """
    found = {}
    if config_file:
        path = resolve_config_file(config_file)
        data = CN.load_yaml_with_base(str(path), allow_unsafe=False)
        head = (data.get("MODEL") or {}).get("ROI_MULTI_MASK_HEAD") or {}
        found = {k: str(path) for k in HEAD_KEYS if k in head}
    keys = {str(k) for k in (opts or [])[::2]}
    found.update({k: "the KEY VALUE options" for k in HEAD_KEYS if f"MODEL.ROI_MULTI_MASK_HEAD.{k}" in keys})
    return found


def follow_dataset_masks(
    cfg: CN, mask_names: Sequence[str], explicit: dict[str, str], dataset: str | Path = "the dataset"
) -> None:
    """Take MASK_NAMES from a dataset's `mask_names`, NUM_MASK and LOSS_WEIGHTS (1.0 each) from MASK_NAMES.

    Keys in `explicit` (see `set_head_keys`) are kept. Explicit MASK_NAMES may select some of the dataset's
    masks; one the dataset lacks raises ValueError saying which side to change.
    """
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    if "MASK_NAMES" in explicit:
        missing = [n for n in head.MASK_NAMES if n not in mask_names]
        if missing:
            raise ValueError(
                f"{dataset}: has masks {list(mask_names)}, not {missing} of "
                f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES {list(head.MASK_NAMES)} set in "
                f"{explicit['MASK_NAMES']}; remove that setting to train the dataset's masks, or "
                "use a dataset that has those masks"
            )
    else:
        head.MASK_NAMES = list(mask_names)
    if "NUM_MASK" not in explicit:
        head.NUM_MASK = len(head.MASK_NAMES)
    if "LOSS_WEIGHTS" not in explicit:
        head.LOSS_WEIGHTS = [1.0] * len(head.MASK_NAMES)


def default_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
