"""The synthetic dataset: loads cleanly, is deterministic, and its masks agree with each other and the image."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from multimask.data.dataset_json import load_multimask_json
from multimask.data.geometry import Report, to_rle
from multimask.data.synth import CLASSES, generate_synthetic_dataset

H, W = 128, 160


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small two-mask set; seed 0 with 8+4 images has RLE masks, absent spots and overlaps (checked below)."""
    paths = generate_synthetic_dataset(tmp_path_factory.mktemp("synth"), 8, 4, height=H, width=W)
    loaded = {}
    for split in ("train", "val"):
        report = Report()
        loaded[split] = load_multimask_json(paths[split], report=report)
        assert not report, report.summary()
    return paths, loaded


def _instances(loaded):
    return [(rec, ann) for dicts, _ in loaded.values() for rec in dicts for ann in rec["annotations"]]


def _decode(segm) -> np.ndarray:
    return mask_util.decode(to_rle(segm, H, W)).astype(bool)


def test_files_load_without_repairs(synth):
    paths, loaded = synth
    assert set(paths) == {"train", "val", "images"}
    for split, count in (("train", 8), ("val", 4)):
        dicts, meta = loaded[split]
        assert meta["thing_classes"] == list(CLASSES)
        assert meta["mask_names"] == ["primary", "secondary"]
        assert len(dicts) == count
        for i, rec in enumerate(dicts):
            assert rec["file_name"] == str(paths["images"] / f"{split}_{i:04d}.png")
            img = cv2.imread(rec["file_name"])
            assert img is not None and img.shape == (H, W, 3)
            assert (rec["height"], rec["width"]) == (H, W)
            assert 1 <= len(rec["annotations"]) <= 6


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", 3, 1, seed=5, height=H, width=W)
    b = generate_synthetic_dataset(tmp_path / "b", 3, 1, seed=5, height=H, width=W)
    c = generate_synthetic_dataset(tmp_path / "c", 3, 1, seed=6, height=H, width=W)
    for split in ("train", "val"):
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    assert [p.read_bytes() for p in sorted(a["images"].iterdir())] == [
        p.read_bytes() for p in sorted(b["images"].iterdir())
    ]
    # Each image has its own generator: more training images leave the validation split unchanged.
    d = generate_synthetic_dataset(tmp_path / "d", 5, 1, seed=5, height=H, width=W)
    assert d["val"].read_bytes() == a["val"].read_bytes()


def test_instances_are_varied(synth):
    _, loaded = synth
    anns = [ann for _, ann in _instances(loaded)]
    assert all(_decode(a["multimask"]["primary"]).sum() >= 100 for a in anns)
    has_secondary = [bool(a["multimask"]["secondary"]) for a in anns]
    assert 0.4 < np.mean(has_secondary) < 0.95
    assert {a["category_id"] for a in anns} == set(range(len(CLASSES)))
    masks = [m for a in anns for m in a["multimask"].values()]
    assert any(isinstance(m, dict) for m in masks), "no RLE (mask with a hole) in this set"
    assert any(isinstance(m, list) and len(m) > 0 for m in masks)


def test_some_instances_overlap(synth):
    _, loaded = synth

    def intersects(a, b):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
        return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah

    overlaps = sum(
        intersects(a, b)
        for dicts, _ in loaded.values()
        for rec in dicts
        for a, b in itertools.combinations(rec["annotations"], 2)
    )
    assert overlaps >= 2


def test_secondary_lies_inside_primary(synth):
    _, loaded = synth
    checked = 0
    for _, ann in _instances(loaded):
        if ann["multimask"]["secondary"]:
            primary, secondary = (_decode(ann["multimask"][n]) for n in ("primary", "secondary"))
            assert secondary.sum() >= 25
            assert (secondary & ~primary).sum() <= 3
            checked += 1
    assert checked >= 5


