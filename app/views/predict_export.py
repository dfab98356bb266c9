"""The Predict tab's downloads: the predictions JSON (as `multimask predict` writes it, in the uploaded image's
pixels) and the overlay PNG, written to a temporary folder of the browser session."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..core.models.predictors import RawPrediction

FOLDER_PREFIX = "multimask-predict-"


def session_folder(folder: str | None) -> Path:
    """The session's download folder: `folder` when it is one this module made and still exists, else a new
    one (the value comes back from the session state, never from the browser)."""
    if folder and _is_ours(Path(folder)) and Path(folder).is_dir():
        return Path(folder)
    return Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))


def remove_folder(folder: str | None) -> None:
    """Delete a session's download folder (the session state's delete callback)."""
    if folder and _is_ours(Path(folder)):
        shutil.rmtree(folder, ignore_errors=True)


def _is_ours(folder: Path) -> bool:
    """A folder named as this module names them, directly in the temporary folder (links resolved), not a link."""
    return (
        folder.name.startswith(FOLDER_PREFIX)
        and not folder.is_symlink()
        and folder.resolve().parent == Path(tempfile.gettempdir()).resolve()
    )


def file_stem(name: str | None) -> str:
    """A safe file name stem from an uploaded file's name ("image" when there is none)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(name or "").stem).strip("._")[:80]
    return stem or "image"


def upload_masks(raw: RawPrediction, i: int) -> np.ndarray:
    """(K, H, W) bool masks of detection `i` at the uploaded image's size (the model may have seen it shrunk)."""
    import cv2

    height, width = raw.source_size
    out = np.zeros((len(raw.mask_names), height, width), dtype=bool)
    crop = raw.crops[i]
    if crop.size == 0:
        return out
    sx, sy = width / raw.image.shape[1], height / raw.image.shape[0]
    (x, y), (h, w) = raw.origins[i], crop.shape[1:]
    x0, y0, x1, y1 = round(x * sx), round(y * sy), round((x + w) * sx), round((y + h) * sy)
    for k, m in enumerate(crop):
        if (x1 - x0, y1 - y0) != (w, h):  # linear interpolation of the 0/1 mask, cut at one half
            m = cv2.resize(m.astype(np.uint8) * 255, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) >= 128
        out[k, y0:y1, x0:x1] = m
    return out


def predictions_json(raw: RawPrediction, keep: Sequence[int], overlay_name: str | None = None) -> dict:
    """The predictions JSON of the detections `keep`, in the uploaded image's pixels."""
    import torch
    from detectron2.structures import Boxes, Instances

    from multimask.engine.prediction_io import image_entry, prediction_records, predictions_document

    height, width = raw.source_size
    sx, sy = width / raw.image.shape[1], height / raw.image.shape[0]
    records = []
    for i in keep:  # one instance at a time: all masks at a photo's full size at once could take gigabytes
        box = torch.from_numpy(raw.boxes[i : i + 1] * np.array([sx, sy, sx, sy], dtype=np.float32))
        one = Instances(
            (height, width),
            pred_boxes=Boxes(box),
            scores=torch.from_numpy(raw.scores[i : i + 1]),
            pred_classes=torch.from_numpy(raw.classes[i : i + 1]),
            pred_multimask=torch.from_numpy(upload_masks(raw, i)[None]),
        )
        records += prediction_records(one, raw.file_name, raw.mask_names, raw.class_names)
    image = image_entry(raw.file_name, height, width, records, overlay_name)
    return predictions_document([image], raw.mask_names, raw.class_names)


def write_downloads(raw: RawPrediction, keep: Sequence[int], overlay: np.ndarray, folder: Path) -> tuple[Path, Path]:
    """Write `<stem>_predictions.json` and `<stem>_overlay.png` to `folder`; returns their paths."""
    import cv2

    from multimask.io import atomic_write_bytes, atomic_write_json

    stem = file_stem(raw.file_name)
    png, doc = folder / f"{stem}_overlay.png", folder / f"{stem}_predictions.json"
    ok, data = cv2.imencode(".png", np.ascontiguousarray(overlay[:, :, ::-1]))
    if not ok:
        raise ValueError("the overlay could not be encoded as PNG")
    atomic_write_bytes(png, data.tobytes())
    atomic_write_json(doc, predictions_json(raw, keep, png.name))
    return doc, png
