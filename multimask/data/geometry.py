"""Checks, repairs and measures of segmentations (COCO polygons or RLE) and of labelled instances, with shapely,
pycocotools and OpenCV."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

RASTER_REPAIR_POINTS = 64  # invalid parts with more points are repaired on the pixel grid (see made_valid)
RASTER_REPAIR_PIXELS = 2**26  # the largest box (64 MP) filled for that
CONTOUR_EPSILON = 0.7  # px, cv2.approxPolyDP tolerance when an RLE mask is traced to polygons
INSIDE_TOLERANCE = 0.01  # share of a secondary's area that may lie outside its primary
MAX_WARNINGS = 20  # instance warnings listed at once: each may cost a polygon repair, so the rest go unchecked
# Crossing parts of up to this many points are repaired to tell "no area" from "crosses itself" (20 ms at most);
# a repair takes seconds for a few hundred random points, so larger ones are told apart by their signed area.
EXACT_REPAIR_POINTS = 32


@dataclass
class Report:
    """What loading or importing repaired or skipped, counted by kind, with one message per event."""

    counts: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def add(self, kind: str, where: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.messages.append(f"{where}: {detail}")

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self, max_messages: int = 20) -> str:
        if not self.counts:
            return "no problems found"
        head = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        lines = self.messages[:max_messages]
        more = len(self.messages) - len(lines)
        return "\n".join([head, *lines] + ([f"... and {more} more"] if more > 0 else []))


def clean_polygons(parts: Any, height: int, width: int, where: str, report: Report) -> list[list[float]]:
    """Valid polygon parts inside the image: bad parts skipped, self-intersections repaired, clipped.

    Each event is recorded in `report` with `where` (file and annotation). Holes cannot be expressed by
    COCO polygons; a repair that would create one keeps the outer ring and says so.
    """
    if not isinstance(parts, list):
        report.add("skipped masks", where, f"polygons must be a list of lists, got {type(parts).__name__}")
        return []
    frame = box(0, 0, width, height)
    out: list[list[float]] = []
    for i, part in enumerate(parts):
        here = f"{where} part {i}"
        if not isinstance(part, (list, tuple)) or not all(isinstance(v, (int, float)) for v in part):
            report.add("skipped polygons", here, "not a flat list of numbers")
            continue
        if len(part) % 2:
            report.add("skipped polygons", here, f"odd number of coordinates ({len(part)})")
            continue
        if not all(math.isfinite(v) for v in part):
            report.add("skipped polygons", here, "non-finite coordinate")
            continue
        if len(part) < 6:
            report.add("skipped polygons", here, f"fewer than 3 points ({len(part) // 2})")
            continue
        pts = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        poly = Polygon(pts)
        geom = poly
        if not poly.is_valid:
            geom = made_valid(poly)
            report.add("repaired polygons", here, f"invalid polygon repaired ({shapely.is_valid_reason(poly)})")
        if not frame.contains(geom):
            geom = geom.intersection(frame)
            report.add("clipped polygons", here, "coordinates outside the image clipped to it")
        rings = polygon_parts(geom)
        if not rings:
            report.add("skipped polygons", here, "no area left after repair")
            continue
        if any(len(p.interiors) for p in rings):
            report.add("repaired polygons", here, "a hole appeared; polygons keep the outer ring only")
        out += outer_rings(rings, 3)
    return out


def flat_polygon(part: Any) -> Polygon:
    """A shapely polygon from a flat [x1, y1, x2, y2, ...] part, made valid when it crosses itself."""
    geom = Polygon(np.asarray(part, dtype=np.float64).reshape(-1, 2))
    return geom if geom.is_valid else made_valid(geom)


def made_valid(poly: Polygon) -> Any:
    """An invalid polygon made valid with the even-odd rule (as pycocotools and OpenCV fill polygons).

    Up to RASTER_REPAIR_POINTS points: shapely's `make_valid`. A longer part that crosses itself can have
    millions of crossings (a random 1000-point part took 10 s in `make_valid`, a 5000-point one minutes), so it
    is filled on the pixel grid and its outer contours traced back, at a cost bounded by its box's pixels: holes
    are filled, as exports fill them anyway (COCO polygons hold none). A box over RASTER_REPAIR_PIXELS
    (coordinates far outside any image) is left to `make_valid`.
    """
    pts = np.asarray(poly.exterior.coords, dtype=np.float64)[:-1]
    if len(pts) <= RASTER_REPAIR_POINTS or not len(pts):
        return shapely.make_valid(poly)
    origin = np.floor(pts.min(axis=0))
    w, h = (np.ceil(pts.max(axis=0)) - origin + 1).astype(np.int64)
    if w * h > RASTER_REPAIR_PIXELS:
        return shapely.make_valid(poly)
    mask = np.zeros((int(h), int(w)), np.uint8)
    cv2.fillPoly(mask, [np.round(pts - origin).astype(np.int32)], 1)
    parts, _ = mask_to_polygons(mask, epsilon=0.0)
    rings = [Polygon(np.asarray(p).reshape(-1, 2) - 0.5 + origin) for p in parts]
    return shapely.union_all([r if r.is_valid else shapely.make_valid(r) for r in rings])


def parts_union(parts: list) -> Any:
    """The union of flat polygon parts, as one shapely geometry (empty for no parts)."""
    return shapely.union_all([flat_polygon(p) for p in parts])


def polygon_iou(a: list, b: list) -> float:
    """Intersection over union of two masks given as lists of flat polygon parts (0.0 when both are empty)."""
    ga, gb = parts_union(a), parts_union(b)
    union = ga.union(gb).area
    return ga.intersection(gb).area / union if union > 0 else 0.0


def outer_rings(polygons: list[Polygon], ndigits: int) -> list[list[float]]:
    """The outer ring of each polygon as a flat COCO list [x1, y1, ...] rounded to `ndigits`; rings of fewer than
    3 points are left out."""
    out = []
    for p in polygons:
        coords = np.asarray(p.exterior.coords)[:-1]
        if len(coords) >= 3:
            out.append([round(float(v), ndigits) for v in coords.reshape(-1)])
    return out


def polygon_parts(geom) -> list[Polygon]:
    """The polygons with area in a shapely geometry (a Polygon, Multi* or collection)."""
    if isinstance(geom, Polygon):
        return [geom] if geom.area > 0 else []
    if isinstance(geom, MultiPolygon) or hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in polygon_parts(g)]
    return []


def clean_rle(rle: Any, height: int, width: int, where: str, report: Report) -> dict | None:
    """A compressed RLE dict with `counts` as text, or None (recorded) when it does not fit the image."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        report.add("skipped masks", where, "RLE must be a dict with 'size' and 'counts'")
        return None
    if list(rle["size"]) != [height, width]:
        report.add("skipped masks", where, f"RLE size {rle['size']} differs from the image size {[height, width]}")
        return None
    if isinstance(rle["counts"], list) and sum(rle["counts"]) != height * width:
        report.add("skipped masks", where, f"RLE runs cover {sum(rle['counts'])} pixels, not {height} x {width}")
        return None
    try:
        rle = to_rle(rle, height, width)
        area = mask_util.area(rle)
        mask_util.decode(rle)  # refuses runs beyond height x width pixels
    except Exception as e:  # pycocotools raises bare Exceptions (or ValueError) for malformed counts
        report.add("skipped masks", where, f"RLE cannot be decoded ({e})")
        return None
    counts = rle["counts"]
    if area == 0:
        return None
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def clean_segmentation(segm: Any, height: int, width: int, where: str, report: Report) -> list | dict:
    """A checked polygon list or RLE (see clean_polygons / clean_rle); `[]` when absent or unusable."""
    if segm is None or (isinstance(segm, list) and not segm):
        return []
    if isinstance(segm, list):
        return clean_polygons(segm, height, width, where, report)
    if isinstance(segm, dict):
        return clean_rle(segm, height, width, where, report) or []
    report.add("skipped masks", where, f"a segmentation must be polygons or RLE, got {type(segm).__name__}")
    return []


