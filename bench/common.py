"""Shared set-up of the benchmarks: configs for the multimask model and stock Mask R-CNN, and data."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch
from detectron2.config import get_cfg

from multimask.config import add_multimask_config, get_multimask_cfg
from multimask.data import load_multimask_json
from multimask.data.synth import generate_synthetic_dataset
from multimask.evaluation import save_results


def multimask_cfg(preset: str, device: str, batch: int, names=("primary", "secondary"), **opts):
    """The preset as a multimask model predicting the masks `names`."""
    names, num_mask = list(names), len(names)
    base = [
        "MODEL.DEVICE",
        device,
        "MODEL.WEIGHTS",
        "",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        3,
        "SOLVER.IMS_PER_BATCH",
        batch,
        "MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK",
        num_mask,
        "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES",
        names,
        "MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS",
        [1.0] * num_mask,
    ]
    for k, v in opts.items():
        base += [k, v]
    return get_multimask_cfg(preset, base)


def stock_cfg(mm_cfg):
    """detectron2's own Mask R-CNN (GeneralizedRCNN, StandardROIHeads, MaskRCNNConvUpsampleHead) with the
    same backbone, box head, input and mask-head sizes as `mm_cfg`."""
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.merge_from_other_cfg(mm_cfg)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    head, std = mm_cfg.MODEL.ROI_MULTI_MASK_HEAD, cfg.MODEL.ROI_MASK_HEAD
    std.NAME = "MaskRCNNConvUpsampleHead"
    std.NUM_CONV, std.CONV_DIM, std.NORM = head.NUM_CONV, head.CONV_DIM, head.NORM
    std.POOLER_RESOLUTION, std.POOLER_TYPE = head.POOLER_RESOLUTION, head.POOLER_TYPE
    std.POOLER_SAMPLING_RATIO, std.CLS_AGNOSTIC_MASK = head.POOLER_SAMPLING_RATIO, head.CLS_AGNOSTIC_MASK
    return cfg


def polygon_only_dicts(out_dir: Path, num_images: int, seed: int = 0, height: int = 256, width: int = 320):
    """Synthetic dataset dicts whose masks are all polygons, so both mappers read the same data."""
    paths = generate_synthetic_dataset(out_dir, num_train=num_images, num_val=0, seed=seed, height=height, width=width)
    dicts, _ = load_multimask_json(paths["train"])
    for d in dicts:
        d["annotations"] = [a for a in d["annotations"] if all(isinstance(m, list) for m in a["multimask"].values())]
    return [d for d in dicts if d["annotations"]]


def machine() -> str:
    """A one-line description of this machine, for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        name = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in name.splitlines() if "Model name" in line), cpu)
    except OSError:
        pass
    n = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; CPU {cpu} ({n} threads); torch {torch.__version__}"


def write_json(path: str | None, obj) -> None:
    """Write a benchmark's figures to `path` (if given), NaN (an AP without ground truth) as null."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_results(obj, path)
