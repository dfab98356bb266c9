"""The Predict tab's overlay and instance table for a prediction's detections above a score threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..core.models.predictors import RawPrediction

BASE_COLUMNS = ["#", "class", "score", "x0", "y0", "x1", "y1"]
# A small image is drawn this many times larger (nearest-neighbour pixels) that its longer side reaches
# DISPLAY_SIDE, so that the overlay's outlines and labels stay legible and it fills the view.
DISPLAY_SIDE = 960


def table_columns(mask_names: Sequence[str]) -> list[str]:
    """Instance table columns: number, class, score, box, then the pixel area of each mask."""
    return BASE_COLUMNS + [f"{name} area" for name in mask_names]


def empty_table(mask_names: Sequence[str] = ()) -> pd.DataFrame:
    return pd.DataFrame(columns=table_columns(mask_names))


def select(raw: RawPrediction, threshold: float) -> np.ndarray:
    """Indices of the detections with score >= threshold (in decreasing score order: always 0..n-1)."""
    return np.flatnonzero(raw.scores >= threshold)


def instance_number(j: int) -> int:
    """The "#" of the j-th detection (by decreasing score) in the table and on the overlay: from 1, as in the
    Label tab's instance list."""
    return j + 1


def instance_table(raw: RawPrediction, keep: Sequence[int]) -> pd.DataFrame:
    """One row per kept detection, box and mask areas in the uploaded image's pixels."""
    rows = []
    for j, i in enumerate(keep):
        box = [round(float(v) * raw.scale) for v in raw.boxes[i]]
        rows.append(
            [
                instance_number(j),
                raw.class_name(int(raw.classes[i])),
                round(float(raw.scores[i]), 3),
                *box,
                *(round(int(a) * raw.scale**2) for a in raw.areas[i]),
            ]
        )
    return pd.DataFrame(rows, columns=table_columns(raw.mask_names))


def display_scale(height: int, width: int) -> int:
    """How many times larger than the image its overlay is drawn: 1, or more for a small image."""
    return max(1, DISPLAY_SIDE // max(height, width, 1))


def render(
    raw: RawPrediction, threshold: float, visible: Sequence[str] | None, highlight: int | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """The overlay (RGB, `display_scale` times the image's size) and the instance table for the detections above
    `threshold`; `visible` names the mask layers to draw (None: all; unknown names are ignored); `highlight`, a
    detection's index, is drawn with its box and label and the others faded (when it is above `threshold`)."""
    import cv2

    from multimask.visualizer import MultiMaskVisualizer

    keep = select(raw, threshold)
    wanted = set(raw.mask_names if visible is None else [visible] if isinstance(visible, str) else visible)
    shown = [n for n in raw.mask_names if n in wanted]
    masks = raw.full_masks(keep, [raw.mask_names.index(n) for n in shown])
    labels = [
        f"#{instance_number(j)} {raw.class_name(int(raw.classes[i]))} {raw.scores[i]:.0%}" for j, i in enumerate(keep)
    ]
    h, w = raw.image.shape[:2]
    scale = display_scale(h, w)
    vis = MultiMaskVisualizer(raw.image, None, scale=scale)
    vis.draw_multimask(
        masks,
        raw.mask_names,
        boxes=raw.boxes[keep],
        labels=labels,
        visible=shown,
        highlight=highlight if highlight is not None and highlight < len(keep) else None,
    )
    overlay = vis.output.get_image()
    if overlay.shape[:2] != (h * scale, w * scale):  # matplotlib can round the canvas size by a pixel
        overlay = cv2.resize(overlay, (w * scale, h * scale), interpolation=cv2.INTER_AREA)
    return overlay, instance_table(raw, keep)