def mask_to_polygons(mask: np.ndarray, epsilon: float = 0.7, min_area: float = 0.0) -> tuple[list[list[float]], int]:
    """Outer contours of a binary mask as COCO polygons (pixel centres), simplified by `epsilon` px.

    Returns (polygons, holes): holes are filled, since polygons cannot hold them; the count says how many.
    Parts with fewer than 3 points or less than `min_area` px are dropped.
    """
    contours, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE
    )
    if hierarchy is None:
        return [], 0
    holes = int((hierarchy[0][:, 3] >= 0).sum())  # RETR_CCOMP: contours with a parent bound holes
    out = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True):
        if parent >= 0 or cv2.contourArea(contour) < min_area:
            continue
        pts = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if len(pts) >= 3:
            out.append([float(v) + 0.5 for v in pts.reshape(-1)])
    return out, holes


def to_rle(segm: list | dict, height: int, width: int) -> dict:
    """Compressed RLE (bytes counts, as pycocotools wants) of a polygon list or RLE dict."""
    if isinstance(segm, list):
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    counts = segm["counts"]
    if isinstance(counts, list):
        return mask_util.frPyObjects(segm, height, width)
    return {"size": segm["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def is_empty(segm: Any) -> bool:
    """True for an absent mask: an empty polygon list, None, or an RLE of zero area."""
    if segm is None or (isinstance(segm, list) and not segm):
        return True
    if isinstance(segm, dict):
        return mask_util.area(to_rle(segm, *segm["size"])) == 0
    return False


def segm_bbox(segm: list | dict, height: int, width: int) -> list[float] | None:
    """Tight XYWH box of a segmentation, or None when empty."""
    if is_empty(segm):
        return None
    if isinstance(segm, list):
        pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm])
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    return [float(v) for v in mask_util.toBbox(to_rle(segm, height, width))]


