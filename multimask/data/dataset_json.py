"""The dataset format on disk (see datasets/README.md): read with checks, build, and write atomically."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from ..io import DatasetError, atomic_write_json, read_json
from .geometry import Report, clean_segmentation, segm_area, segm_bbox, union_bbox

logger = logging.getLogger(__name__)

DEFAULT_MASK_NAMES = ("primary", "secondary")


def load_multimask_json(
    json_file: str | Path,
    image_root: str | Path | None = None,
    *,
    mask_names: Sequence[str] | None = None,
    check_images: bool = True,
    report: Report | None = None,
    source: str | Path | None = None,
) -> tuple[list[dict], dict]:
    """Read a multimask COCO JSON into detectron2 dataset dicts and metadata.

    Returns `(dicts, meta)`; `meta` has `thing_classes`, `mask_names`, `thing_dataset_id_to_contiguous_id`.
    Each annotation dict has `bbox` (XYWH_ABS, enclosing all its masks), contiguous `category_id`,
    `multimask` {name: polygons | RLE | []} and `segmentation` (the first mask). Problems that can be
    repaired or skipped are recorded in `report` (and logged); unusable files raise DatasetError. Messages name
    `source` when given (the user's file, for a run's frozen copy of it), else `json_file`.
    """
    json_file = Path(json_file)
    return multimask_dicts(
        read_json(json_file),
        image_root if image_root is not None else json_file.parent,
        source=source if source is not None else json_file,
        mask_names=mask_names,
        check_images=check_images,
        report=report,
    )


def multimask_dicts(
    data: Any,
    image_root: str | Path,
    *,
    source: str | Path,
    mask_names: Sequence[str] | None = None,
    check_images: bool = True,
    report: Report | None = None,
) -> tuple[list[dict], dict]:
    """`load_multimask_json` of a dataset already in memory (e.g. an importer's `*_document`); messages name
    `source`, image `file_name`s are taken relative to `image_root` (absolute ones stay as they are)."""
    image_root = Path(image_root)
    report = report if report is not None else Report()
    shown = Path(source)
    meta = dataset_meta(data, shown, mask_names)
    file_names, names = data["mask_names"], meta["mask_names"]
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    images, all_ids = {}, check_image_ids(data["images"], shown)
    for i, img in enumerate(data["images"]):
        where = f"{shown} images[{i}]"
        if not isinstance(img.get("file_name"), str):
            raise DatasetError(f"{where}: an image needs 'id', 'file_name', 'height' and 'width'")
        h, w = img.get("height"), img.get("width")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise DatasetError(f"{where} ({img['file_name']}): height and width must be positive integers")
        path = image_root / img["file_name"]
        if check_images and not path.is_file():
            report.add("skipped images", where, f"image file not found: {path}")
            continue
        images[img["id"]] = {"file_name": str(path), "height": h, "width": w, "image_id": img["id"], "annotations": []}

    per_image: dict[Any, list] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        where = f"{shown} annotation id={ann.get('id', '?') if isinstance(ann, dict) else '?'} (index {i})"
        if not isinstance(ann, dict):
            report.add("skipped annotations", where, "not an object")
            continue
        img = images.get(ann.get("image_id"))
        if img is None:
            if ann.get("image_id") not in all_ids:  # else its image was skipped, and reported, above
                report.add("skipped annotations", where, f"unknown image_id {ann.get('image_id')!r}")
            continue
        if ann.get("category_id") not in id_map:
            report.add("skipped annotations", where, f"unknown category_id {ann.get('category_id')!r}")
            continue
        mm = ann.get("multimask")
        if not isinstance(mm, dict):
            report.add("skipped annotations", where, "no 'multimask' object")
            continue
        extra = [k for k in mm if k not in file_names]
        if extra:
            raise DatasetError(f"{where}: mask names {extra} are not declared in 'mask_names' {file_names}")
        for n in names:
            if n not in mm:
                report.add("masks missing (taken as absent)", where, f"no mask '{n}' (write [] for an absent mask)")
        masks = {
            n: clean_segmentation(mm.get(n, []), img["height"], img["width"], f"{where} mask '{n}'", report)
            for n in names
        }
        bbox = union_bbox([segm_bbox(m, img["height"], img["width"]) for m in masks.values() if m])
        if bbox is None or bbox[2] <= 0 or bbox[3] <= 0:
            report.add("skipped annotations", where, f"no usable mask among {names}")
            continue
        per_image[ann["image_id"]].append(
            {
                "id": ann.get("id"),
                "bbox": bbox,
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                "iscrowd": int(ann.get("iscrowd", 0) or 0),
                "multimask": masks,
                "segmentation": masks[names[0]],
            }
        )
    dicts = []
    for image_id, rec in images.items():
        rec["annotations"] = per_image.get(image_id, [])
        dicts.append(rec)
    if report:
        logger.warning("%s: %s", shown, report.summary())
    return dicts, meta


def dataset_meta(data: Any, json_file: str | Path, mask_names: Sequence[str] | None = None) -> dict:
    """Classes and mask names of a parsed dataset file, checked; `mask_names` selects a subset."""
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(f"{json_file}: expected a COCO object with lists 'images', 'annotations', 'categories'")
    file_names = data.get("mask_names")
    if not isinstance(file_names, list) or not file_names or not all(isinstance(n, str) for n in file_names):
        raise DatasetError(
            f'{json_file}: no \'mask_names\' list (e.g. ["primary", "secondary"]); '
            "convert other layouts with `python -m multimask import`"
        )
    names = list(mask_names) if mask_names is not None else list(file_names)
    unknown = [n for n in names if n not in file_names]
    if unknown:
        raise DatasetError(f"{json_file}: mask names {unknown} are not in this dataset, which has {file_names}")
    cats = sorted(_checked_categories(data["categories"], Path(json_file)), key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in cats],
        "mask_names": names,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def check_image_ids(images: list, json_file: str | Path) -> set:
    """The ids of a COCO 'images' list; an image that is not an object, or whose id is missing, not an integer
    or string, or used twice, raises DatasetError (annotations would otherwise land on the wrong image)."""
    first: dict[Any, int] = {}
    for i, img in enumerate(images):
        image_id = img.get("id") if isinstance(img, dict) else None
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise DatasetError(f"{json_file} images[{i}]: an image needs an integer or string 'id'")
        if image_id in first:
            raise DatasetError(
                f"{json_file} images[{i}]: image id {image_id!r} is also the id of images[{first[image_id]}]"
            )
        first[image_id] = i
    return set(first)


def _checked_categories(cats: list, json_file: Path) -> list[dict]:
    seen = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DatasetError(f"{json_file} categories[{i}]: a category needs an integer 'id' and a 'name'")
        if c["id"] in seen:
            raise DatasetError(f"{json_file} categories[{i}]: duplicate category id {c['id']}")
        seen.add(c["id"])
    if not cats:
        raise DatasetError(f"{json_file}: 'categories' is empty")
    return cats


def make_annotation(
    ann_id: int,
    image_id: Any,
    category_id: int,
    multimask: dict[str, list | dict],
    height: int,
    width: int,
    mask_names: Sequence[str],
) -> dict:
    """One annotation in the on-disk format: bbox over all masks, `segmentation` mirrors the first."""
    masks = {n: multimask.get(n) or [] for n in mask_names}
    bbox = union_bbox([segm_bbox(m, height, width) for m in masks.values() if m])
    if bbox is None:
        raise ValueError(f"annotation {ann_id}: every mask is empty")
    first = masks[mask_names[0]] or empty_rle(height, width)  # plain COCO tools cannot read `[]`
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": 0,
        "bbox": bbox,
        "area": segm_area(first, height, width),
        "segmentation": first,
        "multimask": masks,
    }


def empty_rle(height: int, width: int) -> dict:
    """The RLE of an all-zero mask, as JSON-ready text."""
    return {
        "size": [height, width],
        "counts": mask_util.encode(np.zeros((height, width), np.uint8, order="F"))["counts"].decode("ascii"),
    }


def multimask_document(
    images: list[dict],
    categories: list[dict],
    annotations: list[dict],
    mask_names: Sequence[str],
    info: dict | None = None,
) -> dict:
    """A dataset file's content (annotations as built by `make_annotation`)."""
    return {
        "info": info or {"description": "multimask dataset"},
        "mask_names": list(mask_names),
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }


def write_document(path: str | Path, doc: dict) -> None:
    """Write a dataset held as data (`multimask_document`, image paths absolute or relative to the working
    directory) atomically, its image `file_name`s made relative to the file's folder, where loading looks."""
    folder = os.path.abspath(Path(path).parent)
    images = [
        {**img, "file_name": Path(os.path.relpath(os.path.abspath(img["file_name"]), folder)).as_posix()}
        for img in doc["images"]
    ]
    atomic_write_json(path, {**doc, "images": images})


def write_multimask_json(
    path: str | Path,
    images: list[dict],
    categories: list[dict],
    annotations: list[dict],
    mask_names: Sequence[str],
    info: dict | None = None,
) -> None:
    """Write a dataset file atomically (annotations as built by `make_annotation`)."""
    atomic_write_json(path, multimask_document(images, categories, annotations, mask_names, info))
