"""Importing a real-shaped microscopy dataset: objects drawn as 4-5 labelled parts sharing a group_id.

The user's case: primary = the whole head (Head_a united with Head_b), secondary = Head_b alone. Every count
of the import report is checked against the source files, for labelme, per-field COCO and plain COCO.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from shapely.geometry import Polygon
from shapely.ops import unary_union

from multimask.data.convert import export_labelme, import_coco, import_coco_fields, import_labelme
from multimask.data.dataset_json import load_multimask_json
from multimask.data.geometry import Report, to_rle

H, W = 120, 160
PARTS = ("Head_a", "Head_b", "Mid", "Tail", "Spot")
USER_MAP = ["Head_a=primary", "Head_b=primary", "Head_b=secondary"]


def _object(k: int) -> list[tuple[str, list]]:
    """(label, points) of object k: thin elongated parts, Mid is a ring drawn as two shapes."""
    x, y = 8 + 50 * (k % 3), 10 + 25 * (k // 3)
    parts = [("Head_a", [[x, y], [x + 20, y], [x + 20, y + 3], [x, y + 3]])]
    if k % 4 != 3:
        parts.append(("Head_b", [[x + 18, y], [x + 30, y], [x + 30, y + 3], [x + 18, y + 3]]))  # overlaps Head_a
    parts += [
        (
            "Mid",
            [
                [x + 30, y],
                [x + 35, y],
                [x + 35, y + 2],
                [x + 32, y + 2],
                [x + 32, y + 6],
                [x + 35, y + 6],
                [x + 35, y + 8],
                [x + 30, y + 8],
            ],
        ),
        (
            "Mid",
            [
                [x + 35, y],
                [x + 40, y],
                [x + 40, y + 8],
                [x + 35, y + 8],
                [x + 35, y + 6],
                [x + 38, y + 6],
                [x + 38, y + 2],
                [x + 35, y + 2],
            ],
        ),
        ("Tail", [[x + 40, y + 3], [x + 46, y + 3], [x + 46, y + 5], [x + 40, y + 5]]),
    ]
    if k % 3 != 2:
        parts.append(("Spot", [[x + 5, y + 10], [x + 9, y + 10], [x + 7, y + 14]]))
    return parts


def _shape(label: str, points: list, group: int | None) -> dict:
    return {"label": label, "points": points, "group_id": group, "shape_type": "polygon", "flags": {}}


def _labelme(folder: Path, objects_per_image=(4, 3, 2)) -> dict:
    """Write the labelme folder (the last image file is missing); return what it holds."""
    (folder / "img").mkdir(parents=True)
    truth = {"shapes": Counter(), "objects": [], "images": []}
    for i, n in enumerate(objects_per_image):
        shapes = [_shape("Spot", [[150, 110], [155, 110], [152, 115]], None)]  # a shape without a group
        truth["shapes"]["Spot"] += 1
        for k in range(n):
            parts = _object(k)
            shapes += [_shape(label, pts, k + 1) for label, pts in parts]
            truth["shapes"].update(label for label, _ in parts)
            truth["objects"].append(parts)
        name = f"img/cell_{i}.png"
        if i < len(objects_per_image) - 1:
            assert cv2.imwrite(str(folder / name), np.full((H, W), 20 * i, np.uint8))  # distinct images
        truth["images"].append(name)
        (folder / f"cell_{i}.json").write_text(
            json.dumps(
                {
                    "version": "5.4.1",
                    "flags": {},
                    "shapes": shapes,
                    "imagePath": name,
                    "imageData": None,
                    "imageHeight": H,
                    "imageWidth": W,
                }
            )
        )
    return truth


def _union(polygons: list) -> Polygon:
    return unary_union([Polygon(np.asarray(p, float).reshape(-1, 2)) for p in polygons])


def _check_balanced(report) -> None:
    for key, t in report.sources.items():
        assert t.read == t.used + sum(t.skipped.values()), key


def test_labelme_union_and_one_to_many(tmp_path):
    truth = _labelme(tmp_path / "lm")
    out = tmp_path / "elsewhere" / "ds.json"  # outside the source folder
    report = import_labelme(tmp_path / "lm", out, USER_MAP, default_class="worm")

    objects, shapes = truth["objects"], truth["shapes"]
    with_b = sum(1 for o in objects if any(label == "Head_b" for label, _ in o))
    assert {k: t.read for k, t in report.sources.items()} == dict(shapes)
    a, b = report.sources["Head_a"], report.sources["Head_b"]
    assert (a.used, dict(a.into), dict(a.skipped)) == (len(objects), {"primary": len(objects)}, {})
    assert (b.used, dict(b.into)) == (with_b, {"primary": with_b, "secondary": with_b})
    for label in ("Mid", "Tail"):
        assert report.sources[label].used == 0 and dict(report.sources[label].skipped) == {"not mapped": shapes[label]}
    assert dict(report.sources["Spot"].skipped) == {"not mapped": shapes["Spot"]}
    _check_balanced(report)
    assert report.masks == {"primary": [len(objects), 0], "secondary": [with_b, len(objects) - with_b]}
    ungrouped = len(truth["images"])
    assert (report.instances_read, report.instances_written) == (len(objects) + ungrouped, len(objects))
    assert dict(report.instance_skips) == {"no usable shape": ungrouped}
    assert report.images_read == 3 and report.images_missing == ["img/cell_2.png"]
    assert "missing images" in report.counts and "cell_2.png" in report.table()

    assert json.loads(out.with_suffix(".report.json").read_text()) == report.as_dict()
    dicts, meta = load_multimask_json(out, report=(loaded := Report()))
    assert meta["thing_classes"] == ["worm"] and meta["mask_names"] == ["primary", "secondary"]
    assert loaded.counts == {"skipped images": 1}  # only the missing one: the others resolve from elsewhere/
    anns = [a for d in dicts for a in d["annotations"]]
    for ann, parts in zip(anns, objects, strict=False):
        head = [p for label, pts in parts if label in ("Head_a", "Head_b") for p in [sum(pts, [])]]
        assert _union(ann["multimask"]["primary"]).equals(_union(head))
        b_parts = [sum(pts, []) for label, pts in parts if label == "Head_b"]
        assert ann["multimask"]["secondary"] == b_parts


def test_repeated_keys_add_and_class_is_never_guessed(tmp_path):
    _labelme(tmp_path / "lm")
    with pytest.raises(ValueError, match="pass --class NAME .* or map labels to CLASS:MASK"):
        import_labelme(tmp_path / "lm", tmp_path / "x.json", USER_MAP)
    assert not (tmp_path / "x.json").exists()
    plus = import_labelme(tmp_path / "lm", tmp_path / "p.json", ["Head_a+Head_b=worm:primary", "Head_b=worm:secondary"])
    repeated = import_labelme(
        tmp_path / "lm",
        tmp_path / "r.json",
        [("Head_a", "worm:primary"), ("Head_b", "worm:primary"), ("Head_b", "worm:secondary")],
    )
    assert plus.as_dict()["sources"] == repeated.as_dict()["sources"]
    assert plus.sources["Head_b"].into == {"primary": 8, "secondary": 8}  # 9 objects, one without Head_b
    assert (
        json.loads((tmp_path / "p.json").read_text())["annotations"]
        == json.loads((tmp_path / "r.json").read_text())["annotations"]
    )


def test_labelme_multimask_round_trip_is_lossless(tmp_path):
    _labelme(tmp_path / "lm")
    first = tmp_path / "first.json"
    import_labelme(tmp_path / "lm", first, ["Head_a+Head_b+Mid+Tail=primary", "Head_b=secondary"], default_class="worm")
    assert not export_labelme(first, tmp_path / "exported").counts.keys() - {"missing images"}
    back = import_labelme(tmp_path / "exported", tmp_path / "second.json")
    assert back.instances_written == back.instances_read == len(json.loads(first.read_text())["annotations"])
    _check_balanced(back)
    assert all(not t.skipped for t in back.sources.values())
    a, b = (json.loads(p.read_text()) for p in (first, tmp_path / "second.json"))
    assert [i["file_name"] for i in a["images"]] == [i["file_name"] for i in b["images"]]
    assert [x["multimask"] for x in a["annotations"]] == [x["multimask"] for x in b["annotations"]]


# ---------------------------------------------------------------- the same data as COCO


def _coco_fields(root: Path, truth: dict) -> Path:
    """Per-field COCO of the labelme data: one `segmentation_<part>` field per part, a background category."""
    images = [{"id": i + 1, "file_name": name, "height": H, "width": W} for i, name in enumerate(truth["images"])]
    anns, per_image = [], (4, 3, 2)
    objects = iter(truth["objects"])
    for image_id, n in enumerate(per_image, start=1):
        for _ in range(n):
            fields: dict[str, list] = {}
            for label, pts in next(objects):
                fields.setdefault(f"segmentation_{label}", []).append(sum(pts, []))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, **fields})
    path = root / "lm" / "coco.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 0, "name": "_background_"}, {"id": 1, "name": "worm"}],
            }
        )
    )
    return path


def test_coco_fields_union_background_and_report(tmp_path):
    truth = _labelme(tmp_path / "lm")
    src = _coco_fields(tmp_path, truth)
    out = tmp_path / "out" / "ds.json"
    report = import_coco_fields(
        src, out, ["segmentation_Head_a+segmentation_Head_b=primary", "segmentation_Head_b=secondary"]
    )
    n, with_b = len(truth["objects"]), sum("Head_b" in dict(o) for o in truth["objects"])
    assert report.sources["segmentation_Head_a"].into == {"primary": n}
    assert report.sources["segmentation_Head_b"].into == {"primary": with_b, "secondary": with_b}
    mid = report.sources["segmentation_Mid"]
    assert (mid.read, mid.used, dict(mid.skipped)) == (n, 0, {"not mapped": n})
    _check_balanced(report)
    assert report.dropped_classes == {"_background_": "no annotations"}
    assert report.masks == {"primary": [n, 0], "secondary": [with_b, n - with_b]}
    assert report.images_missing == ["img/cell_2.png"]
    dicts, meta = load_multimask_json(out)
    assert meta["thing_classes"] == ["worm"]
    assert sum(len(d["annotations"]) for d in dicts) == n - 2  # the 2 objects of the missing image


def test_plain_coco_polygons_rle_crowd_and_drop_class(tmp_path):
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((H, W), np.uint8))[1].tobytes())
    crowd = np.zeros((H, W), np.uint8)
    crowd[50:70, 20:90] = 1
    counts = mask_util.encode(np.asfortranarray(crowd))
    uncompressed = {"size": [H, W], "counts": [int(v) for v in _runs(crowd)]}
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 40, 10, 40, 30]]},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": uncompressed},
        {
            "id": 3,
            "image_id": 1,
            "category_id": 2,
            "segmentation": {"size": [H, W], "counts": counts["counts"].decode()},
        },
        {"id": 4, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 9, 1, 9, 9]]},
    ]
    src = tmp_path / "coco.json"
    src.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
                "annotations": anns,
                "categories": [
                    {"id": 0, "name": "_background_"},
                    {"id": 1, "name": "cell"},
                    {"id": 2, "name": "blob"},
                    {"id": 3, "name": "debris"},
                ],
            }
        )
    )
    report = import_coco(src, tmp_path / "sub" / "ds.json", "whole", drop_classes=["debris"])
    seg = report.sources["segmentation"]
    assert (seg.read, seg.used, dict(seg.into), dict(seg.skipped)) == (4, 3, {"whole": 3}, {"class dropped": 1})
    assert report.dropped_classes == {"_background_": "no annotations", "debris": "asked to drop"}
    raw = json.loads((tmp_path / "sub" / "ds.json").read_text())
    assert raw["mask_names"] == ["whole"] and raw["images"][0]["file_name"] == "../a.png"
    assert [c["name"] for c in raw["categories"]] == ["cell", "blob"]
    assert [a["iscrowd"] for a in raw["annotations"]] == [0, 1, 0]
    assert mask_util.area(to_rle(raw["annotations"][1]["multimask"]["whole"], H, W)) == crowd.sum()
    assert not report.images_missing
    with pytest.raises(ValueError, match="no category named \\['nope'\\]"):
        import_coco(src, tmp_path / "x.json", drop_classes=["nope"])


def _runs(mask: np.ndarray) -> list[int]:
    flat, runs, current, n = mask.flatten(order="F"), [], 0, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    return [*runs, n]


# ---------------------------------------------------------------- the command line


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "multimask", "import", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_import(tmp_path):
    truth = _labelme(tmp_path / "lm")
    maps = [v for m in USER_MAP for v in ("--map", m)]
    proc = _cli("labelme", tmp_path / "lm", tmp_path / "o" / "ds.json", *maps)
    assert proc.returncode == 2 and "pass --class NAME" in proc.stderr and proc.stderr.count("\n") == 1
    proc = _cli("labelme", tmp_path / "lm", tmp_path / "o" / "ds.json", *maps, "--class", "worm")
    assert proc.returncode == 0, proc.stderr
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("Head_b "))
    with_b = sum("Head_b" in dict(o) for o in truth["objects"])
    assert row == ["Head_b", str(with_b), str(with_b), str(with_b), "primary,", str(with_b), "secondary"]
    assert (tmp_path / "o" / "ds.report.json").is_file()
    proc = _cli("coco-fields", _coco_fields(tmp_path, truth), tmp_path / "c.json")
    assert proc.returncode == 2 and "needs at least one --field" in proc.stderr
    for p in (tmp_path / "lm" / "img").iterdir():
        p.unlink()
    proc = _cli("labelme", tmp_path / "lm", tmp_path / "o" / "ds.json", *maps, "--class", "worm")
    assert proc.returncode == 2 and "none of the 3 images was found" in proc.stderr


@pytest.mark.slow
def test_cli_plain_coco_and_wrong_flags(tmp_path):
    truth = _labelme(tmp_path / "lm")
    src = _coco_fields(tmp_path, truth)
    data = json.loads(src.read_text())
    for ann in data["annotations"]:
        ann["segmentation"] = ann.pop("segmentation_Head_a")
    src.write_text(json.dumps(data))
    proc = _cli("coco", src, tmp_path / "o" / "ds.json", "--mask-name", "head", "--drop-class", "worm")
    assert proc.returncode == 2 and "no category is left with annotations" in proc.stderr
    proc = _cli("coco", src, tmp_path / "o" / "ds.json", "--mask-name", "head")
    assert proc.returncode == 0, proc.stderr
    assert "dropped classes: _background_ (no annotations)" in proc.stdout
    report = json.loads((tmp_path / "o" / "ds.report.json").read_text())
    assert report["sources"]["segmentation"] == {"read": 9, "used": 9, "into": {"head": 9}, "skipped": {}}
    assert report["sources"]["segmentation_Mid"]["skipped"] == {"not mapped": 9}
    for args, why in (
        (("coco", src, tmp_path / "x.json", "--field", "a=b"), "--field for coco-fields"),
        (("coco-fields", src, tmp_path / "x.json", "--field", "a=b", "--class", "w"), "COCO category"),
        (("labelme", tmp_path / "lm", tmp_path / "x.json", "--field", "a=b"), "labelme takes --map"),
    ):
        proc = _cli(*args)
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
