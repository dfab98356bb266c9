"""A synthetic multimask dataset with known ground truth, for smoke tests, demos and training checks.

Each image has a textured background (smooth colour noise, gradients, random lines) and 1-6 objects of three
classes ("disc", "box", "triangle"), drawn in order so that later objects occlude earlier ones. Per object:
mask 1 is its visible region; mask 2 (~70% of objects) a dark, sometimes striped spot inside it; mask 3
(~50%) a light band along its edges. Every mask is minus the objects drawn over it. Masks with holes (ring
discs, edge bands, occluders inside a shape) are stored as RLE, the others as COCO polygons.

Two further regimes (`regime=`) change mask 2, to measure parts that are hard for an instance's own mask grid:
- "small-part": each object is a head with a long thin tail (an appendage 3 to 6 head radii long), and mask 2
  is a spot in the head covering 1-3% of the object's box (less when the head cannot hold that much);
- "large-part": mask 2 is the object cut by a straight line, covering 60-90% of it, drawn in another shade, so
  its AP75 depends on the boundary between the two masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import polylabel
from tqdm import tqdm

from ..io import atomic_write_bytes
from .dataset_json import make_annotation, write_multimask_json

CLASSES = ("disc", "box", "triangle")
_HUES = (15, 105, 60)  # OpenCV hue (0-180) at the centre of each class's range; ranges overlap (+-35)
_PART_PROB = (1.0, 0.76, 0.5)  # chance of drawing part 1, 2, 3; occlusion hides ~8% of inner spots
_MIN_AREA = (150.0, 30.0, 30.0)  # smallest visible area (px) kept for mask 1, 2, 3
REGIMES = ("default", "small-part", "large-part")
SMALL_PART_BOX_SHARE = (0.01, 0.03)  # "small-part": mask 2's area as a share of its object's box
LARGE_PART_SHARE = (0.6, 0.9)  # "large-part": mask 2's area as a share of its object


def generate_synthetic_dataset(
    out_dir: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    *,
    seed: int = 0,
    height: int = 256,
    width: int = 320,
    mask_names: Sequence[str] = ("primary", "secondary"),
    regime: str = "default",
    progress: bool = False,
) -> dict[str, Path]:
    """Write `train.json`, `val.json` and PNGs under `out_dir/images`; return their paths.

    Returns `{"train": out_dir/"train.json", "val": out_dir/"val.json", "images": out_dir/"images"}`.
    `mask_names` has 1 to 3 names (visible region, inner spot, edge band); `regime` is one of REGIMES (see the
    module docstring). The output depends only on the arguments: each image has its own generator seeded by
    (`seed`, split, index).
    """
    _check_args(num_train, num_val, seed, height, width, mask_names)
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    out_dir = Path(out_dir)
    names = list(mask_names)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    paths = {"train": out_dir / "train.json", "val": out_dir / "val.json", "images": out_dir / "images"}
    with tqdm(total=num_train + num_val, desc="synthetic images", disable=not progress) as bar:
        for split_idx, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            images, annotations = [], []
            for i in range(count):
                img, objects = _scene(np.random.default_rng([seed, split_idx, i]), height, width, len(names), regime)
                file_name = f"images/{split}_{i:04d}.png"
                atomic_write_bytes(out_dir / file_name, cv2.imencode(".png", img)[1].tobytes())
                images.append({"id": i + 1, "file_name": file_name, "height": height, "width": width})
                for cls, parts in objects:
                    masks = {
                        n: _encode(p, height, width) if p is not None else [] for n, p in zip(names, parts, strict=True)
                    }
                    annotations.append(
                        make_annotation(len(annotations) + 1, i + 1, cls + 1, masks, height, width, names)
                    )
                bar.update()
            info = {"description": f"synthetic multimask dataset ({split})", "seed": seed, "regime": regime}
            write_multimask_json(paths[split], images, categories, annotations, names, info=info)
    paths["images"].mkdir(parents=True, exist_ok=True)  # also when both splits are empty
    return paths


def _check_args(num_train, num_val, seed, height, width, mask_names) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for name, value, low in (
        ("num_train", num_train, 0),
        ("num_val", num_val, 0),
        ("seed", seed, 0),
        ("height", height, 64),
        ("width", width, 64),
    ):
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if (
        isinstance(mask_names, str)
        or not isinstance(mask_names, Sequence)
        or not all(isinstance(n, str) and n for n in mask_names)
    ):
        raise ValueError(f"mask_names must be a sequence of non-empty strings, got {mask_names!r}")
    if not 1 <= len(mask_names) <= len(_PART_PROB) or len(set(mask_names)) != len(mask_names):
        raise ValueError(f"mask_names must hold 1 to {len(_PART_PROB)} unique names, got {list(mask_names)}")


def _scene(
    rng: np.random.Generator,
    h: int,
    w: int,
    num_masks: int,
    regime: str = "default",
) -> tuple[np.ndarray, list]:
    """A BGR uint8 image and its objects `(class index, [visible geometry or None per mask])`, bottom first."""
    frame, size = box(0, 0, w, h), min(h, w)
    objects = []  # (class, colour, [full part geometry or None]) in drawing order
    for _ in range(rng.integers(1, 7)):
        cls = int(rng.integers(len(CLASSES)))
        r = rng.uniform(0.07, 0.2) * size
        if regime == "small-part":
            r *= 0.7  # a smaller head; its tail makes the object's box many times larger
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        head = _shape(rng, cls, cx, cy, r)
        shape = head.union(_tail(rng, head, r)) if regime == "small-part" else head
        band_width = r * rng.uniform(0.1, 0.18) if num_masks >= 3 and rng.random() < _PART_PROB[2] else 0.0
        parts = [shape]
        if num_masks >= 2 and regime == "small-part":
            parts.append(_small_spot(rng, head, shape.intersection(frame), band_width + 1.0))
        elif num_masks >= 2 and regime == "large-part":
            parts.append(_cut(rng, shape.intersection(frame)))
        elif num_masks >= 2:
            parts.append(_spot(rng, shape, r, band_width + 1.0) if rng.random() < _PART_PROB[1] else None)
        if num_masks >= 3:
            parts.append(shape.difference(shape.buffer(-band_width)) if band_width else None)
        hue = (_HUES[cls] + rng.uniform(-35, 35)) % 180
        hsv = np.uint8([[[hue, rng.uniform(90, 255), rng.uniform(110, 255)]]])
        objects.append((cls, cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32), parts))

    # Keep, from the top down, the objects whose visible region is large enough; dropped ones are not drawn.
    kept, occluder = [], Polygon()
    for cls, colour, parts in reversed(objects):
        visible = [p.intersection(frame).difference(occluder) if p is not None else None for p in parts]
        visible = [v if v is not None and v.area >= _MIN_AREA[k] else None for k, v in enumerate(visible)]
        if visible[0] is None:
            continue
        parts = [p if v is not None else None for p, v in zip(parts, visible, strict=True)]
        kept.append((cls, colour, parts, visible))
        occluder = occluder.union(parts[0])
    kept.reverse()

    img = _background(rng, h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for _cls, colour, parts, _ in kept:
        cx, cy = parts[0].centroid.coords[0]
        gx, gy = rng.uniform(-0.6, 0.6, 2)
        _paint(img, parts[0].intersection(frame), colour + ((xs - cx) * gx + (ys - cy) * gy)[..., None])
        if len(parts) >= 3 and parts[2] is not None:
            _paint(img, parts[2].intersection(frame), colour * 0.4 + 150)
        if len(parts) >= 2 and parts[1] is not None:
            dark = np.broadcast_to(colour * rng.uniform(0.25, 0.5), (h, w, 3)).copy()
            if rng.random() < 0.5:  # stripes
                angle, period = rng.uniform(0, math.pi), rng.uniform(4, 8)
                stripes = (xs * math.cos(angle) + ys * math.sin(angle)) % period < period / 3
                dark[stripes] *= 1.6
            _paint(img, parts[1].intersection(frame), dark)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), [(cls, visible) for cls, _, _, visible in kept]


def _shape(rng: np.random.Generator, cls: int, cx: float, cy: float, r: float) -> Polygon:
    """A randomly rotated ellipse (~10% rings with a hole), rectangle or triangle of radius about `r`."""
    angle = rng.uniform(0, 360)
    if CLASSES[cls] == "disc":
        shape = affinity.scale(Point(cx, cy).buffer(r, quad_segs=16), 1.0, rng.uniform(0.7, 1.0))
        if rng.random() < 0.1:
            shape = shape.difference(affinity.scale(shape, *(2 * [rng.uniform(0.35, 0.55)])))
    elif CLASSES[cls] == "box":
        a, b = r * rng.uniform(0.6, 1.0, 2)
        shape = box(cx - a, cy - b, cx + a, cy + b)
    else:
        angles = np.deg2rad(np.array([0.0, 120.0, 240.0]) + rng.uniform(-20, 20, 3))
        radii = r * rng.uniform(0.85, 1.15, 3)
        shape = Polygon(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1))
    return affinity.rotate(shape, angle, origin=(cx, cy))


def _tail(rng: np.random.Generator, head: Polygon, r: float) -> Polygon:
    """A thin, gently bent appendage 3 to 6 head radii long, leaving the head's centre in a random direction."""
    cx, cy = head.centroid.coords[0]
    angle, length = rng.uniform(0, 2 * math.pi), r * rng.uniform(3, 6)
    points, (x, y) = [(cx, cy)], (cx, cy)
    for _ in range(4):
        angle += rng.uniform(-0.35, 0.35)
        x, y = x + length / 4 * math.cos(angle), y + length / 4 * math.sin(angle)
        points.append((x, y))
    return LineString(points).buffer(r * rng.uniform(0.15, 0.25), quad_segs=4)


