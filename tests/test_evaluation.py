"""MultiMaskEvaluator: COCO AP per mask name; ground truth fed as predictions scores 100."""

import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.structures.masks import polygons_to_bitmask

from multimask.data import register_multimask_dataset
from multimask.data.geometry import to_rle
from multimask.evaluation import MultiMaskEvaluator, format_results


def _gt_as_predictions(d, names, drop_secondary_of=()):
    h, w = d["height"], d["width"]
    anns = d["annotations"]
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(
        torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns], dtype=torch.float32
        ).reshape(-1, 4)
    )
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
    masks = np.zeros((len(anns), len(names), h, w), dtype=bool)
    for i, a in enumerate(anns):
        for k, n in enumerate(names):
            segm = a["multimask"][n]
            if not segm or (n == "secondary" and i in drop_secondary_of):
                continue
            if isinstance(segm, list):
                masks[i, k] = polygons_to_bitmask(segm, h, w)
            else:
                masks[i, k] = mask_util.decode(to_rle(segm, h, w)).astype(bool)
    inst.pred_multimask = torch.from_numpy(masks)
    return {"instances": inst}


def _run(name, names, drop=()):
    ev = MultiMaskEvaluator(name, distributed=False)
    ev.reset()
    for d in DatasetCatalog.get(name):
        ev.process([{"image_id": d["image_id"]}], [_gt_as_predictions(d, names, drop)])
    return ev.evaluate()


def test_ground_truth_as_predictions_scores_100_per_mask(synth_data):
    register_multimask_dataset("eval_gt", synth_data["val"])
    res = _run("eval_gt", ["primary", "secondary"])
    assert set(res) == {"bbox", "segm/primary", "segm/secondary"}
    for task in res:
        assert res[task]["AP"] == pytest.approx(100.0), task
        assert res[task]["AP50"] == pytest.approx(100.0)
        classes_with_gt = [k for k in res[task] if k.startswith("AP-") and not math.isnan(res[task][k])]
        assert classes_with_gt and all(res[task][k] == pytest.approx(100.0) for k in classes_with_gt)
    assert "segm/primary" in format_results(res)


def test_missing_predicted_secondary_lowers_only_that_name(synth_data):
    register_multimask_dataset("eval_drop", synth_data["val"])
    d0 = DatasetCatalog.get("eval_drop")
    has_sec = [i for i, a in enumerate(d0[0]["annotations"]) if a["multimask"]["secondary"]]
    assert has_sec, "the first val image needs an instance with a secondary mask"
    ev = MultiMaskEvaluator("eval_drop", distributed=False)
    ev.reset()
    for j, d in enumerate(d0):
        ev.process(
            [{"image_id": d["image_id"]}], [_gt_as_predictions(d, ["primary", "secondary"], has_sec if j == 0 else ())]
        )
    res = ev.evaluate()
    assert res["segm/primary"]["AP"] == pytest.approx(100.0)
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["segm/secondary"]["AP"] < 100.0


def test_no_predictions_give_zero_ap(synth_data):
    register_multimask_dataset("eval_none", synth_data["val"])
    ev = MultiMaskEvaluator("eval_none", distributed=False)
    ev.reset()
    for d in DatasetCatalog.get("eval_none"):
        empty = _gt_as_predictions(d, ["primary", "secondary"])["instances"][torch.zeros(0, dtype=torch.long)]
        ev.process([{"image_id": d["image_id"]}], [{"instances": empty}])
    res = ev.evaluate()
    assert all(res[t]["AP"] == 0.0 for t in res)


def test_saved_results_turn_nan_into_null_and_keep_names(tmp_path):
    import json
    import math

    from multimask.evaluation import save_results

    save_results({"segm/primary": {"AP": math.nan, "AP-NaNoplankton": 1.0}}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"segm/primary": {"AP": None, "AP-NaNoplankton": 1.0}}


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _image(*annotations, size=100):
    return {
        "image_id": 1,
        "height": size,
        "width": size,
        "annotations": [
            {"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": cls, "multimask": masks}
            for (x0, y0, x1, y1), cls, masks in annotations
        ],
    }


