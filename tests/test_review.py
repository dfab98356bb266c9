"""The review queue: images ranked by how much a run's detections disagree with their labels."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from app.core.models.review import MATCH_IOU, labelled_objects, ranked, review_image
from app.views.label import LabelView
from tests.test_app import _make_run
from tests.test_label_view import _png

NAMES = ["primary", "secondary"]
H, W = 100, 120


def _square(x, y, size):
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def _inst(primary, secondary=None):
    return {"id": "a", "class": "leaf", "masks": {"primary": [primary], "secondary": [secondary] if secondary else []}}


def _objects(*instances):
    return labelled_objects(list(instances), NAMES, H, W)


def test_agreement_costs_nothing_and_each_kind_of_disagreement_is_named():
    obj, part = _square(10, 10, 40), _square(20, 20, 10)
    labels = _objects(_inst(obj, part))
    same = review_image("i", "a.png", labels, _objects(_inst(obj, part)), NAMES)
    assert same.score == 0 and same.reason() == "agrees" and same.iou == {"primary": 1.0, "secondary": 1.0}
    # The part predicted elsewhere in the object: a part/object mismatch, its IoU named.
    off = review_image("i", "a.png", labels, _objects(_inst(obj, _square(35, 35, 10))), NAMES)
    assert off.mismatched == 1 and off.missing == off.extra == 0
    assert off.score == pytest.approx(1.0) and "1 part mismatch · secondary IoU 0.00" in off.reason()
    # Nothing found: the object is missing; a second, unlabelled object found: extra.
    assert review_image("i", "a.png", labels, [], NAMES).reason() == "1 missing"
    both = _objects(_inst(obj, part), _inst(_square(70, 50, 30)))
    extra = review_image("i", "a.png", labels, both, NAMES)
    assert (extra.extra, extra.score) == (1, pytest.approx(0.5))
    # A label without a secondary is not compared on it.
    alone = review_image("i", "a.png", _objects(_inst(obj)), _objects(_inst(obj, part)), NAMES)
    assert alone.score == 0 and alone.iou["secondary"] is None


def test_objects_match_by_first_mask_at_iou_half_best_score_first():
    obj = _square(10, 10, 40)
    shifted = _square(10 + 40 - int(40 * MATCH_IOU), 10, 40)  # IoU 1/3 with obj: not the same object
    r = review_image("i", "a.png", _objects(_inst(obj)), _objects(_inst(shifted)), NAMES)
    assert (r.missing, r.extra) == (1, 1)
    # Two detections of one object: the first (best score) matches, the second is extra.
    r = review_image("i", "a.png", _objects(_inst(obj)), _objects(_inst(_square(12, 10, 40)), _inst(obj)), NAMES)
    assert (r.missing, r.extra) == (0, 1) and r.iou["primary"] == pytest.approx(38 / 42, abs=0.01)


def test_ranked_worst_first():
    obj = _square(10, 10, 40)
    labels = _objects(_inst(obj))
    reviews = [
        review_image("ok", "b.png", labels, _objects(_inst(obj)), NAMES),
        review_image("bad", "c.png", labels, [], NAMES),
        review_image("half", "a.png", labels, _objects(_inst(_square(14, 10, 40))), NAMES),
    ]
    assert [r.image_id for r in ranked(reviews)] == ["bad", "half", "ok"]


def test_labels_are_scaled_to_the_size_the_model_saw():
    (full,) = labelled_objects([_inst(_square(20, 20, 40))], NAMES, H // 2, W // 2, scale=2.0)
    (half,) = _objects(_inst(_square(10, 10, 20)))
    assert mask_util.area(full["primary"]) == pytest.approx(mask_util.area(half["primary"]), abs=2)


def test_the_view_ranks_labelled_images_and_steps_through_them(tmp_path):
    runs = tmp_path / "runs"
    _make_run(runs / "tiny")  # random weights, every score kept: it finds things the labels do not have
    view = LabelView(tmp_path / "data", runs)
    view.create_dataset("leaves", "leaf", "primary, secondary")
    view.upload("leaves", [_png(tmp_path, f"{k}.png", h=64, w=80) for k in range(3)])
    ids = [e["id"] for e in view.store.open("leaves").images()]
    view.save_annotations("leaves", ids[0], 0, [_inst(_square(5, 5, 30), _square(10, 10, 8))], None)
    view.save_annotations("leaves", ids[2], 0, [_inst(_square(40, 20, 20))], None)
    calls = []
    summary, table, queue, position = view.review.rank("leaves", "tiny", 0.0, lambda *a, **k: calls.append(a))
    assert sorted(queue) == sorted([ids[0], ids[2]]), "only labelled images are reviewed"
    assert list(table.columns) == ["#", "image", "score", "what differs"] and len(table) == 2
    assert list(table["score"]) == sorted(table["score"], reverse=True) and position == -1
    assert "Ranked 2 labelled image(s) by **tiny**" in summary and len(calls) == 2
    loads = view.predictors.loads
    again = view.review.rank("leaves", "tiny", 0.5, lambda *a, **k: None)
    assert view.predictors.loads == loads and again[2], "the detections are kept: another threshold re-scores"
    doc, pos, where = view.review.next("leaves", queue, position)
    assert json.loads(doc)["image_id"] == queue[0] and pos == 0 and where == "Image 1 of 2 in the queue."
    doc, pos, where = view.review.next("leaves", queue, pos)
    assert json.loads(doc)["image_id"] == queue[1] and pos == 1
    _, pos, where = view.review.next("leaves", queue, pos)
    assert pos == 1 and where == "End of the queue (2 image(s))."
    assert view.review.rank("leaves", None, 0.5)[0] == "⚠️ choose a trained run above first"
    refused = view.review.rank("leaves", "../escape", 0.5)
    assert "is not a valid run name" in refused[0] and refused[2] == []
    assert np.isfinite(table["score"]).all()