def _small_spot(rng: np.random.Generator, head: Polygon, shape: Polygon, margin: float) -> Polygon | None:
    """A spot in `head` whose area is SMALL_PART_BOX_SHARE of the object's box (smaller when the head cannot hold
    it: at most 0.6 of the head's inner radius)."""
    x0, y0, x1, y1 = shape.bounds
    target = rng.uniform(*SMALL_PART_BOX_SHARE) * (x1 - x0) * (y1 - y0)
    centre = polylabel(head, tolerance=0.5)
    radius = min(math.sqrt(target / math.pi), 0.6 * (head.boundary.distance(centre) - margin))
    if radius < 2.0:
        return None
    spot = affinity.scale(centre.buffer(radius, quad_segs=8), 1.0, rng.uniform(0.8, 1.0))
    return affinity.rotate(spot, rng.uniform(0, 180), origin=centre)


def _cut(rng: np.random.Generator, shape: Polygon) -> Polygon:
    """`shape` cut by a straight line at a random angle, the side kept covering LARGE_PART_SHARE of it."""
    share = rng.uniform(*LARGE_PART_SHARE)
    angle = rng.uniform(0, 2 * math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    x0, y0, x1, y1 = shape.bounds
    reach = math.hypot(x1 - x0, y1 - y0)
    cx, cy = shape.centroid.coords[0]

    def kept(offset: float) -> Polygon:  # the half-plane {p: (p - c) . d <= offset}, clipped to the shape
        ax, ay = cx + offset * dx, cy + offset * dy
        half = Polygon(
            [
                (ax - reach * dy, ay + reach * dx),
                (ax + reach * dy, ay - reach * dx),
                (ax + reach * dy - 2 * reach * dx, ay - reach * dx - 2 * reach * dy),
                (ax - reach * dy - 2 * reach * dx, ay + reach * dx - 2 * reach * dy),
            ]
        )
        return shape.intersection(half)

    low, high = -reach, reach  # bisect the offset: the kept area grows with it
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid).area < share * shape.area else (low, mid)
    return kept(high)


