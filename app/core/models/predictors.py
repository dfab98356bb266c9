"""Predictions of trained runs: loaded predictors cached per run weights, and a model's detections on one image kept
compact (`RawPrediction`) so that views can re-filter and redraw them without running the model again."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .runs import RunInfo

logger = logging.getLogger(__name__)

RAW_SCORE_THRESHOLD = 0.05  # detections below this are never kept, whatever the slider says
# Larger images are shrunk to this longer side (or the model's own test size, if larger) before the model runs:
# it resizes its input to that size anyway, and its (detections x masks x H x W) output at a photo's full size
# could take gigabytes. Boxes and areas in the table are given in the original image's pixels.
PREDICT_MAX_SIDE = 1600


@dataclass
class RawPrediction:
    """A model's detections on one image at RAW_SCORE_THRESHOLD, by decreasing score.

    Masks are kept cropped to their extent (`crops[i]` is (K, h, w) bool at `origins[i]` = (x, y)) so that a
    session's state stays small on large images.
    """

    run_name: str
    run_key: tuple
    source: str  # digest of the uploaded image, to reuse the prediction while it is unchanged
    scale: float  # pixels of the uploaded image per pixel of `image` (1.0 unless it was shrunk)
    image: np.ndarray  # RGB uint8 (H, W, 3), what the model saw and the overlay shows
    boxes: np.ndarray  # (N, 4) float32 XYXY
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64
    origins: np.ndarray  # (N, 2) int64
    crops: list[np.ndarray]
    areas: np.ndarray  # (N, K) int64 pixel count per mask
    mask_names: list[str]
    class_names: list[str]
    source_size: tuple[int, int] = (0, 0)  # (H, W) of the uploaded image
    file_name: str = "image"  # the uploaded file's name, for the downloads
    highlight: int | None = None  # the detection drawn highlighted (a click on its table row)
    rendered: tuple | None = None  # (threshold, mask names, highlight) of the overlay last sent for it
    overlay: np.ndarray | None = None  # that overlay
    exported: tuple | None = None  # the `rendered` key of the downloads last written

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_instances(
        cls,
        instances,
        image: np.ndarray,
        run_name: str,
        run_key: tuple,
        mask_names: Sequence[str],
        class_names: Sequence[str],
        *,
        source: str = "",
        scale: float = 1.0,
        source_size: tuple[int, int] | None = None,
    ) -> RawPrediction:
        """Convert a predictor's output Instances (on any device) for `image`, which shows the upload (of size
        `source_size`, default the image's own) shrunk by `scale`."""
        instances = instances.to("cpu")
        h, w = image.shape[:2]
        k = len(mask_names)
        scores = instances.scores.numpy().astype(np.float32)
        if instances.has("pred_multimask"):
            masks = instances.pred_multimask.numpy()
        else:
            masks = np.zeros((len(scores), k, h, w), dtype=bool)
        order = np.argsort(-scores, kind="stable")
        origins, crops = np.zeros((len(order), 2), dtype=np.int64), []
        for j, i in enumerate(order):
            m = masks[i]
            ys, xs = np.flatnonzero(m.any(axis=(0, 2))), np.flatnonzero(m.any(axis=(0, 1)))
            if ys.size == 0:
                crops.append(np.zeros((k, 0, 0), dtype=bool))
                continue
            origins[j] = xs[0], ys[0]
            crops.append(m[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].copy())
        areas = np.array([c.sum(axis=(1, 2)) for c in crops], dtype=np.int64).reshape(len(crops), k)
        return cls(
            run_name=run_name,
            run_key=tuple(run_key),
            source=source,
            scale=float(scale),
            image=image,
            boxes=instances.pred_boxes.tensor.numpy().astype(np.float32)[order].reshape(-1, 4),
            scores=scores[order],
            classes=instances.pred_classes.numpy().astype(np.int64)[order],
            origins=origins,
            crops=crops,
            areas=areas,
            mask_names=list(mask_names),
            class_names=list(class_names),
            source_size=tuple(source_size or (h, w)),
        )

    def class_name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)

    def full_masks(self, indices: Sequence[int], mask_indices: Sequence[int]) -> np.ndarray:
        """(len(indices), K, H, W) bool masks; only `mask_indices` are filled, the others stay empty."""
        h, w = self.image.shape[:2]
        out = np.zeros((len(indices), len(self.mask_names), h, w), dtype=bool)
        for j, i in enumerate(indices):
            x, y = self.origins[i]
            crop = self.crops[i]
            for k in mask_indices:
                out[j, k, y : y + crop.shape[1], x : x + crop.shape[2]] = crop[k]
        return out


class PredictorCache:
    """Loaded predictors keyed by run weights (path and mtime), least recently used dropped past `max_size`."""

    def __init__(self, max_size: int = 2, device: str | None = None):
        self.max_size = max_size
        self.device = device
        self.loads = 0  # how many models were loaded (for tests and logs)
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.inference_lock = threading.Lock()  # one forward pass at a time on the shared models

    def get(self, run: RunInfo):
        """The predictor of `run`, loaded on first use (cuda when available, else cpu)."""
        from multimask.config import default_device
        from multimask.engine import MultiMaskPredictor

        with self._lock:
            if run.key in self._items:
                self._items.move_to_end(run.key)
                return self._items[run.key]
            logger.info("loading run %s (%s)", run.name, run.weights)
            predictor = MultiMaskPredictor.from_run(
                run.path,
                score_threshold=RAW_SCORE_THRESHOLD,
                device=self.device or default_device(),
                weights=run.weights,
            )
            self.loads += 1
            self._items[run.key] = predictor
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
            return predictor


def image_digest(rgb: np.ndarray) -> str:
    return f"{rgb.shape}:{hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest()}"


def run_model(
    predictor, rgb: np.ndarray, run: RunInfo, lock: threading.Lock | None = None, *, source: str | None = None
) -> RawPrediction:
    """Detections of `predictor` on an RGB uint8 image, at the predictor's (raw) score threshold; an image
    whose longer side exceeds PREDICT_MAX_SIDE (or the model's INPUT.MAX_SIZE_TEST) is shrunk first. `source`:
    the image's `image_digest`, when the caller has it already."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(h, w) / max(PREDICT_MAX_SIDE, int(predictor.cfg.INPUT.MAX_SIZE_TEST))
    shown = rgb
    if scale > 1:
        shown = cv2.resize(rgb, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA)
        scale = w / shown.shape[1]
    else:
        scale = 1.0
    bgr = np.ascontiguousarray(shown[:, :, ::-1])
    with lock or contextlib.nullcontext():
        instances = predictor(bgr)["instances"]
    return RawPrediction.from_instances(
        instances,
        shown,
        run.name,
        run.key,
        predictor.mask_names,
        predictor.metadata.thing_classes,
        source=source or image_digest(rgb),
        scale=scale,
        source_size=(h, w),
    )
