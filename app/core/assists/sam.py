"""Segment-Anything as an assist, when the user has it: the `segment-anything` package and a checkpoint file.

Nothing is downloaded. The checkpoint is read as weights only (`torch.load(weights_only=True)`: no pickled code
runs), its model size (vit_b / vit_l / vit_h) told by its patch embedding. An image's embedding is computed
once and kept (the last CACHED_EMBEDDINGS images); each prompt (include / exclude clicks, a box) is decoded
alone, which takes tens of milliseconds on a CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..lru import LruCache
from .regions import Point, as_bgr, mask_polygons

INSTALL_NOTE = (
    "Segment-Anything needs the segment-anything package (pip install segment-anything) and a checkpoint file "
    "of yours, e.g. sam_vit_b_01ec64.pth from https://github.com/facebookresearch/segment-anything#model-checkpoints"
    ": start the app with --sam-checkpoint PATH, or load it under 'Model-assisted labelling'."
)
EMBED_DIMS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}  # patch embedding width -> model size
CACHED_EMBEDDINGS = 4


class SamUnavailable(ValueError):
    """SAM cannot be used; the message says what to install or where to put the file."""


def sam_package() -> Any:
    """The `segment_anything` module; SamUnavailable saying how to install it when it is missing."""
    try:
        import segment_anything
    except ImportError:
        raise SamUnavailable(INSTALL_NOTE) from None
    return segment_anything


class SamAssist:
    """Prompts decoded by a SAM model on cached image embeddings."""

    def __init__(self, model: Any, name: str = "SAM"):
        self.predictor = sam_package().SamPredictor(model.eval())
        self.name = name
        self.embeddings = 0  # how many image embeddings were computed (for tests and logs)
        self._cache: LruCache[tuple] = LruCache(CACHED_EMBEDDINGS)
        self._lock = threading.Lock()  # one image in the predictor at a time

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> SamAssist:
        """The model of a SAM checkpoint file; SamUnavailable naming what is wrong with it."""
        import torch

        package = sam_package()
        path = Path(path).expanduser()
        if not path.is_file():
            raise SamUnavailable(f"no SAM checkpoint at {path}. {INSTALL_NOTE}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (any unreadable file: said plainly)
            raise SamUnavailable(f"{path} is not a readable weights file ({type(e).__name__}: {e})") from None
        weight = state.get("image_encoder.patch_embed.proj.weight") if isinstance(state, dict) else None
        kind = EMBED_DIMS.get(int(weight.shape[0])) if weight is not None else None
        if kind is None:
            raise SamUnavailable(f"{path} is not a Segment-Anything checkpoint (vit_b, vit_l or vit_h)")
        model = package.sam_model_registry[kind](checkpoint=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise SamUnavailable(f"{path} does not fit SAM {kind}: {str(e)[:300]}") from None
        return cls(model.to(device), name=f"SAM {kind} ({path.name})")

    def segment(
        self,
        image_key: Any,
        image: np.ndarray,
        foreground: Sequence[Point] = (),
        background: Sequence[Point] = (),
        box: Sequence[float] | None = None,
    ) -> list[list[float]]:
        """Polygon parts of the best of SAM's masks for the prompts, on a BGR image known by `image_key` (its
        embedding is computed on first use)."""
        import torch

        points = [*foreground, *background]
        if not points and box is None:
            return []
        with self._lock, torch.inference_mode():
            self._load(image_key, image)
            masks, scores, _ = self.predictor.predict(
                point_coords=np.asarray(points, np.float32).reshape(-1, 2) if points else None,
                point_labels=np.asarray([1] * len(foreground) + [0] * len(background)) if points else None,
                box=np.asarray(box, np.float32) if box is not None else None,
                multimask_output=len(points) == 1 and box is None,  # one click is ambiguous: the best of three
            )
        return mask_polygons(masks[int(np.argmax(scores))].astype(np.uint8))

    def _load(self, key: Any, image: np.ndarray) -> None:
        """Puts the image's embedding in the predictor: from the cache, else computed and cached."""
        p = self.predictor
        hit = self._cache.get(key)
        if hit is None:
            p.set_image(np.ascontiguousarray(as_bgr(image)[:, :, ::-1]))  # SAM takes RGB
            self.embeddings += 1
            hit = (p.features, p.original_size, p.input_size)
            self._cache.put(key, hit)
        p.features, p.original_size, p.input_size = hit
        p.is_image_set = True
