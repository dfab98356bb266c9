"""bench/part_ceiling.py: the AP a model's detections would reach with perfect masks, directly or through a grid."""

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from bench.part_ceiling import with_true_masks
from multimask.evaluation import evaluate_records

NAMES, CLASSES = ["primary", "secondary"], ["cell"]


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _dataset():
    ann = {
        "bbox": [8, 8, 48, 48],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,
        "multimask": {"primary": _square(8, 8, 56, 56), "secondary": _square(11, 11, 17, 15)},
    }
    return [{"image_id": 1, "height": 64, "width": 64, "annotations": [ann]}]


def _prediction(bbox):
    blank = np.zeros((64, 64), bool)
    coarse = blank.copy()
    coarse[8:56, 8:56] = True
    return {
        "image_id": 1,
        "category_id": 0,
        "bbox": bbox,
        "score": 0.9,
        "multimask": {"primary": _rle(coarse), "secondary": _rle(blank)},
    }


def test_perfect_parts_give_the_detections_ceiling_and_a_coarse_grid_lowers_it():
    dicts = _dataset()
    records = [_prediction([8.0, 8.0, 48.0, 48.0])]
    assert evaluate_records(dicts, records, NAMES, CLASSES)["segm/secondary"]["AP"] == 0.0  # no part predicted

    perfect = with_true_masks(dicts, records, ["secondary"], match_iou=0.5)
    assert evaluate_records(dicts, perfect, NAMES, CLASSES)["segm/secondary"]["AP"] > 99
    assert perfect[0]["multimask"]["primary"] == records[0]["multimask"]["primary"]  # only the named mask

    # a 6 x 4 pixel part drawn on 4 x 4 cells of a 48-pixel box (12 pixels a cell) cannot keep its shape
    coarse = with_true_masks(dicts, records, ["secondary"], match_iou=0.5, grid=4)
    part = mask_util.decode(coarse[0]["multimask"]["secondary"])
    truth = mask_util.decode(
        mask_util.frPyObjects(_dataset()[0]["annotations"][0]["multimask"]["secondary"], 64, 64)
    ).max(axis=2)
    assert (part & truth).sum() / max((part | truth).sum(), 1) < 0.75
    assert evaluate_records(dicts, coarse, NAMES, CLASSES)["segm/secondary"]["AP"] < 50


def test_a_detection_matching_no_instance_keeps_its_own_masks():
    dicts = _dataset()
    records = [_prediction([40.0, 40.0, 20.0, 20.0])]  # box IoU with the instance's is well under 0.5
    assert with_true_masks(dicts, records, ["secondary"], match_iou=0.5) == records
