"""Convert other annotation layouts to the multimask format and back.

- `import_coco`: plain COCO instances (`segmentation` -> one mask name).
- `import_coco_fields`: COCO files that keep each mask in its own annotation field (UOAIS, KINS, ...).
- `import_labelme` / `export_labelme`: a folder of labelme JSON files, one per image (`labelme_documents`: the
  files as data).

Each importer comes in two forms: `*_document` returns the multimask dataset as data (a dict, image paths
absolute) and leaves writing to the caller (the app's Label store adds it to a dataset); `import_*` writes it
to a file, image paths relative to it. They share one mapping model (`mapping.py`) and fill an `ImportReport`
(`import_report.py`): every shape or field is counted as used or skipped with its reason, repairs and skips are
listed with the file and annotation (or shape) they came from; `import_*` also write it to `<out>.report.json`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_util

from ..config import check_mask_names
from ..io import DatasetError, atomic_write_json, read_json
from .dataset_json import (
    DEFAULT_MASK_NAMES,
    check_image_ids,
    dataset_meta,
    load_multimask_json,
    make_annotation,
    multimask_document,
    write_document,
)
from .geometry import Report, clean_polygons, clean_segmentation, to_rle, traced_polygons
from .import_report import ImportReport
from .mapping import SourceMap, Target, build_map

# The rule of MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES (see multimask/config.py).
# Key that export_labelme adds to each labelme file (labelme keeps unknown keys when it saves).
LABELME_NAMES_KEY = "multimask_mask_names"
LABELME_SHAPES = ("polygon", "rectangle")
COCO_KEYS = {"id", "image_id", "category_id", "iscrowd", "bbox", "area", "attributes", "score"}


def import_coco(src_json: str | Path, out_json: str | Path, mask_name: str = "primary", **kwargs: Any) -> ImportReport:
    """Plain COCO instances JSON -> multimask JSON whose one mask `mask_name` is each `segmentation`
    (polygons or RLE; `iscrowd` kept). Keyword arguments as `import_coco_fields`."""
    return import_coco_fields(src_json, out_json, {"segmentation": mask_name}, **kwargs)


def coco_document(src_json: str | Path, mask_name: str = "primary", **kwargs: Any) -> dict:
    """`import_coco`'s dataset as data (see `coco_fields_document`)."""
    return coco_fields_document(src_json, {"segmentation": mask_name}, **kwargs)


def import_coco_fields(
    src_json: str | Path,
    out_json: str | Path,
    field_map: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str],
    *,
    report: ImportReport | None = None,
    **kwargs: Any,
) -> ImportReport:
    """COCO JSON with each mask in its own annotation field -> multimask JSON, written atomically, with its
    report (`<out>.report.json`); `file_name`s relative to the folder of `out_json`. As `coco_fields_document`."""
    report = report if report is not None else ImportReport()
    _write_document(out_json, coco_fields_document(src_json, field_map, report=report, **kwargs), report)
    return report


