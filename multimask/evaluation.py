"""`MultiMaskEvaluator`: COCO AP (pycocotools) for boxes and for each mask name separately."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode, Instances
from detectron2.utils import comm
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .data.geometry import is_empty, segm_area, union_area
from .data.stats import format_table
from .io import atomic_write_json

logger = logging.getLogger(__name__)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def instances_to_records(instances: Instances, image_id, mask_names: Sequence[str]) -> list[dict]:
    """JSON-ready predictions of one image: box (XYWH), score, contiguous class, one RLE per mask name."""
    n = len(instances)
    if n == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    masks = instances.pred_multimask.numpy() if instances.has("pred_multimask") else None
    records = []
    for i in range(n):
        rec = {
            "image_id": image_id,
            "category_id": int(instances.pred_classes[i]),
            "bbox": [float(v) for v in boxes[i]],
            "score": float(instances.scores[i]),
        }
        if masks is not None:
            rec["multimask"] = {}
            for k, name in enumerate(mask_names):
                rle = mask_util.encode(np.asfortranarray(masks[i, k].astype(np.uint8)))
                rec["multimask"][name] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        records.append(rec)
    return records


class MultiMaskEvaluator(DatasetEvaluator):
    """Box AP and, per mask name, mask AP (`segm/<name>`: AP, AP50, AP75, APs/m/l and AP per class).

    For a mask name, ground truth is the instances that have that mask, and predictions are the predicted
    instances whose mask of that name is non-empty. An instance without the mask is ignored for that name: its
    box becomes an ignore region (as COCO's crowd regions), so a mask predicted there is neither a hit nor a
    false positive, just as it adds nothing to that name's training loss. Size buckets (APs/m/l) use mask
    areas, boxes included (the union of the instance's masks), as in COCO.
    """

    def __init__(
        self,
        dataset_name: str,
        mask_names: Sequence[str] | None = None,
        output_dir: str | Path | None = None,
        distributed: bool = True,
    ):
        meta = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.mask_names = list(mask_names or meta.mask_names)
        self.classes = list(meta.thing_classes)
        self.output_dir = Path(output_dir) if output_dir else None
        self.distributed = distributed
        self._records: list[dict] = []

    def reset(self) -> None:
        self._records = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            self._records.extend(instances_to_records(inst, inp["image_id"], self.mask_names))

    def evaluate(self) -> OrderedDict:
        records = self._records
        if self.distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return OrderedDict()
        if self.output_dir:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.output_dir / "multimask_predictions.json", records)
        return evaluate_records(DatasetCatalog.get(self.dataset_name), records, self.mask_names, self.classes)


def evaluate_records(
    dataset_dicts: list[dict], records: list[dict], mask_names: Sequence[str], classes: Sequence[str]
) -> OrderedDict:
    """COCO AP of prediction records against dataset dicts (contiguous class ids, `multimask` masks)."""
    results = OrderedDict()
    gt = _coco_ground_truth(dataset_dicts, None, classes)
    dets = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in records]
    results["bbox"] = _coco_ap(gt, dets, "bbox", classes)
    for name in mask_names:
        gt = _coco_ground_truth(dataset_dicts, name, classes)
        dets = [
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                "score": r["score"],
                "segmentation": r["multimask"][name],
            }
            for r in records
            if "multimask" in r and not is_empty(r["multimask"][name])
        ]
        results[f"segm/{name}"] = _coco_ap(gt, dets, "segm", classes)
    return results


def _coco_ground_truth(dicts: list[dict], mask_name: str | None, classes: Sequence[str]) -> COCO:
    """An in-memory COCO object: every instance for boxes; for `mask_name`, the instances having that mask,
    and an ignore region (iscrowd, the box) for each instance without it."""
    images, anns = [], []
    for d in dicts:
        h, w = d["height"], d["width"]
        images.append({"id": d["image_id"], "height": h, "width": w})
        for a in d.get("annotations", []):
            bbox = [float(v) for v in BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS)]
            ann = {
                "id": len(anns) + 1,
                "image_id": d["image_id"],
                "category_id": a["category_id"],
                "iscrowd": a.get("iscrowd", 0),
                "bbox": bbox,
            }
            if mask_name is None:
                present = [m for m in a["multimask"].values() if not is_empty(m)]
                ann["area"] = union_area(present, h, w) if present else bbox[2] * bbox[3]
            elif not is_empty(segm := a["multimask"].get(mask_name) or []):
                ann["segmentation"], ann["area"] = copy.deepcopy(segm), segm_area(segm, h, w)
            else:
                x, y, bw, bh = bbox
                ann.update(iscrowd=1, segmentation=[[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], area=bw * bh)
            anns.append(ann)
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_ap(gt: COCO, dets: list[dict], iou_type: str, classes: Sequence[str]) -> dict[str, float]:
    """COCO's AP, AP50, ..., and AP per class: NaN where there is no ground truth, 0 where nothing was found."""
    with_gt = {a["category_id"] for a in gt.dataset["annotations"] if not a["iscrowd"]}
    if not with_gt:
        logger.warning("no ground truth for %s evaluation; its AP is NaN", iou_type)
        return {**{m: float("nan") for m in METRICS}, **{f"AP-{c}": float("nan") for c in classes}}
    if not dets:
        return {
            **{m: 0.0 for m in METRICS},
            **{f"AP-{c}": 0.0 if k in with_gt else float("nan") for k, c in enumerate(classes)},
        }
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug(out.getvalue())
    res = {m: float(ev.stats[i] * 100 if ev.stats[i] >= 0 else float("nan")) for i, m in enumerate(METRICS)}
    precision = ev.eval["precision"]  # (iou, recall, class, area, max_dets)
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        res[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return res


def format_results(results: dict) -> str:
    """A small text table: one row per task (bbox, segm/<name>), the main COCO metrics as columns."""
    rows = [f"{'task':<20}" + "".join(f"{m:>8}" for m in METRICS)]
    for task, res in results.items():
        rows.append(f"{task:<20}" + "".join(f"{res.get(m, float('nan')):>8.2f}" for m in METRICS))
    return "\n".join(rows)


def format_class_ap(results: dict) -> str:
    """AP per class (rows) for each task (columns: bbox, segm/<name>); `-` where a class has no ground truth."""
    classes = [k[3:] for k in next(iter(results.values()), {}) if k.startswith("AP-")]
    rows = [
        [c] + ["-" if math.isnan(ap := res.get(f"AP-{c}", float("nan"))) else f"{ap:.2f}" for res in results.values()]
        for c in classes
    ]
    return format_table(["class", *results], rows)


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def save_results(results: dict | list, path: str | Path) -> None:
    """Write evaluation results (or a list of them) as JSON, NaN as null."""
    atomic_write_json(path, _nan_to_none(results), indent=2)