def segm_area(segm: list | dict, height: int, width: int) -> float:
    """Pixel area of a segmentation (0 when empty)."""
    if is_empty(segm):
        return 0.0
    return float(mask_util.area(to_rle(segm, height, width)))


def union_area(segms: list[list | dict], height: int, width: int) -> float:
    """Pixel area of the union of segmentations."""
    return float(mask_util.area(mask_util.merge([to_rle(m, height, width) for m in segms]))) if segms else 0.0


def union_bbox(boxes: list[list[float] | None]) -> list[float] | None:
    """XYWH box enclosing every non-None XYWH box."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def traced_polygons(
    segm: list | dict, height: int, width: int, where: str, report: Report, holder: str, speck: str
) -> list[list[float]]:
    """Polygons of a mask: polygons as they are; an RLE traced with OpenCV (outer contours, CONTOUR_EPSILON).

    Its holes are filled and reported ("masks with holes lost": `holder`'s polygons have none); a speck left
    without a polygon is reported under the kind `speck`.
    """
    if isinstance(segm, list):
        return segm
    polygons, holes = mask_to_polygons(mask_util.decode(to_rle(segm, height, width)), CONTOUR_EPSILON)
    if holes:
        report.add("masks with holes lost", where, f"{holes} hole(s) filled: {holder} polygons have no holes")
    if not polygons:
        report.add(speck, where, "a speck has no polygon")
    return polygons


def instance_warnings(
    instances: list[dict], names: list[str], rules: dict, positions: dict[str, int] | None = None
) -> list[str]:
    """Warnings on labelled instances ({"id", "class", "masks": {name: polygon parts}}): parts that cross
    themselves or have no area, a later mask without the first one, and (per the dataset's `rules`)
    secondaries outside their primary. Instances are numbered from 1, as the editor lists them.

    `positions` maps instance ids to their index in the list the caller was given (default: this list's).
    At most MAX_WARNINGS are listed, then a note; the checks stop there (a payload of crossing polygons costs
    a bounded time).
    """
    out = list(itertools.islice(_instance_problems(instances, names, rules, positions or {}), MAX_WARNINGS + 1))
    if len(out) > MAX_WARNINGS:
        out[MAX_WARNINGS:] = [f"only the first {MAX_WARNINGS} problems are listed: there may be more"]
    return out


def _instance_problems(
    instances: list[dict], names: list[str], rules: dict, positions: dict[str, int]
) -> Iterator[str]:
    """The warnings of `instance_warnings`, found lazily."""
    for i, inst in enumerate(instances):
        where = f"instance #{positions.get(inst['id'], i) + 1} (id {inst['id']!r}, {inst['class']})"
        repairable = True
        for name in names:
            for j, part in enumerate(inst["masks"][name]):
                problem = _part_problem(part)
                if problem:
                    yield f"{where}, mask {name!r}, part {j + 1} {problem}"
                    repairable = repairable and len(part) // 2 <= EXACT_REPAIR_POINTS
        primary = inst["masks"][names[0]]
        if not primary:
            later = [n for n in names[1:] if inst["masks"][n]]
            if later:
                yield (
                    f"{where} has a {later[0]!r} mask but no {names[0]!r} mask: select the instance and "
                    f"draw its {names[0]!r}"
                )
            continue
        if (
            len(names) < 2 or not rules.get("secondary_inside_primary") or not inst["masks"][names[1]] or not repairable
        ):  # (a large crossing part, reported above, costs too much to repair)
            continue
        sec = parts_union(inst["masks"][names[1]])
        if sec.area <= 0:
            continue
        outside = sec.difference(parts_union(primary)).area
        if outside > INSIDE_TOLERANCE * sec.area:
            yield (f"{where}: {outside / sec.area:.0%} of its {names[1]!r} mask lies outside its {names[0]!r} mask")


def _part_problem(part: list[float]) -> str | None:
    """None for a valid polygon part, else whether it has no area or crosses itself (see EXACT_REPAIR_POINTS)."""
    poly = Polygon(np.asarray(part, dtype=np.float64).reshape(-1, 2))
    if poly.is_valid:
        return None
    area = shapely.make_valid(poly).area if len(part) // 2 <= EXACT_REPAIR_POINTS else abs(poly.area)
    return "has no area: exports leave it out" if area <= 0 else "crosses itself: exports repair it"


def clip_parts(parts: list[list[float]], width: int, height: int) -> list[list[float]]:
    """Polygon parts cut to the image [0, width] x [0, height]; parts left without area are dropped."""
    frame = box(0, 0, width, height)
    return [ring for part in parts for ring in outer_rings(polygon_parts(flat_polygon(part).intersection(frame)), 2)]
