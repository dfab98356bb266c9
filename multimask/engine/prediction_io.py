"""The predictions JSON that `multimask predict` writes (predictions.json) and the app's Predict tab offers:
{"mask_names", "classes", "images": [{"file_name", "height", "width", "overlay", "instances"}], "skipped"}; each
instance is an `evaluation.instances_to_records` record (XYWH box, score, category id, one COCO RLE per mask
name) plus its class name."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from detectron2.structures import Instances

from ..evaluation import instances_to_records


def prediction_records(
    instances: Instances, image_id: str, mask_names: Sequence[str], class_names: Sequence[str]
) -> list[dict]:
    """JSON-ready records of one image's predicted `instances` (on the CPU), with class names."""
    records = instances_to_records(instances, image_id, mask_names)
    for r in records:
        c = r["category_id"]
        r["class_name"] = class_names[c] if 0 <= c < len(class_names) else str(c)
    return records


def image_entry(file_name: str, height: int, width: int, records: list[dict], overlay: str | None = None) -> dict:
    """One image of the predictions JSON: its file, size in pixels, overlay file name and instance records."""
    return {
        "file_name": file_name,
        "height": int(height),
        "width": int(width),
        "overlay": overlay,
        "instances": records,
    }


def predictions_document(
    images: Iterable[dict], mask_names: Sequence[str], class_names: Sequence[str], skipped: Iterable[str] = ()
) -> dict:
    """The whole predictions JSON: `image_entry`s and messages about images that were skipped."""
    return {
        "mask_names": list(mask_names),
        "classes": list(class_names),
        "images": list(images),
        "skipped": list(skipped),
    }
