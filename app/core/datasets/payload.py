"""Checks of the instance documents that the browser labelling view sends: never trust the browser.

An instance document is `{"id": str, "class": str, "masks": {mask name: [[x1, y1, x2, y2, ...], ...]}}`,
with coordinates in original image pixels; a mask name may be missing or map to `[]` (absent), and a mask
may have several parts (polygons).

Limits (what a dense real image needs, with room to spare; they bound the work and memory one save causes):
MAX_INSTANCES instances per image, MAX_PARTS parts per mask, MAX_POINTS vertices per part and
MAX_TOTAL_POINTS vertices per image (e.g. 1000 cells with two 100-vertex masks each are 200,000). Written as
the editor writes it (coordinates with at most two decimals, no spaces), a maximal legal payload is about
5 MB of JSON; MAX_SAVE_BYTES, the request body size a server may refuse before parsing, leaves margin above
that. The coordinate checks run on numpy arrays: 250,000 vertices take tens of milliseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

INSTANCE_KEYS = frozenset({"id", "class", "masks"})
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_INSTANCES = 1000
MAX_PARTS = 100  # per mask
MAX_POINTS = 10_000  # per part
MAX_TOTAL_POINTS = 250_000  # per image: bounds the work one request can cause
MAX_SAVE_BYTES = 8 * 2**20  # bytes of a save request's JSON body: a maximal legal payload is about 5 MB
TOLERANCE = 0.5  # px a coordinate may lie outside the image before it is refused (it is clipped)
DECIMALS = 2
_PLAIN_NUMBERS = frozenset({int, float})  # what JSON numbers parse to (bool, a subclass of int, is refused)


class PayloadError(ValueError):
    """An instance list that cannot be stored; the message says which instance, mask and part is wrong."""


def is_valid_instance_id(value: Any) -> bool:
    """Instance ids are short safe strings: 1 to 40 of letters, digits, '_' and '-'."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def validate_instances(
    instances: Any,
    *,
    classes: Sequence[str],
    mask_names: Sequence[str],
    width: int,
    height: int,
    dropped: list[str] | None = None,
) -> list[dict]:
    """A checked, normalised copy of `instances`, or PayloadError naming the first problem.

    Checks: a list of at most MAX_INSTANCES dicts with exactly the keys id/class/masks; ids safe and unique;
    class in `classes`; masks a dict keyed by known mask names; each part a flat list of an even number
    (>= 6) of finite numbers (bool is not a number), at most MAX_POINTS points, at most MAX_PARTS parts
    per mask; coordinates inside [0, width] x [0, height] give or take TOLERANCE px (then clipped).
    The copy has every mask name (`[]` when absent) and coordinates rounded to DECIMALS places.
    Instances with no mask part at all are left out of the copy; when `dropped` is given, a message for
    each of them is appended to it.
    """
    if not isinstance(instances, list):
        raise PayloadError(f"instances must be a list, got {type(instances).__name__}")
    if len(instances) > MAX_INSTANCES:
        raise PayloadError(f"too many instances ({len(instances)}; at most {MAX_INSTANCES} per image)")
    known_classes, names = set(classes), list(mask_names)
    seen_ids: set[str] = set()
    total = 0
    out = []
    for i, inst in enumerate(instances):
        where = f"instance #{i + 1}"
        if not isinstance(inst, dict):
            raise PayloadError(f"{where}: must be an object, got {type(inst).__name__}")
        keys = set(inst)
        if keys != INSTANCE_KEYS:
            missing, extra = sorted(INSTANCE_KEYS - keys), sorted(map(str, keys - INSTANCE_KEYS))
            detail = (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
            raise PayloadError(f"{where}: expected exactly the keys id, class, masks{detail}")
        iid = inst["id"]
        if not is_valid_instance_id(iid):
            raise PayloadError(f"{where}: id must be 1 to 40 letters, digits, '_' or '-', got {_short(iid)}")
        where = f"instance #{i + 1} (id {iid!r})"
        if iid in seen_ids:
            raise PayloadError(f"{where}: duplicate id")
        seen_ids.add(iid)
        cls = inst["class"]
        if not isinstance(cls, str) or cls not in known_classes:
            raise PayloadError(f"{where}: unknown class {_short(cls)} (classes: {sorted(known_classes)})")
        masks = inst["masks"]
        if not isinstance(masks, dict):
            raise PayloadError(f"{where}: masks must be an object {{mask name: polygons}}, got {type(masks).__name__}")
        unknown = [k for k in masks if k not in names]
        if unknown:
            raise PayloadError(f"{where}: unknown mask name {_short(unknown[0])} (mask names: {names})")
        clean: dict[str, list[list[float]]] = {}
        for name in names:
            parts = masks.get(name, [])
            here = f"{where}, mask {name!r}"
            if not isinstance(parts, list):
                raise PayloadError(f"{here}: must be a list of polygons, got {type(parts).__name__}")
            if len(parts) > MAX_PARTS:
                raise PayloadError(f"{here}: too many parts ({len(parts)}; at most {MAX_PARTS})")
            total += sum(len(p) for p in parts if isinstance(p, (list, tuple))) // 2  # counted before the work
            if total > MAX_TOTAL_POINTS:
                raise PayloadError(f"{here}: too many points in this image (more than {MAX_TOTAL_POINTS})")
            clean[name] = [check_polygon(p, width, height, f"{here}, part {j + 1}") for j, p in enumerate(parts)]
        if not any(clean.values()):
            if dropped is not None:
                dropped.append(f"{where} has no mask drawn: it was not saved")
            continue
        out.append({"id": iid, "class": cls, "masks": clean})
    return out


def check_polygon(part: Any, width: int, height: int, where: str) -> list[float]:
    """One polygon part, a flat [x1, y1, ...] list: checked (PayloadError naming `where`), clipped and rounded."""
    if not isinstance(part, (list, tuple)):
        raise PayloadError(f"{where}: a polygon must be a flat list [x1, y1, x2, y2, ...], got {type(part).__name__}")
    n = len(part)
    if n % 2:
        raise PayloadError(f"{where}: odd number of coordinates ({n})")
    if n < 6:
        raise PayloadError(f"{where}: a polygon needs at least 3 points, got {n // 2}")
    if n // 2 > MAX_POINTS:
        raise PayloadError(f"{where}: too many points ({n // 2}; at most {MAX_POINTS})")
    if set(map(type, part)) <= _PLAIN_NUMBERS:  # the usual case: checked and rounded as one array
        try:
            xy = np.array(part, dtype=np.float64).reshape(-1, 2)
        except OverflowError:  # an integer beyond float range: the exact checks below name it
            xy = None
        if xy is not None:
            limits = np.array([width, height], dtype=np.float64)
            if np.all(np.isfinite(xy) & (xy >= -TOLERANCE) & (xy <= limits + TOLERANCE)):
                return _rounded(np.clip(xy, 0.0, limits).ravel())
    return _checked_values(part, width, height, where)


def _rounded(values: np.ndarray) -> list[float]:
    """`round(v, DECIMALS)` of each value, as Python rounds: numpy's rounding differs only next to a tie
    (e.g. 2.675), and those few values are rounded by Python."""
    out = np.round(values, DECIMALS)
    scaled = values * 10**DECIMALS
    near_tie = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    out[near_tie] = [round(float(v), DECIMALS) for v in values[near_tie]]
    return out.tolist()


def _checked_values(part: list | tuple, width: int, height: int, where: str) -> list[float]:
    """The part's coordinates checked one by one (the first bad one named), clipped and rounded."""
    out = []
    for k, v in enumerate(part):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PayloadError(f"{where}: coordinate {k} is not a number ({_short(v)})")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise PayloadError(f"{where}: coordinate {k} is not finite ({_short(v)})")
        limit = width if k % 2 == 0 else height
        if not -TOLERANCE <= f <= limit + TOLERANCE:
            axis = "x" if k % 2 == 0 else "y"
            raise PayloadError(
                f"{where}: point {k // 2 + 1} is outside the image ({axis} = {f:g}, image is {width}x{height})"
            )
        out.append(round(min(max(f, 0.0), float(limit)), DECIMALS))
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