def coco_fields_document(
    src_json: str | Path,
    field_map: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str],
    *,
    image_root: str | Path | None = None,
    drop_classes: Iterable[str] = (),
    report: ImportReport | None = None,
) -> dict:
    """A COCO JSON with each mask in its own annotation field, as a multimask dataset (a dict; image paths
    absolute). What was used, repaired or skipped goes to `report`.

    `field_map` is a mapping (see `multimask.data.mapping`): e.g. UOAIS {"segmentation": "primary",
    "visible_mask": "secondary"}, or ["segmentation_a+segmentation_b=primary", "segmentation_b=secondary"]
    (fields mapped to one mask name are united); mask names are in order of first appearance. The class is
    the COCO category; categories without annotations, and those named in `drop_classes` (with their
    annotations), are dropped and reported. Images are looked up under `image_root` (default: the source's
    folder), missing ones reported by name.
    """
    src_json = Path(src_json)
    report = report if report is not None else ImportReport()
    report.source_kind = "field"
    fmap = build_map(field_map, "field map", allow_class=False)
    names = fmap.mask_names
    data = read_json(src_json)
    cat_ids = dataset_meta({**data, "mask_names": names} if isinstance(data, dict) else data, src_json)[
        "thing_dataset_id_to_contiguous_id"
    ]
    categories, dropped = _kept_categories(src_json, data, set(drop_classes), report)
    root = Path(image_root) if image_root is not None else src_json.parent
    images, sizes, all_image_ids = [], {}, check_image_ids(data["images"], src_json)
    for i, img in enumerate(data["images"]):
        size = (img.get("height"), img.get("width")) if isinstance(img, dict) else (None, None)
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str) and _positive(*size)):
            report.add(
                "skipped images",
                f"{src_json} images[{i}]",
                "an image needs 'id', 'file_name' and positive integer 'height' and 'width'",
            )
            continue
        path = _check_image(root / img["file_name"], img["file_name"], f"{src_json} images[{i}]", report)
        images.append({**img, "file_name": os.path.abspath(path)})
        sizes[img["id"]] = size
    anns: list[dict] = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{src_json} annotation id={ann.get('id', '?') if isinstance(ann, dict) else '?'} (index {i})"
        if not isinstance(ann, dict):
            report.add("skipped annotations", where, "not an object")
            report.instance(None, "not an object")
            continue
        fields = [f for f in ann if f in fmap.targets or (f not in COCO_KEYS and _looks_like_segmentation(ann[f]))]
        for f in fields:
            report.read(f)
        why = (
            "unknown image_id"
            if ann.get("image_id") not in all_image_ids
            else "its image was skipped"
            if ann.get("image_id") not in sizes
            else "class dropped"
            if ann.get("category_id") in dropped
            else "unknown category_id"
            if ann.get("category_id") not in cat_ids
            else None
        )
        if why is None:
            h, w = sizes[ann["image_id"]]
            for f in fmap.targets:
                if f not in ann:
                    report.add("missing fields", where, f"no field '{f}': {_names(fmap.get(f))} get nothing from it")
            parts: dict[str, list] = {n: [] for n in names}
            used = []
            for f in fields:
                if f not in fmap.targets:
                    report.skip(f, "not mapped")
                    continue
                segm = clean_segmentation(ann[f], h, w, f"{where} field '{f}'", report)
                if not segm:
                    report.skip(f, "no usable geometry")
                    continue
                for _, name in fmap.get(f):
                    parts[name].append(segm)
                used.append(f)
            masks = {n: _union(parts[n], h, w) for n in names}
            why = None if used else "no usable mask"
        if why is not None:
            report.add(
                "skipped annotations",
                where,
                f"no usable mask among {names}"
                if why == "no usable mask"
                else f"{why} {ann.get('image_id' if 'image' in why else 'category_id')!r}",
            )
            report.instance(None, why)
            for f in fields if why != "no usable mask" else ():  # else each field was skipped for its reason
                report.skip(f, why)
            continue
        new = make_annotation(len(anns) + 1, ann["image_id"], ann["category_id"], masks, h, w, names)
        new["iscrowd"] = int(ann.get("iscrowd", 0) or 0)
        anns.append(new)
        report.instance(new["multimask"])
        for f in used:
            report.used(f, _names(fmap.get(f)))
    info = {
        "description": f"imported from {src_json.name}",
        "field_map": {k: _names(t) for k, t in fmap.targets.items()},
    }
    return multimask_document(images, categories, anns, names, info=info)


def import_labelme(
    folder: str | Path,
    out_json: str | Path,
    label_map: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str] | None = None,
    *,
    report: ImportReport | None = None,
    **kwargs: Any,
) -> ImportReport:
    """Folder of labelme JSON files (one per image) -> multimask JSON, written atomically, with its report
    (`<out>.report.json`); `file_name`s relative to the folder of `out_json`. As `labelme_document`."""
    out_json = Path(out_json)
    report = report if report is not None else ImportReport()
    ignore = (out_json, out_json.with_suffix(".report.json"))  # written into the folder by an earlier import
    _write_document(out_json, labelme_document(folder, label_map, report=report, ignore=ignore, **kwargs), report)
    return report