def _spot(rng: np.random.Generator, shape: Polygon, r: float, margin: float) -> Polygon | None:
    """A small rotated ellipse at least `margin` inside `shape`, or None when there is no room for one."""
    radius = r * rng.uniform(0.2, 0.4)
    room = shape.buffer(-(margin + radius))
    if room.is_empty:  # a thin shape: the largest spot that fits, at its innermost point
        p = polylabel(shape, tolerance=0.5)
        radius = shape.boundary.distance(p) - margin
        if radius < 3.0:
            return None
    else:
        x0, y0, x1, y1 = room.bounds
        for _ in range(10):  # rejection sampling, then any inner point
            p = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
            if room.contains(p):
                break
        else:
            p = room.representative_point()
    spot = affinity.scale(p.buffer(radius, quad_segs=8), 1.0, rng.uniform(0.6, 1.0))
    return affinity.rotate(spot, rng.uniform(0, 180), origin=p)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 BGR texture: smooth colour noise, finer noise, a gradient and random lines."""
    coarse = rng.uniform(0, 255, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3)).astype(np.float32)
    fine = rng.normal(0, 20, (h // 8, w // 8, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)
    img += np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-60, 60, 3).astype(np.float32)
    for _ in range(rng.integers(4, 15)):
        p0, p1 = (tuple(int(v) for v in rng.integers((0, 0), (w, h))) for _ in range(2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _paint(img: np.ndarray, geom, layer: np.ndarray) -> None:
    """Copy `layer` (HxWx3 or a colour) into `img` where `geom` rasterises."""
    m = _raster(geom, *img.shape[:2]).astype(bool)
    img[m] = layer[m] if layer.ndim == 3 else layer


def _polygons(geom) -> list[Polygon]:
    """The polygons of any shapely geometry, without slivers (parts or holes under 1 px)."""
    if isinstance(geom, Polygon):
        holes = [ring for ring in geom.interiors if Polygon(ring).area >= 1.0]
        return [Polygon(geom.exterior, holes)] if geom.area >= 1.0 else []
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def _raster(geom, h: int, w: int) -> np.ndarray:
    """Uint8 HxW mask of a geometry, rasterised by pycocotools like the polygons in the dataset file."""

    def fill(rings):
        flat = [np.asarray(ring.coords)[:-1].ravel().tolist() for ring in rings]
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(flat, h, w)))

    mask = np.zeros((h, w), np.uint8)
    for poly in _polygons(geom):
        part = fill([poly.exterior])
        if len(poly.interiors):
            part &= 1 - fill(poly.interiors)
        mask |= part
    return mask


def _encode(geom, h: int, w: int) -> list | dict:
    """COCO polygons of a geometry, or compressed RLE when it has a hole (or rounding breaks a polygon)."""
    polys = _polygons(geom)
    flat = [np.round(np.asarray(p.exterior.coords)[:-1], 2) for p in polys]
    if any(len(p.interiors) for p in polys) or not all(len(f) >= 3 and Polygon(f).is_valid for f in flat):
        counts = mask_util.encode(np.asfortranarray(_raster(geom, h, w)))["counts"]
        return {"size": [h, w], "counts": counts.decode("ascii")}
    return [f.ravel().tolist() for f in flat]
