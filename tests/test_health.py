"""`multimask.data.health`: findings with the images concerned, part-to-object ratios, and `stats` printing them."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

from multimask.cli import main
from multimask.data.health import dataset_health, format_health, ratio_histogram

NAMES, CLASSES = ["primary", "secondary"], ["cell", "leaf"]
H = W = 100


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _ann(cls, primary, secondary):
    return {
        "category_id": cls,
        "bbox": [0, 0, 1, 1],
        "bbox_mode": BoxMode.XYWH_ABS,
        "multimask": {"primary": primary, "secondary": secondary},
    }


def _dicts():
    first = [
        _ann(0, _square(10, 10, 50, 50), _square(20, 20, 30, 30)),  # part inside: ratio 100 / 1600
        _ann(0, _square(60, 10, 90, 40), []),  # no part
        _ann(1, _square(10, 60, 40, 90), _square(30, 60, 50, 90)),  # part crossing: 10 of 20 columns outside
        _ann(1, _square(60, 60, 62, 62), _rle(70, 70, 80, 80)),  # tiny object, its part (RLE) wholly outside
    ]
    return [
        {"file_name": "a.png", "image_id": 1, "height": H, "width": W, "annotations": first},
        {"file_name": "b.png", "image_id": 2, "height": H, "width": W, "annotations": []},
    ]


def test_findings_name_their_image_instance_and_what_is_wrong():
    health = dataset_health(_dicts(), CLASSES, NAMES)
    found = {(f.kind, f.file_name, f.instance) for f in health.findings}
    assert found == {
        ("no secondary", "a.png", 1),
        ("secondary crossing primary", "a.png", 2),
        ("tiny primary", "a.png", 3),
        ("secondary outside primary", "a.png", 3),
        ("image without instances", "b.png", None),
    }
    crossing = next(f for f in health.findings if f.kind == "secondary crossing primary")
    assert crossing.detail == "50% of its secondary lies outside its primary"
    assert health.ratios["cell"] == [100 / 1600]
    assert health.counts == {
        "cell": {"instances": 2, "primary": 2, "secondary": 1},
        "leaf": {"instances": 2, "primary": 2, "secondary": 2},
    }
    assert np.allclose(health.ratios["leaf"], [600 / 900, 100 / 4])
    text = format_health(health, max_images=1)
    assert "leaf: secondary / primary area over 2 instances" in text and "> 1.00" in text
    assert "image without instances: 1 in 1 image(s): b.png" in text
    assert list(health.by_kind()) == [  # in order of first appearance
        "no secondary",
        "secondary crossing primary",
        "tiny primary",
        "secondary outside primary",
        "image without instances",
    ]


def test_a_single_mask_dataset_has_no_part_checks():
    dicts = [
        {
            "file_name": "a.png",
            "image_id": 1,
            "height": H,
            "width": W,
            "annotations": [{"category_id": 0, "multimask": {"primary": _square(10, 10, 50, 50)}}],
        }
    ]
    health = dataset_health(dicts, CLASSES, ["primary"])
    assert health.findings == [] and health.ratios == {"cell": [], "leaf": []}
    assert format_health(health) == "no findings"


def test_the_ratio_histogram_counts_every_instance_once():
    bars = ratio_histogram([0.01, 0.03, 0.5, 0.5, 1.5])
    counts = [int(b.split()[-1]) for b in bars]
    assert sum(counts) == 5 and counts[-1] == 1 and bars[-1].lstrip().startswith("> 1.00")
    assert max(b.count("#") for b in bars) == 30, "the fullest bin fills the width"


def test_stats_prints_the_findings_with_their_images(tmp_path, capsys):
    images = [{"id": i, "file_name": f"img{i}.png", "height": H, "width": W} for i in range(12)]
    anns = [
        {
            "id": i + 1,
            "image_id": i,
            "category_id": 1,
            "multimask": {"primary": _square(10, 10, 50, 50), "secondary": []},
        }
        for i in range(12)
    ]
    doc = {"mask_names": NAMES, "images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    src = tmp_path / "d.json"
    src.write_text(json.dumps(doc))
    for img in images:
        cv2.imwrite(str(tmp_path / img["file_name"]), np.zeros((H, W, 3), np.uint8))
    main(["stats", str(src), "--max-images", "3"])
    out = capsys.readouterr().out
    assert "no secondary: 12 in 12 image(s): img0.png, img1.png, img2.png, ... (9 more)" in out
