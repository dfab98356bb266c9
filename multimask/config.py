"""Configuration: `add_multimask_config`, its validation, and the bundled presets."""

from __future__ import annotations

import re
from pathlib import Path

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_valid_mask_name(name: object) -> bool:
    """Mask names are identifiers (letters, digits, '_'): they name losses, metrics and modules."""
    return isinstance(name, str) and bool(_NAME_RE.fullmatch(name))


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
    # True: one conv trunk feeds NUM_MASK predictors. False: one conv trunk per mask.
    head.SHARED_TRUNK = True
    # Class names of the training data, stored with each run so a run folder is self-contained.
    cfg.MULTIMASK = CN()
    cfg.MULTIMASK.CLASS_NAMES = []
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
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES has {len(names)} names {names} but NUM_MASK is {k}"
        )
    bad = [n for n in names if not is_valid_mask_name(n)]
    if bad:
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES: {bad} are not valid names "
            "(letters, digits and '_', not starting with a digit)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES has duplicates: {names}")
    if len(head.LOSS_WEIGHTS) != k:
        raise ValueError(
            f"MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS has {len(head.LOSS_WEIGHTS)} weights but NUM_MASK is {k}"
        )
    if any(float(w) < 0 for w in head.LOSS_WEIGHTS):
        raise ValueError(f"MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS must be >= 0, got {list(head.LOSS_WEIGHTS)}")
    if head.NUM_CONV < 0 or head.CONV_DIM < 1 or head.POOLER_RESOLUTION < 1:
        raise ValueError("MODEL.ROI_MULTI_MASK_HEAD: NUM_CONV >= 0, CONV_DIM >= 1, POOLER_RESOLUTION >= 1")
    if not cfg.MODEL.MASK_ON:
        raise ValueError("MODEL.MASK_ON must be True for the multimask ROI heads")


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


def get_multimask_cfg(config_file: str | Path | None = None, opts: list[str] | None = None) -> CN:
    """A detectron2 config with the multimask keys, merged from a preset name or a YAML file, then `opts`."""
    cfg = get_cfg()
    add_multimask_config(cfg)
    if config_file:
        cfg.merge_from_file(str(resolve_config_file(config_file)))
    if opts:
        cfg.merge_from_list(list(opts))
    if not cfg.MODEL.DEVICE or cfg.MODEL.DEVICE == "auto":
        cfg.MODEL.DEVICE = default_device()
    validate_multimask_config(cfg)
    return cfg


def default_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
