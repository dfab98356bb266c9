"""The magnetic lasso: a path between two clicks that follows the image's edges (OpenCV's IntelligentScissorsMB).

Each segment is computed on the two clicks' neighbourhood only, scaled to at most WORK_SIDE pixels a side, so
a request costs the same on any image size.
"""

from __future__ import annotations

import cv2
import numpy as np

from .regions import Point, as_bgr

WORK_SIDE = 400  # px: the longer side of the neighbourhood the path is searched in
MARGIN = 0.35  # of the clicks' distance, added around them (at least MIN_MARGIN px)
MIN_MARGIN = 24
EPSILON = 0.8  # px in the work image: simplification of the path


def lasso_path(image: np.ndarray, start: Point, end: Point) -> list[list[float]]:
    """Points [[x, y], ...] from just after `start` to `end` (image pixels) along the strongest edges."""
    img = as_bgr(image)
    h, w = img.shape[:2]
    (sx, sy), (ex, ey) = (_clamped(p, w, h) for p in (start, end))
    margin = max(MIN_MARGIN, MARGIN * float(np.hypot(ex - sx, ey - sy)))
    x0, y0 = int(max(min(sx, ex) - margin, 0)), int(max(min(sy, ey) - margin, 0))
    x1, y1 = int(min(np.ceil(max(sx, ex) + margin), w)), int(min(np.ceil(max(sy, ey) + margin), h))
    crop = img[y0:y1, x0:x1]
    scale = min(1.0, WORK_SIDE / max(crop.shape[:2]))
    work = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    wh, ww = work.shape[:2]

    def to_work(x: float, y: float) -> tuple[int, int]:
        return min(int((x - x0) * scale), ww - 1), min(int((y - y0) * scale), wh - 1)

    a, b = to_work(sx, sy), to_work(ex, ey)
    if a == b:
        return [[round(ex, 2), round(ey, 2)]]
    scissors = cv2.segmentation.IntelligentScissorsMB()
    scissors.setEdgeFeatureCannyParameters(32, 100)
    scissors.setGradientMagnitudeMaxLimit(200)
    scissors.applyImage(work)
    scissors.buildMap(a)
    path = scissors.getContour(b).reshape(-1, 1, 2).astype(np.float32)
    path = cv2.approxPolyDP(path, EPSILON, False).reshape(-1, 2)
    points = [[round(float(x) / scale + x0, 2), round(float(y) / scale + y0, 2)] for x, y in path[1:-1]]
    return points + [[round(ex, 2), round(ey, 2)]]


def _clamped(p: Point, w: int, h: int) -> tuple[float, float]:
    return min(max(float(p[0]), 0.0), w - 1.0), min(max(float(p[1]), 0.0), h - 1.0)