def test_image_shows_the_masks(synth):
    _, loaded = synth
    checked = 0
    for rec, ann in _instances(loaded):
        img = cv2.imread(rec["file_name"]).astype(np.float32)
        primary = _decode(ann["multimask"]["primary"])
        if ann["multimask"]["secondary"]:
            secondary = _decode(ann["multimask"]["secondary"])
            rest = primary & ~secondary
            diff = np.abs(img[secondary].mean(axis=0) - img[rest].mean(axis=0)).sum()
            assert diff > 30, f"{rec['file_name']} annotation {ann['id']}: spot not visible ({diff:.1f})"
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("names", [("whole",), ("primary", "secondary", "edge")])
def test_one_and_three_mask_names(tmp_path, names):
    paths = generate_synthetic_dataset(tmp_path, 6, 0, seed=1, height=H, width=W, mask_names=names)
    report = Report()
    dicts, meta = load_multimask_json(paths["train"], report=report)
    assert not report, report.summary()
    assert meta["mask_names"] == list(names)
    anns = [ann for rec in dicts for ann in rec["annotations"]]
    assert anns and all(set(a["multimask"]) == set(names) and a["multimask"][names[0]] for a in anns)
    if len(names) == 3:
        bands = [a for a in anns if a["multimask"]["edge"]]
        assert 0 < len(bands) < len(anns)
        for a in bands:  # an edge band has a hole (unless occlusion opens it) and lies inside the object
            primary, band = _decode(a["multimask"]["primary"]), _decode(a["multimask"]["edge"])
            assert (band & ~primary).sum() <= 3
        assert any(isinstance(a["multimask"]["edge"], dict) for a in bands)


def test_empty_splits_and_progress(tmp_path, capsys):
    paths = generate_synthetic_dataset(tmp_path, 0, 1, progress=True, height=H, width=W)
    assert "synthetic images" in capsys.readouterr().err
    assert paths["images"].is_dir()
    assert load_multimask_json(paths["train"])[0] == []
    assert len(load_multimask_json(paths["val"])[0]) == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_train": -1}, "num_train"),
        ({"num_val": 1.5}, "num_val"),
        ({"num_train": True}, "num_train"),
        ({"seed": -3}, "seed"),
        ({"height": 32}, "height"),
        ({"width": "320"}, "width"),
        ({"mask_names": ()}, "mask_names"),
        ({"mask_names": "primary"}, "mask_names"),
        ({"mask_names": ("a", "a")}, "mask_names"),
        ({"mask_names": ("a", "")}, "mask_names"),
        ({"mask_names": ("a", "b", "c", "d")}, "mask_names"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_synthetic_dataset(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir()), "nothing is written before the arguments are checked"


@pytest.mark.parametrize("regime, low, high", [("small-part", 0.005, 0.03), ("large-part", 0.55, 0.92)])
def test_regimes_put_the_part_where_they_say(tmp_path, regime, low, high):
    """small-part: the part is 1-3% of its object's box (less when the head cannot hold it); large-part: 60-90% of
    its object (occlusion by later objects moves some). Measured on the files as written, by pycocotools."""
    from multimask.data.synth import LARGE_PART_SHARE, SMALL_PART_BOX_SHARE

    paths = generate_synthetic_dataset(tmp_path, 24, 0, seed=3, regime=regime)
    report = Report()
    dicts, _ = load_multimask_json(paths["train"], report=report)
    assert not report, report.summary()
    h, w = dicts[0]["height"], dicts[0]["width"]
    shares = []
    for ann in (a for rec in dicts for a in rec["annotations"]):
        part = ann["multimask"]["secondary"]
        if not part:
            continue
        part_area = mask_util.area(to_rle(part, h, w))
        _, _, bw, bh = ann["bbox"]  # XYWH, enclosing all its masks (the part lies inside the object)
        whole = bw * bh if regime == "small-part" else mask_util.area(to_rle(ann["multimask"]["primary"], h, w))
        shares.append(part_area / whole)
    inside = np.mean([low <= s <= high for s in shares])
    assert len(shares) >= 30 and inside >= 0.85, (regime, len(shares), np.percentile(shares, [5, 50, 95]))
    target = SMALL_PART_BOX_SHARE if regime == "small-part" else LARGE_PART_SHARE
    assert target[0] * 0.8 <= np.median(shares) <= target[1]


def test_an_unknown_regime_is_named(tmp_path):
    with pytest.raises(ValueError, match="regime must be one of"):
        generate_synthetic_dataset(tmp_path, 1, 0, regime="tiny-parts")
