"""Assist requests from the editor: checked (never trust the browser), run on a cached image, timed.

A request is a dict with a "kind" and that kind's fields, all in image pixels:

- ``{"kind": "grabcut", "box": [x0, y0, x1, y1], "foreground": [[x, y], ...], "background": [...]}``, or with
  ``"outline": [[x1, y1, ...], ...]`` (a rough outline) instead of the box
- ``{"kind": "part", "object": [[x1, y1, ...], ...], "foreground": [...], "background": [...]}``
- ``{"kind": "flood", "point": [x, y], "tolerance": 0-255}``
- ``{"kind": "lasso", "start": [x, y], "end": [x, y]}``
- ``{"kind": "clip", "part": [[x1, y1, ...], ...], "object": [...]}``
- ``{"kind": "sam", "foreground": [...], "background": [...], "box": [x0, y0, x1, y1] (optional)}``: only when
  a SAM model is loaded (`sam.SamAssist`)

Any kind but lasso may carry ``"within": [[x1, y1, ...], ...]``: the result is clipped to those parts (a
second mask drawn where the dataset's rule keeps it inside its object). The reply is ``{"ok": True, "parts":
[[x1, y1, ...], ...], "seconds": float}`` (lasso: ``"points": [[x, y], ...]`` instead of parts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from multimask.data.images import read_image_bgr

from ..datasets.payload import MAX_PARTS, PayloadError, check_polygon
from ..lru import LruCache
from .lasso import lasso_path
from .regions import clip_to_object, flood_region, grabcut_object, grabcut_part
from .sam import INSTALL_NOTE, SamAssist

KINDS = ("grabcut", "part", "flood", "lasso", "clip", "sam")
MAX_CLICKS = 50  # foreground or background clicks per request
CACHED_IMAGES = 4  # decoded images kept: a few annotators on a few images each


class AssistError(ValueError):
    """A request the assists cannot run; the message names what is wrong."""


class ImageCache:
    """Decoded images by file version (path, mtime, size); the least recently used go first."""

    def __init__(self, size: int = CACHED_IMAGES):
        self._images: LruCache[np.ndarray] = LruCache(size)

    def get(self, path: Path) -> tuple[tuple, np.ndarray]:
        """(a key that changes with the file, its BGR pixels)."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        image = self._images.get(key)
        if image is None:
            image = read_image_bgr(path, max_pixels=None)  # an image of the dataset: it was checked on intake
            self._images.put(key, image)
        return key, image


class AssistService:
    """Runs checked assist requests on dataset images (see the module docstring)."""

    def __init__(self, cache: ImageCache | None = None, sam: SamAssist | None = None):
        self.images = cache or ImageCache()
        self.sam = sam  # Segment-Anything, when the user has loaded a checkpoint
        self.sam_note = INSTALL_NOTE  # what the "sam" kind answers while `sam` is None

    def run(self, image_path: Path, request: Any) -> dict:
        """The reply to `request` on the image at `image_path`; AssistError naming a bad field."""
        t0 = time.perf_counter()
        if not isinstance(request, dict):
            raise AssistError(f"an assist request must be an object, got {type(request).__name__}")
        kind = request.get("kind")
        if kind not in KINDS:
            raise AssistError(f"unknown assist {str(kind)[:40]!r} (known: {', '.join(KINDS)})")
        if kind == "sam" and self.sam is None:
            raise AssistError(self.sam_note)
        key, image = self.images.get(image_path)
        h, w = image.shape[:2]
        fields = _Fields(request, w, h)
        if kind == "lasso":
            points = lasso_path(image, fields.point("start"), fields.point("end"))
            return {"ok": True, "points": points, "seconds": round(time.perf_counter() - t0, 4)}
        runners: dict[str, Callable[[], list[list[float]]]] = {
            "grabcut": lambda: grabcut_object(
                image,
                fields.box("box") if not request.get("outline") else None,
                fields.points("foreground"),
                fields.points("background"),
                outline=fields.parts("outline"),
            ),
            "part": lambda: grabcut_part(
                image, fields.parts("object", required=True), fields.points("foreground"), fields.points("background")
            ),
            "flood": lambda: flood_region(image, fields.point("point"), fields.number("tolerance", 0, 255, 12)),
            "clip": lambda: clip_to_object(fields.parts("part", required=True), fields.parts("object", required=True)),
            "sam": lambda: self.sam.segment(
                key,
                image,
                fields.points("foreground"),
                fields.points("background"),
                fields.box("box") if request.get("box") is not None else None,
            ),
        }
        parts = runners[kind]()
        within = fields.parts("within")
        if within and parts:
            parts = clip_to_object(parts, within)
        return {"ok": True, "parts": parts, "seconds": round(time.perf_counter() - t0, 4)}


class _Fields:
    """Typed reads of a request's fields, each checked against the image's size."""

    def __init__(self, request: dict, width: int, height: int):
        self.request, self.width, self.height = request, width, height

    def point(self, name: str, value: Any = None) -> tuple[float, float]:
        value = self.request.get(name) if value is None else value
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
            raise AssistError(f"{name} must be a point [x, y], got {str(value)[:60]}")
        x, y = float(value[0]), float(value[1])
        if not (np.isfinite(x) and np.isfinite(y) and -1 <= x <= self.width + 1 and -1 <= y <= self.height + 1):
            raise AssistError(f"{name} ({x:g}, {y:g}) is outside the {self.width}x{self.height} image")
        return min(max(x, 0.0), float(self.width)), min(max(y, 0.0), float(self.height))

    def points(self, name: str) -> list[tuple[float, float]]:
        value = self.request.get(name, [])
        if not isinstance(value, list) or len(value) > MAX_CLICKS:
            raise AssistError(f"{name} must be a list of at most {MAX_CLICKS} points [x, y]")
        return [self.point(f"{name}[{i}]", v) for i, v in enumerate(value)]

    def box(self, name: str) -> tuple[float, float, float, float]:
        value = self.request.get(name)
        if not (isinstance(value, list) and len(value) == 4):
            raise AssistError(f"{name} must be [x0, y0, x1, y1], got {str(value)[:60]}")
        (x0, y0), (x1, y1) = self.point(name, value[:2]), self.point(name, value[2:])
        return x0, y0, x1, y1

    def number(self, name: str, low: float, high: float, default: float) -> float:
        value = self.request.get(name, default)
        if not _is_number(value) or not low <= float(value) <= high:
            raise AssistError(f"{name} must be a number from {low:g} to {high:g}, got {str(value)[:40]}")
        return float(value)

    def parts(self, name: str, required: bool = False) -> list[list[float]]:
        value = self.request.get(name, [])
        if not isinstance(value, list) or len(value) > MAX_PARTS or (required and not value):
            need = "one or more" if required else "at most"
            raise AssistError(f"{name} must be a list of {need} {MAX_PARTS} polygons [x1, y1, ...]")
        try:
            return [check_polygon(p, self.width, self.height, f"{name}, part {j + 1}") for j, p in enumerate(value)]
        except PayloadError as e:
            raise AssistError(str(e)) from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
