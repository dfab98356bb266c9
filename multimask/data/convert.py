"""Convert other annotation layouts to the multimask format and back.

- `import_coco_fields`: COCO files that keep each mask in its own annotation field (UOAIS, KINS, ...).
- `import_labelme` / `export_labelme`: a folder of labelme JSON files, one per image.

Every segmentation goes through `clean_polygons` / `clean_rle`; whatever is repaired or skipped is counted
in the returned `Report` with the file and annotation (or shape) it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..config import is_valid_mask_name
from ..io import DatasetError, atomic_write_json, read_json
from .dataset_json import (
    DEFAULT_MASK_NAMES,
    check_image_ids,
    dataset_meta,
    load_multimask_json,
    make_annotation,
    write_multimask_json,
)
from .geometry import Report, clean_polygons, clean_segmentation, mask_to_polygons, to_rle

# The rule of MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES (see multimask/config.py).
# Key that export_labelme adds to each labelme file (labelme keeps unknown keys when it saves).
LABELME_NAMES_KEY = "multimask_mask_names"
CONTOUR_EPSILON = 0.7  # px, cv2.approxPolyDP tolerance when an RLE mask becomes polygons
LABELME_SHAPES = ("polygon", "rectangle")


def import_coco_fields(src_json: str | Path, out_json: str | Path, field_map: Mapping[str, str], *,
                       report: Report | None = None) -> Report:
    """COCO JSON with each mask in its own annotation field -> multimask JSON, written atomically.

    `field_map` is {field: mask name}, e.g. UOAIS {"segmentation": "primary", "visible_mask": "secondary"},
    KINS {"a_segm": "primary", "i_segm": "secondary"}; its order is the order of `mask_names`.
    Images and categories are kept as they are, `file_name` included: it stays relative to the source's
    image folder, so write `out_json` next to the source or pass that folder as `image_root` when loading.
    """
    src_json = Path(src_json)
    report = report if report is not None else Report()
    names = _check_names(list(field_map.values()), "field_map")
    data = read_json(src_json)
    cat_ids = dataset_meta({**data, "mask_names": names} if isinstance(data, dict) else data,
                           src_json)["thing_dataset_id_to_contiguous_id"]
    images, sizes, all_image_ids = [], {}, check_image_ids(data["images"], src_json)
    for i, img in enumerate(data["images"]):
        size = (img.get("height"), img.get("width")) if isinstance(img, dict) else (None, None)
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str) and _positive(*size)):
            report.add("skipped images", f"{src_json} images[{i}]",
                       "an image needs 'id', 'file_name' and positive integer 'height' and 'width'")
            continue
        images.append(img)
        sizes[img["id"]] = size
    anns: list[dict] = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{src_json} annotation id={ann.get('id', '?') if isinstance(ann, dict) else '?'} (index {i})"
        if not isinstance(ann, dict):
            report.add("skipped annotations", where, "not an object")
            continue
        if ann.get("image_id") not in sizes:
            why = "its image was skipped" if ann.get("image_id") in all_image_ids else "unknown image_id"
            report.add("skipped annotations", where, f"{why} ({ann.get('image_id')!r})")
            continue
        if ann.get("category_id") not in cat_ids:
            report.add("skipped annotations", where, f"unknown category_id {ann.get('category_id')!r}")
            continue
        h, w = sizes[ann["image_id"]]
        masks = {}
        for fld, name in field_map.items():
            if fld not in ann:
                report.add("missing fields", where, f"no field '{fld}': mask '{name}' left empty")
            masks[name] = clean_segmentation(ann.get(fld), h, w, f"{where} field '{fld}'", report)
        new = _annotation(len(anns) + 1, ann["image_id"], ann["category_id"], masks, h, w, names, where,
                          report)
        if new is not None:
            new["iscrowd"] = int(ann.get("iscrowd", 0) or 0)
            anns.append(new)
    info = {"description": f"imported from {src_json.name}", "field_map": dict(field_map)}
    write_multimask_json(out_json, images, data["categories"], anns, names, info=info)
    return report


def import_labelme(folder: str | Path, out_json: str | Path, label_map: Mapping[str, str] | None = None, *,
                   mask_names: Sequence[str] | None = None, report: Report | None = None) -> Report:
    """Folder of labelme JSON files (one per image) -> multimask JSON, written atomically.

    Shapes sharing a `group_id` in one file form one instance; a shape whose `group_id` is null is an
    instance on its own. `label_map` maps a labelme label to "MASK" or "CLASS:MASK"; without a class the
    instance's class is the label of its shapes mapped to the first mask name. Shapes of one instance
    mapped to the same mask become one multi-part mask. With `label_map` None, labels "class/mask" (as
    written by `export_labelme`) are parsed. `mask_names` defaults to the order of the targets in
    `label_map`, else to the names recorded by `export_labelme`, else ("primary", "secondary").
    Polygon and rectangle shapes are read; other shape types are skipped and reported. `file_name`s are
    written relative to the folder of `out_json`.
    """
    folder, out_json = Path(folder), Path(out_json)
    report = report if report is not None else Report()
    targets = _parse_label_map(label_map) if label_map is not None else None
    docs = []
    for path in sorted(p for p in folder.glob("*.json") if p.resolve() != out_json.resolve()):
        try:
            doc = read_json(path)
        except DatasetError as e:
            report.add("skipped files", str(path), str(e).removeprefix(f"{path}: "))
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            report.add("skipped files", str(path), "not a labelme file (no 'shapes' list)")
            continue
        docs.append((path, doc))
    if mask_names is None:
        recorded = [d[LABELME_NAMES_KEY] for _, d in docs if isinstance(d.get(LABELME_NAMES_KEY), list)]
        mask_names = (list(dict.fromkeys(m for _, m in targets.values())) if targets
                      else recorded[0] if recorded else DEFAULT_MASK_NAMES)
    names = _check_names(mask_names, "mask_names")
    unknown = sorted({m for _, m in (targets or {}).values() if m not in names})
    if unknown:
        raise ValueError(f"label_map: mask names {unknown} are not among mask_names {names}")

    images: list[dict] = []
    anns: list[dict] = []
    classes: dict[str, int] = {}  # class name -> category id, in order of first appearance
    for path, doc in docs:
        size = _image_size(path, doc, report)
        if size is None:
            continue
        h, w = size
        image_id = len(images) + 1
        image_path = os.path.abspath(path.parent / doc["imagePath"].replace("\\", "/"))
        images.append({"id": image_id, "height": h, "width": w,
                       "file_name": os.path.relpath(image_path, os.path.abspath(out_json.parent))})
        for where, members in _instances(path, doc["shapes"], report):
            masks: dict[str, list] = {n: [] for n in names}
            explicit, first = set(), set()  # class names given by label_map / labels of the first mask
            for j, shape in members:
                label = shape.get("label")
                here = f"{path} shape {j} (label {label!r})"
                target = _target(label, targets, names)
                if isinstance(target, str):
                    report.add("skipped shapes", here, target)
                    continue
                cls, name = target
                if cls is not None:
                    explicit.add(cls)
                elif name == names[0]:
                    first.add(label)
                poly = _shape_polygon(shape)
                if isinstance(poly, str):
                    report.add("skipped shapes", here, poly)
                    continue
                masks[name] += clean_polygons([poly], h, w, here, report)
            found = explicit or first
            if len(found) != 1:
                why = (f"conflicting classes {sorted(found)}" if found else
                       f"no class: no shape mapped to '{names[0]}' and no class given by the label_map")
                report.add("skipped annotations", where, why)
                continue
            cat_id = classes.setdefault(found.pop(), len(classes) + 1)
            new = _annotation(len(anns) + 1, image_id, cat_id, masks, h, w, names, where, report)
            if new is not None:
                anns.append(new)
    categories = [{"id": i, "name": c} for c, i in classes.items()]
    write_multimask_json(out_json, images, categories, anns, names,
                         info={"description": f"imported from labelme folder {folder.name}"})
    return report


def export_labelme(src_json: str | Path, out_folder: str | Path, *,
                   image_root: str | Path | None = None) -> Report:
    """Multimask JSON -> labelme folder: one JSON per image, images not copied.

    Shapes are labelled "class/mask" with `group_id` = the instance number in the image (from 1);
    `imagePath` is relative to the output file and `imageData` is null. RLE masks become polygons via
    OpenCV contours; labelme polygons cannot have holes, so holes are filled and reported.
    """
    report = Report()
    dicts, meta = load_multimask_json(src_json, image_root, check_images=False, report=report)
    names, classes = meta["mask_names"], meta["thing_classes"]
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for rec in dicts:
        image, h, w = Path(rec["file_name"]), rec["height"], rec["width"]
        if not image.is_file():
            report.add("missing images", str(image), "image not found (its labelme file points to it anyway)")
        stem, n = image.stem, 1
        while stem in used:
            n += 1
            stem = f"{image.stem}_{n}"
        used.add(stem)
        shapes = []
        for k, ann in enumerate(rec["annotations"], start=1):
            for name in names:
                where = f"{src_json} image_id={rec['image_id']} annotation id={ann['id']} mask '{name}'"
                for poly in _to_polygons(ann["multimask"][name], h, w, where, report):
                    shapes.append({"label": f"{classes[ann['category_id']]}/{name}",
                                   "points": np.asarray(poly).reshape(-1, 2).tolist(), "group_id": k,
                                   "shape_type": "polygon", "flags": {}, "description": ""})
        atomic_write_json(out_folder / f"{stem}.json", {
            "version": "5.4.1", "flags": {}, "shapes": shapes,
            "imagePath": os.path.relpath(os.path.abspath(image), os.path.abspath(out_folder)),
            "imageData": None, "imageHeight": h, "imageWidth": w, LABELME_NAMES_KEY: list(names),
        }, indent=2)
    return report


def _check_names(names: Sequence[Any], what: str) -> list[str]:
    names = list(names)
    bad = [n for n in names if not is_valid_mask_name(n)]
    if bad or not names:
        raise ValueError(f"{what}: {bad or 'no names'} are not valid mask names "
                         "(letters, digits and '_', not starting with a digit)")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: duplicate mask names {names}")
    return names


def _parse_label_map(label_map: Mapping[str, str]) -> dict[str, tuple[str | None, str]]:
    """{label: "MASK" | "CLASS:MASK"} -> {label: (class or None, mask)}; ValueError on a bad target."""
    out = {}
    for label, target in label_map.items():
        cls, sep, name = target.rpartition(":") if isinstance(target, str) else ("", "", target)
        if (sep and not cls) or not is_valid_mask_name(name):
            raise ValueError(f"label_map[{label!r}] = {target!r}: expected 'MASK' or 'CLASS:MASK' with a "
                             "valid mask name (letters, digits and '_', not starting with a digit)")
        out[label] = (cls if sep else None, name)
    return out


def _target(label: Any, targets: dict | None, names: list[str]) -> tuple[str | None, str] | str:
    """(class or None, mask name) of a labelme label, or why it cannot be used."""
    if not isinstance(label, str):
        return "the label is not a string"
    if targets is not None:
        return targets.get(label, "label not in label_map")
    cls, sep, name = label.rpartition("/")
    if not sep or not cls:
        return "label is not of the form 'class/mask' (give a label_map)"
    return (cls, name) if name in names else f"mask name {name!r} is not among {names}"


def _shape_polygon(shape: dict) -> list[float] | str:
    """Flat polygon of a labelme polygon or rectangle shape, or why it cannot be used."""
    kind, pts = shape.get("shape_type") or "polygon", shape.get("points")
    if kind not in LABELME_SHAPES:
        return f"shape_type {kind!r} is not supported (only {', '.join(LABELME_SHAPES)})"
    if not isinstance(pts, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in pts):
        return "points must be a list of [x, y] pairs of numbers"
    if kind == "rectangle":
        if len(pts) != 2:
            return f"a rectangle needs 2 points, got {len(pts)}"
        (x0, x1), (y0, y1) = sorted((pts[0][0], pts[1][0])), sorted((pts[0][1], pts[1][1]))
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    return [float(v) for p in pts for v in p]


def _instances(path: Path, shapes: list, report: Report) -> list[tuple[str, list[tuple[int, dict]]]]:
    """Shapes grouped by group_id (null: one instance per shape), in order of first appearance."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for j, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            report.add("skipped shapes", f"{path} shape {j}", "not an object")
            continue
        gid = shape.get("group_id")
        key = ("shape", j) if gid is None else ("group", gid)
        groups.setdefault(key, []).append((j, shape))
    return [(f"{path} {'group_id' if kind == 'group' else 'shape'} {k}", members)
            for (kind, k), members in groups.items()]


