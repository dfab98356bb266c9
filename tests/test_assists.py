"""Assists without weights (app/core/assists) on synthetic images with known truth: IoU with the truth."""

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.core.assists import (
    AssistError,
    AssistService,
    clip_to_object,
    flood_region,
    grabcut_object,
    grabcut_part,
    lasso_path,
)
from multimask.data.geometry import mask_to_polygons, parts_union

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


def _outline(mask):
    parts, _ = mask_to_polygons(mask.astype(np.uint8), 1.0)
    return parts


def test_the_part_is_proposed_inside_its_object_without_a_click():
    img, obj, part = _scene()
    parts = grabcut_part(img, _outline(obj))
    assert _iou(parts, part) >= 0.85
    assert parts_union(parts).difference(parts_union(_outline(obj))).area < 1.0, "the part stays in its object"


def test_a_click_on_the_body_makes_the_body_the_part():
    """Where the part touches the outline (e.g. the visible part of an amodal object), a click says which it is."""
    img, obj, part = _scene(2)
    assert _iou(grabcut_part(img, _outline(obj)), obj & ~part) < 0.3
    assert _iou(grabcut_part(img, _outline(obj), foreground=[(230, 280)]), obj & ~part) >= 0.85


def test_the_lasso_follows_the_edge_between_clicks():
    img, obj, _ = _scene()
    ring = _outline(obj)[0]
    anchors = [tuple(ring[i : i + 2]) for i in range(0, len(ring), len(ring) // 6 // 2 * 2)]
    points = [list(anchors[0])]
    for a, b in zip(anchors, anchors[1:] + anchors[:1]):
        points += lasso_path(img, a, b)
    straight = _iou([[v for p in anchors for v in p]], obj)
    traced = _iou([[v for p in points for v in p]], obj)
    assert traced >= 0.95 > straight, (traced, straight)
    assert points[-1] == [round(v, 2) for v in anchors[0]], "each path ends at its click"


def _service_with_image(tmp_path, img):
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), img)
    return AssistService(), path


def test_the_service_runs_each_kind_and_clips_to_within(tmp_path):
    img, obj, part = _scene()
    service, path = _service_with_image(tmp_path, img)
    ys, xs = np.nonzero(obj)
    box = [int(xs.min()) - 5, int(ys.min()) - 5, int(xs.max()) + 5, int(ys.max()) + 5]
    assert _iou(service.run(path, {"kind": "grabcut", "box": box})["parts"], obj) >= 0.85
    reply = service.run(path, {"kind": "part", "object": _outline(obj)})
    assert _iou(reply["parts"], part) >= 0.85 and reply["seconds"] >= 0
    half = [[0, 0, 340, 0, 340, H, 0, H]]  # the part's left half only
    clipped = service.run(path, {"kind": "part", "object": _outline(obj), "within": half})["parts"]
    assert _iou(clipped, part & (np.arange(W) < 340)[None, :]) >= 0.85
    assert service.run(path, {"kind": "lasso", "start": [10, 10], "end": [60, 10]})["points"][-1] == [60, 10]
    clip = service.run(path, {"kind": "clip", "part": [[50, 50, 150, 50, 150, 80, 50, 80]], "object": half})
    assert parts_union(clip["parts"]).area == pytest.approx(100 * 30)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ("grabcut", "must be an object"),
        ({"kind": "magic"}, "unknown assist 'magic'"),
        ({"kind": "grabcut", "box": [0, 0, 10]}, r"box must be \[x0, y0, x1, y1\]"),
        ({"kind": "grabcut", "box": [0, 0, 10, 1e9]}, "outside the 640x480 image"),
        ({"kind": "grabcut", "box": [0, 0, 10, True]}, "must be a point"),
        ({"kind": "flood", "point": [5, 5], "tolerance": 900}, "tolerance must be a number from 0 to 255"),
        ({"kind": "grabcut", "box": [0, 0, 9, 9], "foreground": [[1, 1]] * 51}, "at most 50 points"),
        ({"kind": "part", "object": []}, "one or more"),
        ({"kind": "part", "object": [[0, 0, 5, 5]]}, "at least 3 points"),
        ({"kind": "clip", "part": [[0, 0, 5, 0, 5, "x"]], "object": [[0, 0, 5, 0, 5, 5]]}, "not a number"),
    ],
)
def test_bad_requests_are_refused_by_name(tmp_path, request_, message):
    service, path = _service_with_image(tmp_path, _scene()[0])
    with pytest.raises(AssistError, match=message):
        service.run(path, request_)


def test_the_image_is_decoded_once_and_again_when_its_file_changes(tmp_path, monkeypatch):
    from app.core.assists import service as service_module

    img = _scene()[0]
    service, path = _service_with_image(tmp_path, img)
    reads = []
    real = service_module.read_image_bgr
    monkeypatch.setattr(service_module, "read_image_bgr", lambda p, **kw: reads.append(p) or real(p, **kw))
    for _ in range(3):
        service.run(path, {"kind": "flood", "point": [5, 5]})
    assert len(reads) == 1
    cv2.imwrite(str(path), img[:, ::-1])
    os.utime(path, ns=(0, 123))  # a new mtime even on a coarse clock
    service.run(path, {"kind": "flood", "point": [5, 5]})
    assert len(reads) == 2


def test_a_rough_outline_snaps_to_the_object():
    img, obj, _ = _scene()
    ring = np.asarray(_outline(obj)[0]).reshape(-1, 2)
    centre = ring.mean(axis=0)
    rough = ring[:: max(1, len(ring) // 8)]  # 8 points ...
    rough = centre + (rough - centre) * np.array([0.8, 1.15])  # ... squashed and stretched: IoU well under 0.85
    assert _iou([rough.reshape(-1).tolist()], obj) < 0.8
    parts = grabcut_object(img, None, outline=[rough.reshape(-1).tolist()])
    assert _iou(parts, obj) >= 0.9
    service, path = _service_with_image(Path(tempfile.mkdtemp()), img)
    assert _iou(service.run(path, {"kind": "grabcut", "outline": [rough.reshape(-1).tolist()]})["parts"], obj) >= 0.9


def test_the_cache_drops_the_least_recently_used():
    from app.core.lru import LruCache

    cache = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
