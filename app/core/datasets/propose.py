"""Model-assisted labelling: a trained run's predictions on an image, as editable polygon instances."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence

import numpy as np

from multimask.data.geometry import mask_to_polygons, polygon_iou

PROPOSAL_EPSILON = 1.0  # px: polygon simplification tolerance (cv2.approxPolyDP)
MIN_PART_AREA = 12.0  # px: smaller specks of a predicted mask are not proposed
SAME_OBJECT_IOU = 0.5  # a proposal whose first mask overlaps an instance of the image this much is left out


def class_mapping(model_classes: Sequence[str], dataset_classes: Sequence[str]) -> dict[str, str]:
    """The dataset class of each model class with the same name (exact, else ignoring case); others are absent."""
    folded = {c.casefold(): c for c in reversed(dataset_classes)}
    out = {}
    for c in model_classes:
        if c in dataset_classes:
            out[c] = c
        elif c.casefold() in folded:
            out[c] = folded[c.casefold()]
    return out


def masks_to_instances(
    masks: np.ndarray,
    classes: Sequence[int],
    class_names: Sequence[str],
    mask_names: Sequence[str],
    dataset_mask_names: Sequence[str],
    dataset_classes: Sequence[str],
) -> list[dict]:
    """Editor instances from predicted (N, K, H, W) bool masks.

    Mask names the dataset does not have are dropped. A predicted class takes the dataset's class of the same
    name; one the dataset does not have keeps the model's name (the editor gives it the toolbar's class and
    `propose` says so). Instances left without any polygon are not proposed.
    """
    mapping = class_mapping(class_names, dataset_classes)
    out = []
    for i in range(len(masks)):
        polys = {}
        for k, name in enumerate(mask_names):
            if name in dataset_mask_names:
                polys[name], _ = mask_to_polygons(masks[i, k], PROPOSAL_EPSILON, MIN_PART_AREA)
        if not any(polys.values()):
            continue
        cls = class_names[classes[i]] if classes[i] < len(class_names) else f"class {classes[i]}"
        out.append(
            {
                "id": f"p{uuid.uuid4().hex[:10]}",
                "class": mapping.get(cls, cls),
                "masks": {n: polys.get(n, []) for n in dataset_mask_names},
            }
        )
    return out


def new_objects(proposals: list[dict], existing: list[dict], mask_name: str) -> list[dict]:
    """The proposals whose `mask_name` mask overlaps no existing instance's by SAME_OBJECT_IOU or more."""
    return [
        p
        for p in proposals
        if not any(
            polygon_iou(p["masks"][mask_name], e["masks"].get(mask_name, [])) >= SAME_OBJECT_IOU for e in existing
        )
    ]


def propose(
    predictor,
    bgr: np.ndarray,
    score_threshold: float,
    dataset_mask_names: Sequence[str],
    dataset_classes: Sequence[str],
    existing: list[dict] = (),
    lock=None,
) -> tuple[list[dict], list[str]]:
    """Run `predictor` on a BGR image: (new instances scoring at least `score_threshold`, notes for the user).

    Objects the image already has (`existing` instances, e.g. an earlier proposal) are left out; the notes
    say how many, which of the model's classes the dataset does not have, and, when every detection scored
    under the threshold, the best score.
    """
    if lock is not None:
        with lock:
            inst = predictor(bgr)["instances"].to("cpu")
    else:
        inst = predictor(bgr)["instances"].to("cpu")
    keep = (inst.scores >= score_threshold).nonzero().flatten()
    best = float(inst.scores.max()) if len(inst) else None
    inst = inst[keep]
    if not len(inst) and best is not None:
        return [], [
            f"its best detection scored {best:.2f}, under the threshold of {score_threshold:.2f}: lower "
            "the score threshold under 'Model-assisted labelling' (or train longer)"
        ]
    found = masks_to_instances(
        inst.pred_multimask.numpy(),
        inst.pred_classes.tolist(),
        predictor.metadata.thing_classes,
        predictor.mask_names,
        dataset_mask_names,
        dataset_classes,
    )
    fresh = new_objects(found, list(existing), dataset_mask_names[0])
    notes = []
    if len(found) < len(inst):
        notes.append(
            f"{len(inst) - len(found)} detection(s) above the threshold had no mask of this dataset's "
            "mask names with any area"
        )
    if len(fresh) < len(found):
        notes.append(f"{len(found) - len(fresh)} already on the image left out")
    unknown = Counter(p["class"] for p in fresh if p["class"] not in dataset_classes)
    for cls, n in sorted(unknown.items()):
        notes.append(
            f"the model's class {cls!r} is not a class of this dataset: its {n} instance(s) take the toolbar's class"
        )
    return fresh, notes