def _image_size(path: Path, doc: dict, report: Report) -> tuple[int, int] | None:
    """(height, width) from imageHeight/imageWidth, else from the image file; None (reported) if neither."""
    if not isinstance(doc.get("imagePath"), str) or not doc["imagePath"]:
        report.add("skipped files", str(path), "no 'imagePath'")
        return None
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    if _positive(h, w):
        return h, w
    image = path.parent / doc["imagePath"].replace("\\", "/")
    pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED) if image.is_file() else None
    if pixels is None:
        report.add("skipped files", str(path), f"no imageHeight/imageWidth, and image {image} cannot be read")
        return None
    return int(pixels.shape[0]), int(pixels.shape[1])


def _annotation(ann_id: int, image_id: Any, category_id: int, masks: dict, height: int, width: int,
                names: list[str], where: str, report: Report) -> dict | None:
    if not any(masks.values()):
        report.add("skipped annotations", where, f"no usable mask among {names}")
        return None
    return make_annotation(ann_id, image_id, category_id, masks, height, width, names)


def _to_polygons(segm: list | dict, height: int, width: int, where: str, report: Report) -> list[list[float]]:
    """Polygons of a mask; an RLE is traced with OpenCV (outer contours; holes filled and reported)."""
    if isinstance(segm, list):
        return segm
    polygons, holes = mask_to_polygons(mask_util.decode(to_rle(segm, height, width)), CONTOUR_EPSILON)
    if holes:
        report.add("masks with holes lost", where, f"{holes} hole(s) filled: labelme polygons have no holes")
    if not polygons:
        report.add("skipped polygons", where, "a speck has no polygon")
    return polygons


def _positive(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