def labelme_document(
    folder: str | Path,
    label_map: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str] | None = None,
    *,
    default_class: str | None = None,
    mask_names: Sequence[str] | None = None,
    report: ImportReport | None = None,
    ignore: Iterable[Path] = (),
) -> dict:
    """A folder of labelme JSON files (one per image) as a multimask dataset (a dict; image paths absolute).

    Shapes sharing a `group_id` in one file form one instance; a shape whose `group_id` is null is an
    instance on its own. `label_map` is a mapping (see `multimask.data.mapping`) of labels to "MASK" or
    "CLASS:MASK": several labels mapped to one mask name are united, one label may feed several. The class
    is the one its shapes' targets name, else `default_class`; a map that names no class without
    `default_class` is refused (ValueError). With `label_map` None, labels "class/mask" (as written by
    `export_labelme`) are parsed. `mask_names` defaults to the order of the targets in `label_map`, else to
    the names recorded by `export_labelme`, else ("primary", "secondary"). Polygon and rectangle shapes are
    read; others are skipped and reported. Images are checked (missing ones reported by name). JSON files in
    `ignore` are not read. What was used, repaired or skipped goes to `report`.
    """
    folder = Path(folder)
    report = report if report is not None else ImportReport()
    report.source_kind = "label"
    smap = build_map(label_map, "label map") if label_map is not None else None
    if smap is not None and not smap.has_class and default_class is None:
        raise ValueError(
            "label map: no class given: pass --class NAME (the app: Class) for every instance, or map "
            "labels to CLASS:MASK (e.g. Head_a=worm:primary)"
        )
    own = {Path(p).resolve() for p in ignore}
    docs = []
    for path in sorted(p for p in folder.glob("*.json") if p.resolve() not in own):
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
        mask_names = smap.mask_names if smap else recorded[0] if recorded else DEFAULT_MASK_NAMES
    names = check_mask_names(mask_names, "mask_names")
    unknown = [m for m in (smap.mask_names if smap else []) if m not in names]
    if unknown:
        raise ValueError(f"label map: mask names {unknown} are not among mask_names {names}")

    images: list[dict] = []
    anns: list[dict] = []
    classes: dict[str, int] = {}  # class name -> category id, in order of first appearance
    for path, doc in docs:
        size = _image_size(path, doc, report)
        if size is None:
            for shape in doc["shapes"]:
                key = _label_key(shape)
                report.read(key)
                report.skip(key, "file skipped")
            continue
        h, w = size
        image_id = len(images) + 1
        image = _check_image(path.parent / doc["imagePath"].replace("\\", "/"), doc["imagePath"], str(path), report)
        images.append({"id": image_id, "height": h, "width": w, "file_name": os.path.abspath(image)})
        for where, members in _instances(path, doc["shapes"], report):
            masks: dict[str, list] = {n: [] for n in names}
            found, used = set(), []  # classes named by the targets; (label, mask names) of usable shapes
            for j, shape in members:
                key = _label_key(shape)
                report.read(key)
                here = f"{path} shape {j} (label {shape.get('label')!r})"
                targets = _targets(shape, smap, names)
                poly = _shape_polygon(shape) if not isinstance(targets, str) else targets
                if isinstance(poly, str):
                    report.add("skipped shapes", here, poly)
                    report.skip(key, poly)
                    continue
                parts = clean_polygons([poly], h, w, here, report)
                if not parts:
                    report.skip(key, "no usable polygon")
                    continue
                for cls, name in targets:
                    masks[name] += parts
                    found.update([cls] if cls else [])
                used.append((key, _names(targets)))
            why = (
                "no usable shape"
                if not used
                else "conflicting classes"
                if len(found) > 1
                else "no class"
                if not found and default_class is None
                else None
            )
            if why is not None:
                detail = {
                    "no usable shape": f"no usable mask among {names}",
                    "conflicting classes": f"conflicting classes {sorted(found)}",
                    "no class": "no class: its labels map to no CLASS:MASK and no default class is given",
                }[why]
                report.add("skipped annotations", where, detail)
                report.instance(None, why)
                for key, _ in used:
                    report.skip(key, f"instance skipped: {why}")
                continue
            cat_id = classes.setdefault(found.pop() if found else default_class, len(classes) + 1)
            new = make_annotation(len(anns) + 1, image_id, cat_id, masks, h, w, names)
            anns.append(new)
            report.instance(new["multimask"])
            for key, into in used:
                report.used(key, into)
    categories = [{"id": i, "name": c} for c, i in classes.items()]
    info = {"description": f"imported from labelme folder {folder.name}"}
    return multimask_document(images, categories, anns, names, info=info)


def _write_document(out_json: str | Path, doc: dict, report: ImportReport) -> None:
    """Write an importer's dataset (image paths relative to `out_json`'s folder) and its report."""
    write_document(out_json, doc)
    report.write_json(out_json)


def export_labelme(src_json: str | Path, out_folder: str | Path, *, image_root: str | Path | None = None) -> Report:
    """Multimask JSON -> labelme folder: one JSON per image (`labelme_documents`), images not copied;
    `imagePath` is relative to the output file."""
    report = Report()
    docs = labelme_documents(src_json, image_root=image_root, report=report)
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        image = os.path.relpath(doc["imagePath"], os.path.abspath(out_folder))
        atomic_write_json(out_folder / name, {**doc, "imagePath": image}, indent=2)
    return report


def labelme_documents(
    src_json: str | Path, *, image_root: str | Path | None = None, report: Report | None = None
) -> dict[str, dict]:
    """A multimask JSON as labelme files: {file name: labelme document}, `imagePath` absolute.

    Shapes are labelled "class/mask" with `group_id` = the instance number in the image (from 1); `imageData` is
    null. RLE masks become polygons via OpenCV contours; labelme polygons cannot have holes, so holes are filled
    and reported (in `report`, with missing images).
    """
    report = report if report is not None else Report()
    dicts, meta = load_multimask_json(src_json, image_root, check_images=False, report=report)
    names, classes = meta["mask_names"], meta["thing_classes"]
    docs: dict[str, dict] = {}
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
                for poly in traced_polygons(ann["multimask"][name], h, w, where, report, "labelme", "skipped polygons"):
                    shapes.append(
                        {
                            "label": f"{classes[ann['category_id']]}/{name}",
                            "points": np.asarray(poly).reshape(-1, 2).tolist(),
                            "group_id": k,
                            "shape_type": "polygon",
                            "flags": {},
                            "description": "",
                        }
                    )
        docs[f"{stem}.json"] = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": os.path.abspath(image),
            "imageData": None,
            "imageHeight": h,
            "imageWidth": w,
            LABELME_NAMES_KEY: list(names),
        }
    return docs