def _record(cls, box, masks, size=100, score=1.0):
    """A prediction record with masks given as squares (None: an empty mask)."""
    out = {
        name: _rle(polygons_to_bitmask(_square(*sq), size, size) if sq else np.zeros((size, size), bool))
        for name, sq in masks.items()
    }
    x0, y0, x1, y1 = box
    return {"image_id": 1, "category_id": cls, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score, "multimask": out}


def _rle(m):
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_a_mask_predicted_on_an_instance_without_that_mask_is_ignored_but_one_elsewhere_is_not():
    from multimask.evaluation import evaluate_records

    names = ["primary", "secondary"]
    gt = [
        _image(
            ((10, 10, 40, 40), 0, {"primary": _square(10, 10, 40, 40), "secondary": []}),
            ((50, 50, 90, 90), 0, {"primary": _square(50, 50, 90, 90), "secondary": _square(60, 60, 70, 70)}),
        )
    ]
    exact = [
        _record(0, (10, 10, 40, 40), {"primary": (10, 10, 40, 40), "secondary": None}),
        _record(0, (50, 50, 90, 90), {"primary": (50, 50, 90, 90), "secondary": (60, 60, 70, 70)}),
    ]
    assert evaluate_records(gt, exact, names, ["a"])["segm/secondary"]["AP"] == pytest.approx(100.0)
    # instance A has no secondary drawn: a secondary predicted inside it is neither a hit nor a false positive
    on_a = [
        _record(0, (10, 10, 40, 40), {"primary": (10, 10, 40, 40), "secondary": (15, 15, 35, 35)}, score=1.0),
        _record(0, (50, 50, 90, 90), {"primary": (50, 50, 90, 90), "secondary": (60, 60, 70, 70)}, score=0.9),
    ]
    assert evaluate_records(gt, on_a, names, ["a"])["segm/secondary"]["AP"] == pytest.approx(100.0)
    # one predicted where there is no object at all is a false positive, ranked above the hit
    astray = [
        _record(0, (0, 0, 100, 100), {"primary": (0, 60, 8, 99), "secondary": (0, 60, 8, 99)}, score=1.0),
        exact[1] | {"score": 0.9},
    ]
    res = evaluate_records(gt, astray, names, ["a"])
    assert res["segm/secondary"]["AP"] < 60.0


def test_box_size_buckets_use_the_mask_area_and_classes_without_ground_truth_are_nan():
    from multimask.evaluation import evaluate_records

    thin = [[0, 0, 3, 0, 99, 96, 99, 99, 96, 99, 0, 3]]  # a sliver: mask area < 32^2, its box > 96^2
    gt = [_image(((0, 0, 99, 99), 1, {"primary": thin, "secondary": []}))]
    bitmask = polygons_to_bitmask(thin, 100, 100)
    pred = {
        "image_id": 1,
        "category_id": 1,
        "bbox": [0, 0, 99, 99],
        "score": 1.0,
        "multimask": {"primary": _rle(bitmask), "secondary": _rle(np.zeros_like(bitmask))},
    }
    res = evaluate_records(gt, [pred], ["primary", "secondary"], ["a", "b"])
    assert res["bbox"]["APs"] == pytest.approx(100.0) and math.isnan(res["bbox"]["APl"])
    assert res["bbox"]["AP-b"] == pytest.approx(100.0) and math.isnan(res["bbox"]["AP-a"])
    assert math.isnan(res["segm/secondary"]["AP"]) and math.isnan(res["segm/secondary"]["AP-b"])
    none = evaluate_records(gt, [], ["primary", "secondary"], ["a", "b"])
    assert none["segm/primary"]["AP-b"] == 0.0 and math.isnan(none["segm/primary"]["AP-a"])
