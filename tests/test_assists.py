"""Assists without weights (app/core/assists.py) on synthetic images with known truth: IoU with the truth."""

import cv2
import numpy as np
import pytest

from app.core.assists import clip_to_object, flood_region, grabcut_object
from multimask.data.geometry import parts_union

H, W = 480, 640


def _scene(seed=0):
    """A textured background with a filled ellipse (the object) and a darker disc inside it (its part)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (H, W, 3), dtype=np.uint8)
    obj = np.zeros((H, W), np.uint8)
    cv2.ellipse(obj, (300, 240), (140, 90), 15, 0, 360, 1, -1)
    part = np.zeros((H, W), np.uint8)
    cv2.circle(part, (340, 250), 40, 1, -1)
    img[obj > 0] = (40, 170, 220)
    img[part > 0] = (30, 60, 120)
    return img, obj.astype(bool), part.astype(bool)


def _iou(parts, truth):
    mask = np.zeros(truth.shape, np.uint8)
    for p in parts:
        cv2.fillPoly(mask, [np.round(np.asarray(p).reshape(-1, 2) - 0.5).astype(np.int32)], 1)
    mask = mask.astype(bool)
    return (mask & truth).sum() / (mask | truth).sum()


def test_grabcut_finds_the_object_in_its_box():
    img, obj, _ = _scene()
    ys, xs = np.nonzero(obj)
    parts = grabcut_object(img, (xs.min() - 5, ys.min() - 5, xs.max() + 5, ys.max() + 5))
    assert _iou(parts, obj) >= 0.85


def test_a_background_click_turns_the_object_into_its_part():
    img, obj, part = _scene(1)
    ys, xs = np.nonzero(obj)
    box = (xs.min() - 5, ys.min() - 5, xs.max() + 5, ys.max() + 5)
    assert _iou(grabcut_object(img, box), part) < 0.3, "the box alone gives the whole object"
    assert obj[280, 230] and not part[280, 230]
    parts = grabcut_object(img, box, background=[(230, 280)])  # a click on the object, off its part
    assert _iou(parts, part) >= 0.85


def test_grabcut_of_a_degenerate_box_or_the_whole_image_gives_nothing_or_a_mask():
    img, _, _ = _scene()
    assert grabcut_object(img, (10, 10, 10, 200)) == []
    assert isinstance(grabcut_object(img, (-50, -50, W + 50, H + 50)), list)
    with pytest.raises(ValueError, match="8-bit"):
        grabcut_object(img.astype(np.float32), (0, 0, 10, 10))


def test_flood_fill_takes_the_similar_colour_region():
    img, obj, part = _scene()
    img = cv2.GaussianBlur(np.where(obj[..., None], img, 128).astype(np.uint8), (3, 3), 0)
    img[part] = (30, 60, 120)
    parts = flood_region(img, (300, 180), tolerance=20)
    assert _iou(parts, obj & ~part) >= 0.85
    assert flood_region(img, (W + 5, 10)) == []


def test_a_part_is_clipped_to_its_object():
    obj = [[0, 0, 100, 0, 100, 100, 0, 100]]
    part = [[50, 50, 150, 50, 150, 80, 50, 80]]
    clipped = clip_to_object(part, obj)
    assert parts_union(clipped).area == pytest.approx(50 * 30)
    assert parts_union(clipped).difference(parts_union(obj)).area == 0
    assert clip_to_object([], obj) == [] and clip_to_object(part, []) == []