def _targets(shape: dict, smap: SourceMap | None, names: list[str]) -> tuple[Target, ...] | str:
    """(class or None, mask name) targets of a labelme shape's label, or why it cannot be used."""
    label = shape.get("label")
    if not isinstance(label, str):
        return "the label is not a string"
    if smap is not None:
        return smap.get(label) or "not mapped"
    cls, sep, name = label.rpartition("/")
    if not sep or not cls:
        return "label is not of the form 'class/mask' (give a label map)"
    return ((cls, name),) if name in names else f"mask name {name!r} is not among {names}"


def _label_key(shape: Any) -> str:
    label = shape.get("label") if isinstance(shape, dict) else None
    return label if isinstance(label, str) else repr(label)


def _names(targets: tuple[Target, ...]) -> list[str]:
    return [name for _, name in targets]


def _kept_categories(src_json: Path, data: dict, drop: set[str], report: ImportReport) -> tuple[list[dict], set]:
    """The categories to keep, and the ids of those dropped (asked for, or without annotations: reported)."""
    unknown = drop - {c["name"] for c in data["categories"]}
    if unknown:
        raise ValueError(f"{src_json}: no category named {sorted(unknown)} to drop")
    used = {ann.get("category_id") for ann in data["annotations"] if isinstance(ann, dict)}
    kept, dropped = [], set()
    for c in data["categories"]:
        why = "asked to drop" if c["name"] in drop else None if c["id"] in used else "no annotations"
        if why is None:
            kept.append(c)
            continue
        dropped.add(c["id"])
        report.dropped_classes[c["name"]] = why
        report.add("dropped classes", f"{src_json} category id={c['id']} {c['name']!r}", why)
    if not kept:
        raise DatasetError(f"{src_json}: no category is left with annotations")
    return kept, dropped


def _check_image(path: Path, name: str, where: str, report: ImportReport) -> Path:
    """Count an image; a missing one is reported by `name`, as its file names it (not as a server path)."""
    report.images_read += 1
    if not path.is_file():
        report.images_missing.append(name)
        report.add("missing images", where, f"image not found: {name}")
    return path


def _looks_like_segmentation(value: Any) -> bool:
    """A non-empty polygon list or RLE dict (so an unmapped mask field is counted, not ignored)."""
    return (isinstance(value, dict) and "counts" in value) or (
        isinstance(value, list) and bool(value) and all(isinstance(p, list) for p in value)
    )


def _union(segms: list, height: int, width: int) -> list | dict:
    """The union of cleaned segmentations: polygon parts together, or one RLE when any is an RLE."""
    if all(isinstance(s, list) for s in segms):
        return [p for s in segms for p in s]
    rle = mask_util.merge([to_rle(s, height, width) for s in segms])
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _shape_polygon(shape: dict) -> list[float] | str:
    """Flat polygon of a labelme polygon or rectangle shape, or why it cannot be used."""
    kind, pts = shape.get("shape_type") or "polygon", shape.get("points")
    if kind not in LABELME_SHAPES:
        return f"shape_type {kind!r} is not supported (only {', '.join(LABELME_SHAPES)})"
    if not isinstance(pts, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in pts
    ):
        return "points must be a list of [x, y] pairs of numbers"
    if kind == "rectangle":
        if len(pts) != 2:
            return "a rectangle needs 2 points"
        (x0, x1), (y0, y1) = sorted((pts[0][0], pts[1][0])), sorted((pts[0][1], pts[1][1]))
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    return [float(v) for p in pts for v in p]


def _instances(path: Path, shapes: list, report: ImportReport) -> list[tuple[str, list[tuple[int, dict]]]]:
    """Shapes grouped by group_id (null: one instance per shape), in order of first appearance."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for j, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            report.add("skipped shapes", f"{path} shape {j}", "not an object")
            report.read(_label_key(shape))
            report.skip(_label_key(shape), "not an object")
            continue
        gid = shape.get("group_id")
        key = ("shape", j) if gid is None else ("group", gid)
        groups.setdefault(key, []).append((j, shape))
    return [
        (f"{path} {'group_id' if kind == 'group' else 'shape'} {k}", members) for (kind, k), members in groups.items()
    ]


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


def _positive(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
