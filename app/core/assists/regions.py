"""Region assists that need no model weights (OpenCV and shapely): each returns editor polygon parts.

- `grabcut_object`: the object in a box or around a rough outline, refined by foreground / background clicks.
- `grabcut_part`: the part (a later mask) inside its object (the first mask), refined by clicks.
- `flood_region`: the region of similar colour around a click.
- `clip_to_object`: a part cut to its object, per the dataset's rule.

GrabCut runs on the box's neighbourhood scaled down to at most WORK_SIDE pixels a side, so its time does not grow
with the image; the mask is scaled back and traced to polygons in image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from multimask.data.geometry import mask_to_polygons, outer_rings, parts_union, polygon_parts

WORK_SIDE = 320  # px: the longer side GrabCut works at
PART_WORK_SIDE = 256  # px: the same for a part in its object (its colours overlap more: a slower cut)
MARGIN = 0.15  # share of the box added on each side as background context
OUTLINE_SLACK = 0.1  # share of a rough outline's box it may grow by on each side
CLICK_RADIUS = 4  # px in the work image: a foreground / background click marks a disc this large, and
CLICK_TOLERANCE = 10.0  # the connected region within this colour distance (per channel) of the clicked pixel
MIN_PART_AREA = 9.0  # px: smaller traced parts are dropped
EPSILON = 1.0  # px: polygon simplification of traced masks
KMEANS_SAMPLE = 8000  # object pixels the part's colour clusters are fitted on

Point = tuple[float, float]


def grabcut_object(
    image: np.ndarray,
    box: Sequence[float] | None,
    foreground: Sequence[Point] = (),
    background: Sequence[Point] = (),
    iterations: int = 4,
    outline: Sequence[Sequence[float]] = (),
) -> list[list[float]]:
    """Polygon parts of the object inside `box` (x0, y0, x1, y1 in image pixels) of a BGR or grey image, or
    around a rough `outline` (flat [x1, y1, ...] parts; the box is then theirs, OUTLINE_SLACK larger, and what
    lies outside them is probably not the object).

    A `foreground` / `background` click (image pixels) fixes its place, and the connected region of its colour
    around it (CLICK_TOLERANCE), as object or not: one click on the object around a part leaves the part. Empty
    when the box has no area or GrabCut finds nothing.
    """
    img = as_bgr(image)
    h, w = img.shape[:2]
    rings = [np.asarray(p, np.float64).reshape(-1, 2) for p in outline if len(p) >= 6]
    if rings:
        lo, hi = np.min([r.min(0) for r in rings], axis=0), np.max([r.max(0) for r in rings], axis=0)
        slack = (hi - lo) * OUTLINE_SLACK
        box = (*(lo - slack), *(hi + slack))
    if box is None:
        return []
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((min(max(x0, 0), w), min(max(x1, 0), w)))
    y0, y1 = sorted((min(max(y0, 0), h), min(max(y1, 0), h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return []
    mx, my = (x1 - x0) * MARGIN, (y1 - y0) * MARGIN
    cx0, cy0 = int(max(x0 - mx, 0)), int(max(y0 - my, 0))
    cx1, cy1 = int(min(np.ceil(x1 + mx), w)), int(min(np.ceil(y1 + my), h))
    crop = img[cy0:cy1, cx0:cx1]
    scale = min(1.0, WORK_SIDE / max(crop.shape[:2]))
    work = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else crop

    def to_work(x: float, y: float) -> tuple[int, int]:
        return int(round((x - cx0) * scale)), int(round((y - cy0) * scale))

    mask = np.full(work.shape[:2], cv2.GC_BGD, np.uint8)
    (rx0, ry0), (rx1, ry1) = to_work(x0, y0), to_work(x1, y1)
    if rings:
        mask[max(ry0, 0) : ry1, max(rx0, 0) : rx1] = cv2.GC_PR_BGD
        cv2.fillPoly(mask, [np.round((r - (cx0, cy0)) * scale).astype(np.int32) for r in rings], int(cv2.GC_PR_FGD))
    else:
        mask[max(ry0, 0) : ry1, max(rx0, 0) : rx1] = cv2.GC_PR_FGD
    _mark_clicks(work, mask, to_work, foreground, background)
    found = _grabcut(work, mask, iterations)
    if found is None:
        return []
    full = np.zeros((h, w), np.uint8)
    full[cy0:cy1, cx0:cx1] = cv2.resize(found, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_NEAREST)
    return mask_polygons(full)


def grabcut_part(
    image: np.ndarray,
    obj: Sequence[Sequence[float]],
    foreground: Sequence[Point] = (),
    background: Sequence[Point] = (),
    iterations: int = 3,
) -> list[list[float]]:
    """Polygon parts of the part inside the object `obj` (flat [x1, y1, ...] parts in image pixels).

    The object's pixels split into two colour clusters (k-means in Lab). The part is the cluster under the
    first foreground click, else the one that touches the object's outline least (a part lies inside its
    object). GrabCut then refines it with everything outside the object fixed as background, and the clicks
    fixed as in `grabcut_object`. The result never leaves the object.
    """
    img = as_bgr(image)
    h, w = img.shape[:2]
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2) - 0.5).astype(np.int32) for p in obj if len(p) >= 6]
    if not pts:
        return []
    x0, y0 = np.min([p.min(0) for p in pts], axis=0).clip(0)
    x1, y1 = np.max([p.max(0) for p in pts], axis=0) + 1
    x1, y1 = min(int(x1), w), min(int(y1), h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return []
    crop = img[y0:y1, x0:x1]
    scale = min(1.0, PART_WORK_SIDE / max(crop.shape[:2]))
    work = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    inside = np.zeros(work.shape[:2], np.uint8)
    cv2.fillPoly(inside, [np.round((p - (x0, y0)) * scale).astype(np.int32) for p in pts], 1)
    if inside.sum() < 8:
        return []

    def to_work(x: float, y: float) -> tuple[int, int]:
        return int(round((x - x0) * scale)), int(round((y - y0) * scale))

    cluster = _part_cluster(work, inside, [to_work(*p) for p in foreground[:1]])
    mask = np.full(work.shape[:2], cv2.GC_BGD, np.uint8)
    mask[inside > 0] = cv2.GC_PR_BGD
    mask[cluster > 0] = cv2.GC_PR_FGD
    _mark_clicks(work, mask, to_work, foreground, background)
    mask[inside == 0] = cv2.GC_BGD  # clicks and their regions stop at the object's outline
    found = _grabcut(work, mask, iterations)
    found = (cluster if found is None else found) & inside
    found = cv2.morphologyEx(found, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    full = np.zeros((h, w), np.uint8)
    full[y0:y1, x0:x1] = cv2.resize(found, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return mask_polygons(full)


def _part_cluster(work: np.ndarray, inside: np.ndarray, clicks: list[tuple[int, int]]) -> np.ndarray:
    """(H, W) uint8: the object's pixels of the colour cluster that is its part (see `grabcut_part`)."""
    ys, xs = np.nonzero(inside)
    lab = cv2.cvtColor(work, cv2.COLOR_BGR2LAB)[ys, xs].astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)  # the same image and clicks give the same proposal
    sample = lab[:: max(1, len(lab) // KMEANS_SAMPLE)]  # the centres from a sample, every pixel to the nearest
    _, _, centres = cv2.kmeans(sample, 2, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    labels = np.argmin(((lab[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    which = np.full(work.shape[:2], -1, np.int32)
    which[ys, xs] = labels
    click = next(((x, y) for x, y in clicks if 0 <= x < work.shape[1] and 0 <= y < work.shape[0]), None)
    if click is not None and which[click[1], click[0]] >= 0:
        chosen = int(which[click[1], click[0]])
    else:  # the cluster with the smaller share of the object's outline band
        band_width = max(1, int(round(0.04 * max(work.shape[:2]))))
        band = inside & ~cv2.erode(inside, np.ones((2 * band_width + 1,) * 2, np.uint8)).astype(bool)
        on_band = [((which == k) & band).sum() / max((which == k).sum(), 1) for k in (0, 1)]
        chosen = int(np.argmin(on_band))
    return (which == chosen).astype(np.uint8)


def _mark_clicks(work: np.ndarray, mask: np.ndarray, to_work, foreground, background) -> None:
    """Fixes each click's disc and the connected region of its colour as object (foreground) or not."""
    for points, label in ((foreground, cv2.GC_FGD), (background, cv2.GC_BGD)):
        for x, y in points:
            wx, wy = to_work(x, y)
            if 0 <= wx < work.shape[1] and 0 <= wy < work.shape[0]:
                mask[_similar(work, (wx, wy), CLICK_TOLERANCE) > 0] = label
            cv2.circle(mask, (wx, wy), CLICK_RADIUS, int(label), -1)


def _grabcut(work: np.ndarray, mask: np.ndarray, iterations: int) -> np.ndarray | None:
    """GrabCut from an initial mask: (H, W) uint8, 1 on the object; None when it cannot run (no object or no
    background pixels in the mask)."""
    is_object = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if not is_object.any() or is_object.all():
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(work, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # e.g. too few pixels of one kind to fit its colour model
        return None
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)


def flood_region(image: np.ndarray, point: Point, tolerance: float = 12.0) -> list[list[float]]:
    """Polygon parts of the region connected to `point` whose colour differs from the clicked pixel's by at
    most `tolerance` (per channel, 0-255)."""
    img = as_bgr(image)
    h, w = img.shape[:2]
    x, y = int(point[0]), int(point[1])
    if not (0 <= x < w and 0 <= y < h):
        return []
    return mask_polygons(_similar(img, (x, y), tolerance))


def _similar(img: np.ndarray, seed: tuple[int, int], tolerance: float) -> np.ndarray:
    """(H, W) uint8: 1 on the 4-connected region around `seed` within `tolerance` of its colour, per channel."""
    h, w = img.shape[:2]
    mask = np.zeros((h + 2, w + 2), np.uint8)
    tol = (float(tolerance),) * 3
    flags = 4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8)
    cv2.floodFill(img, mask, seed, (0, 0, 0), tol, tol, flags)
    return mask[1:-1, 1:-1]


def clip_to_object(part: Sequence[Sequence[float]], obj: Sequence[Sequence[float]]) -> list[list[float]]:
    """The polygon parts of `part` that lie inside `obj` (both lists of flat [x1, y1, ...] parts)."""
    if not part or not obj:
        return []
    return outer_rings(polygon_parts(parts_union(list(part)).intersection(parts_union(list(obj)))), 2)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A 3-channel uint8 image for OpenCV."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"assists need an 8-bit image, got {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img)
    raise ValueError(f"assists need a grey, BGR or BGRA image, got shape {img.shape}")


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Polygon parts (flat lists, 2 decimals) of a binary mask; small parts are dropped, holes filled."""
    parts, _ = mask_to_polygons(mask, EPSILON, MIN_PART_AREA)
    return [[round(v, 2) for v in part] for part in parts]
