"""The review queue: a dataset's labelled images ranked by how much a trained run disagrees with their labels.

Per image, the run's detections (at a score threshold) are matched to the labelled objects by their first mask
(greedily by score, at IoU >= MATCH_IOU, as COCO matches). Each object then costs:
- 1 when labelled and not found (missing), or found and not labelled (extra);
- 1 - IoU of its worst mask name when found; a mask name the label leaves empty is not compared.
The image's disagreement is the mean cost of its objects, 0 (the run agrees) to 1. An object whose first mask
agrees but a later one does not (IoU < MATCH_IOU) is a part/object mismatch. Masks are compared with
pycocotools' RLE at the size the model saw the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_util

from multimask.data.geometry import to_rle

from .predictors import RawPrediction

MATCH_IOU = 0.5

Rle = dict
Objects = list[dict[str, Rle | None]]  # per object: mask name -> RLE, None where it has no such mask


@dataclass(frozen=True)
class ImageReview:
    """How a run's detections on one image compare with its labels."""

    image_id: str
    file_name: str
    score: float  # mean cost of its objects: 0 (the run agrees) to 1
    labelled: int
    found: int  # detections at the threshold
    missing: int  # labelled objects the run did not find
    extra: int  # objects the run found that are not labelled
    mismatched: int  # found objects whose first mask agrees but a later one does not
    iou: dict[str, float | None] = field(default_factory=dict)  # mean IoU per mask name over found objects

    def reason(self) -> str:
        """What disagrees, worst first, e.g. "2 missing · secondary IoU 0.41"."""
        bits = [f"{self.missing} missing"] * bool(self.missing) + [f"{self.extra} extra"] * bool(self.extra)
        bits += [f"{self.mismatched} part mismatch"] * bool(self.mismatched)
        bits += [f"{name} IoU {v:.2f}" for name, v in self.iou.items() if v is not None and v < 1 - 1e-9]
        return " · ".join(bits) or "agrees"


def predicted_objects(raw: RawPrediction, mask_names: Sequence[str]) -> tuple[list[float], Objects]:
    """(scores, objects) of every detection kept in `raw`, best first, as RLEs of the image the model saw; mask
    names not in `mask_names` are left out."""
    names = [n for n in raw.mask_names if n in mask_names]
    channels = [raw.mask_names.index(n) for n in names]
    out: Objects = []
    for i in range(len(raw)):
        masks = raw.full_masks([i], channels)[0]
        out.append({n: mask_util.encode(np.asfortranarray(masks[k], dtype=np.uint8)) for n, k in zip(names, channels)})
    return [float(s) for s in raw.scores], out


def labelled_objects(
    instances: Sequence[Mapping], mask_names: Sequence[str], height: int, width: int, scale: float = 1.0
) -> Objects:
    """Editor instances as RLEs of an image of `height` x `width`, their polygons divided by `scale` (the
    image's pixels per pixel the model saw)."""
    out: Objects = []
    for inst in instances:
        obj: dict[str, Rle | None] = {}
        for name in mask_names:
            parts = [list(np.asarray(p, dtype=np.float64) / scale) for p in inst["masks"].get(name) or []]
            parts = [p for p in parts if len(p) >= 6]
            obj[name] = to_rle(parts, height, width) if parts else None
        out.append(obj)
    return out


def review_image(
    image_id: str, file_name: str, labels: Objects, predictions: Objects, mask_names: Sequence[str]
) -> ImageReview:
    """Compares one image's labelled and predicted objects (see the module docstring)."""
    first = mask_names[0]
    gt = [i for i, obj in enumerate(labels) if obj.get(first) is not None]  # others: the health check's job
    dt = [i for i, obj in enumerate(predictions) if obj.get(first) is not None]
    matches: list[tuple[int, int]] = []
    if gt and dt:
        ious = mask_util.iou([predictions[d][first] for d in dt], [labels[g][first] for g in gt], [0] * len(gt))
        ious = np.asarray(ious).reshape(len(dt), len(gt))
        taken: set[int] = set()
        for di in range(len(dt)):  # best score first
            for gi in np.argsort(-ious[di], kind="stable"):
                if ious[di, gi] < MATCH_IOU:
                    break
                if gi not in taken:
                    taken.add(int(gi))
                    matches.append((dt[di], gt[gi]))
                    break
    costs: list[float] = []
    per_name: dict[str, list[float]] = {n: [] for n in mask_names}
    mismatched = 0
    for d, g in matches:
        worst, part_off = 0.0, False
        for name in mask_names:
            label, pred = labels[g].get(name), predictions[d].get(name)
            if label is None:
                continue
            iou = float(mask_util.iou([pred], [label], [0])[0][0]) if pred is not None else 0.0
            per_name[name].append(iou)
            worst = max(worst, 1.0 - iou)
            part_off |= name != first and iou < MATCH_IOU
        costs.append(worst)
        mismatched += part_off
    missing, extra = len(gt) - len(matches), len(dt) - len(matches)
    costs += [1.0] * (missing + extra)
    return ImageReview(
        image_id=image_id,
        file_name=file_name,
        score=float(np.mean(costs)) if costs else 0.0,
        labelled=len(gt),
        found=len(dt),
        missing=missing,
        extra=extra,
        mismatched=mismatched,
        iou={n: (float(np.mean(v)) if v else None) for n, v in per_name.items()},
    )


def ranked(reviews: Sequence[ImageReview]) -> list[ImageReview]:
    """Worst first; ties by more missing or extra objects, then by file name."""
    return sorted(reviews, key=lambda r: (-r.score, -(r.missing + r.extra), r.file_name))
