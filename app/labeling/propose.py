"""Model-assisted labelling: a trained run's predictions on an image, as editable polygon instances."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np

from multimask.data.geometry import mask_to_polygons

PROPOSAL_EPSILON = 1.0  # px: polygon simplification tolerance (cv2.approxPolyDP)
MIN_PART_AREA = 12.0  # px: smaller specks of a predicted mask are not proposed


def masks_to_instances(masks: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
                       mask_names: Sequence[str], dataset_mask_names: Sequence[str],
                       dataset_classes: Sequence[str]) -> list[dict]:
    """Editor instances from predicted (N, K, H, W) bool masks.

    Mask names the dataset does not have are dropped; a predicted class the dataset does not know takes the
    dataset's first class (the user re-labels it). Instances left without any polygon are not proposed.
    """
    out = []
    for i in range(len(masks)):
        polys = {}
        for k, name in enumerate(mask_names):
            if name in dataset_mask_names:
                polys[name], _ = mask_to_polygons(masks[i, k], PROPOSAL_EPSILON, MIN_PART_AREA)
        if not any(polys.values()):
            continue
        cls = class_names[classes[i]] if classes[i] < len(class_names) else ""
        out.append({"id": f"p{uuid.uuid4().hex[:10]}", "class": cls if cls in dataset_classes else dataset_classes[0],
                    "masks": {n: polys.get(n, []) for n in dataset_mask_names}})
    return out


def propose(predictor, bgr: np.ndarray, score_threshold: float, dataset_mask_names: Sequence[str],
            dataset_classes: Sequence[str], lock=None) -> list[dict]:
    """Run `predictor` on a BGR image; instances scoring at least `score_threshold`, as editor instances."""
    if lock is not None:
        with lock:
            inst = predictor(bgr)["instances"].to("cpu")
    else:
        inst = predictor(bgr)["instances"].to("cpu")
    keep = (inst.scores >= score_threshold).nonzero().flatten()
    inst = inst[keep]
    return masks_to_instances(inst.pred_multimask.numpy(), inst.pred_classes.tolist(),
                              predictor.metadata.thing_classes, predictor.mask_names, dataset_mask_names,
                              dataset_classes)
