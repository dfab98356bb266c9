"""Importers (COCO with one field per mask, labelme) and the labelme exporter."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from multimask.data.convert import (
    coco_fields_document,
    export_labelme,
    import_coco_fields,
    import_labelme,
    labelme_document,
    labelme_documents,
)
from multimask.data.dataset_json import load_multimask_json, make_annotation, multimask_dicts, write_multimask_json
from multimask.data.geometry import Report, to_rle
from multimask.data.import_report import ImportReport
from multimask.io import DatasetError

H, W = 60, 80
UOAIS = {"segmentation": "primary", "visible_mask": "secondary"}
LABEL_MAP = {"leaf": "leaf:primary", "lesion": "secondary", "apple": "fruit:primary", "spot": "secondary"}


def _png(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _area(segm, h: int = H, w: int = W) -> int:
    return int(mask_util.area(to_rle(segm, h, w)))


def _flat(points: list) -> list[float]:
    return [float(v) for p in points for v in p]


def _check_pycocotools(json_file: Path) -> None:
    coco = COCO(str(json_file))
    assert coco.getAnnIds()
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert mask_util.area(coco.annToRLE(ann)) > 0


# ---------------------------------------------------------------- COCO, one field per mask


def _uoais(root: Path) -> tuple[Path, np.ndarray]:
    _png(root / "images" / "a.png")
    visible = np.zeros((H, W), np.uint8)
    visible[30:50, 40:70] = 1  # reaches out of the amodal box, so the bbox must grow
    anns = [
        {
            "id": 11,
            "image_id": 5,
            "category_id": 3,
            "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]],
            "visible_mask": _rle(visible),
        },
        {
            "id": 12,
            "image_id": 5,
            "category_id": 7,
            "segmentation": [[60, 5, 75, 5, 75, 20]],
            "visible_mask": [[60, 5, 75, 5, 75, 20]],
        },
        {"id": 13, "image_id": 5, "category_id": 99, "segmentation": [[1, 1, 9, 1, 9, 9]], "visible_mask": []},
        {
            "id": 14,
            "image_id": 5,
            "category_id": 3,
            "visible_mask": [],
            "segmentation": [[1, 1, 9, 1, 9], [20, 50, 30, 50, 30, 58]],
        },
        {"id": 15, "image_id": 5, "category_id": 3, "segmentation": [[1, 1, 2]], "visible_mask": []},
    ]
    data = {
        "images": [{"id": 5, "file_name": "images/a.png", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "box"}, {"id": 7, "name": "cup"}],
        "annotations": anns,
    }
    return _write(root / "train.json", data), visible


def test_import_coco_fields_uoais(tmp_path):
    src, visible = _uoais(tmp_path)
    out = tmp_path / "train_multimask.json"
    report = import_coco_fields(src, out, UOAIS)

    assert report.counts == {"skipped annotations": 2, "skipped polygons": 2}
    assert any("id=13" in m and "unknown category_id 99" in m for m in report.messages)
    assert any("id=14" in m and "part 0" in m and "odd number of coordinates" in m for m in report.messages)
    assert any("id=15" in m and "no usable mask" in m for m in report.messages)

    raw = json.loads(out.read_text())
    assert raw["mask_names"] == ["primary", "secondary"]
    assert raw["images"][0]["file_name"] == "images/a.png"
    dicts, meta = load_multimask_json(out, report=(load_report := Report()))
    assert not load_report
    assert meta["thing_classes"] == ["box", "cup"]
    anns = dicts[0]["annotations"]
    assert [a["category_id"] for a in anns] == [0, 1, 0]
    a, b, c = anns
    assert a["multimask"]["primary"] == [[10, 10, 50, 10, 50, 40, 10, 40]]
    assert isinstance(a["multimask"]["secondary"], dict)
    assert _area(a["multimask"]["secondary"]) == visible.sum()
    assert a["bbox"] == [10, 10, 60, 40]  # x 10..70 (visible), y 10..50 (visible)
    assert a["segmentation"] == a["multimask"]["primary"]
    assert b["multimask"]["secondary"] == [[60, 5, 75, 5, 75, 20]]
    assert c["multimask"] == {"primary": [[20, 50, 30, 50, 30, 58]], "secondary": []}
    _check_pycocotools(out)


def test_the_document_forms_return_the_dataset_and_write_nothing(tmp_path):
    src, _ = _uoais(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    doc = coco_fields_document(src, UOAIS, report=(report := ImportReport()))
    assert sorted(tmp_path.rglob("*")) == before, "nothing written"
    assert report.counts == {"skipped annotations": 2, "skipped polygons": 2}
    assert doc["images"][0]["file_name"] == str(tmp_path / "images" / "a.png"), "image paths absolute"
    out = tmp_path / "out" / "ds.json"
    import_coco_fields(src, out, UOAIS)
    written = json.loads(out.read_text())
    assert written["images"][0]["file_name"] == "../images/a.png" and written["annotations"] == doc["annotations"]
    dicts, _ = multimask_dicts(doc, "/", source=src)
    assert [len(d["annotations"]) for d in dicts] == [3] and dicts[0]["file_name"] == str(tmp_path / "images/a.png")

    folder = tmp_path / "lm"
    _labelme_folder(folder)
    before = sorted(tmp_path.rglob("*"))
    doc = labelme_document(folder, LABEL_MAP)
    assert sorted(tmp_path.rglob("*")) == before and doc["images"]
    assert all(Path(img["file_name"]).is_absolute() for img in doc["images"])


def test_import_coco_fields_bad_input(tmp_path):
    src, _ = _uoais(tmp_path)
    for bad, why in (
        ({"segmentation": "primary", "visible_mask": "visible-mask"}, "valid mask name"),
        ({"segmentation": "1st", "visible_mask": "secondary"}, "valid mask name"),
        ({"segmentation": "box:primary"}, "the class comes from the COCO category"),
        ({}, "nothing is mapped"),
        (["segmentation"], "expects KEY=VALUE"),
    ):
        with pytest.raises(ValueError, match=why):
            import_coco_fields(src, tmp_path / "out.json", bad)
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(DatasetError, match="not valid JSON"):
        import_coco_fields(_write(tmp_path / "broken.json", '{"images": ['), tmp_path / "out.json", UOAIS)
    with pytest.raises(DatasetError, match="file not found"):
        import_coco_fields(tmp_path / "nope.json", tmp_path / "out.json", UOAIS)
    data = json.loads(src.read_text())
    data["images"].append({**data["images"][0], "file_name": "images/b.png"})
    with pytest.raises(DatasetError, match=r"train.json images\[1\]: image id 5 is also the id of images\[0\]"):
        import_coco_fields(_write(src, data), tmp_path / "out.json", UOAIS)
    assert not (tmp_path / "out.json").exists()


def test_import_coco_fields_missing_field_is_reported(tmp_path):
    src, _ = _uoais(tmp_path)
    report = import_coco_fields(src, tmp_path / "out.json", {"segmentation": "amodal", "visibel": "visible"})
    assert report.counts["missing fields"] == 5 - 1  # the unknown category is skipped before
    dicts, meta = load_multimask_json(tmp_path / "out.json")
    assert meta["mask_names"] == ["amodal", "visible"]
    assert all(a["multimask"]["visible"] == [] for a in dicts[0]["annotations"])


# ---------------------------------------------------------------- labelme


def _shape(label, points, group_id=None, shape_type="polygon") -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type, "flags": {}}


def _labelme_file(folder: Path, name: str, shapes: list, image: str, size: tuple | None = (H, W)) -> None:
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image, "imageData": None}
    if size:
        doc.update(imageHeight=size[0], imageWidth=size[1])
    _write(folder / f"{name}.json", doc)


LEAF = [[10, 10], [40, 10], [40, 40], [10, 40]]
LESION_A = [[12, 12], [20, 12], [20, 20]]
LESION_B = [[30, 30], [38, 30], [38, 38], [30, 38]]
FREE = [[60, 40], [75, 40], [70, 55]]
APPLE = [[5, 5], [25, 5], [25, 25], [5, 25]]


def _labelme_folder(folder: Path) -> None:
    _png(folder / "a.png")
    _png(folder / "pics" / "b.png", 50, 70)
    _labelme_file(
        folder,
        "a",
        [
            _shape("leaf", LEAF, 1),
            _shape("lesion", LESION_A, 1),
            _shape("lesion", LESION_B, 1),
            _shape("lesion", [[15, 15], [18, 18]], 1, "circle"),
            _shape("leaf", [[70, 50], [50, 5]], 2, "rectangle"),  # corners in any order
            _shape("leaf", FREE, None),
            _shape("lesion", [[1, 1], [5, 1], [5, 5]], None),  # alone, and a lesion gives no class
        ],
        "a.png",
    )
    _labelme_file(
        folder,
        "b",
        [
            _shape("apple", APPLE, 7),
            _shape("spot", [[8, 8], [12, 8], [12, 12, 3]], 7),
            _shape("pear", [[30, 30], [40, 30], [40, 40]], 8),
        ],
        "pics/b.png",
        size=None,
    )  # size read from the image
    _write(folder / "broken.json", '{"shapes": [')
    _labelme_file(folder, "lost", [_shape("leaf", LEAF, 1)], "gone.png", size=None)


def test_import_labelme(tmp_path):
    folder, out = tmp_path / "lm", tmp_path / "out" / "ds.json"
    _labelme_folder(folder)
    report = import_labelme(folder, out, LABEL_MAP)

    assert report.counts == {"skipped files": 2, "skipped shapes": 3, "skipped annotations": 2}
    text = "\n".join(report.messages)
    assert "broken.json: not valid JSON" in text
    assert "lost.json: no imageHeight/imageWidth" in text
    assert "a.json shape 3 (label 'lesion'): shape_type 'circle' is not supported" in text
    assert "b.json shape 1 (label 'spot'): points must be a list of [x, y] pairs" in text
    assert "b.json shape 2 (label 'pear'): not mapped" in text
    assert "a.json shape 6: no class" in text
    assert "b.json group_id 8: no usable mask" in text  # its only shape was skipped

    raw = json.loads(out.read_text())
    assert [(i["file_name"], i["height"], i["width"]) for i in raw["images"]] == [
        ("../lm/a.png", H, W),
        ("../lm/pics/b.png", 50, 70),
    ]
    dicts, meta = load_multimask_json(out, report=(load_report := Report()))  # images found from out/
    assert not load_report
    assert meta["thing_classes"] == ["leaf", "fruit"] and meta["mask_names"] == ["primary", "secondary"]
    first, second, alone = dicts[0]["annotations"]
    assert first["multimask"] == {"primary": [_flat(LEAF)], "secondary": [_flat(LESION_A), _flat(LESION_B)]}
    assert second["multimask"] == {"primary": [[50, 5, 70, 5, 70, 50, 50, 50]], "secondary": []}
    assert alone["multimask"] == {"primary": [_flat(FREE)], "secondary": []}
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 0, 0]
    (apple,) = dicts[1]["annotations"]
    assert apple["category_id"] == 1 and apple["multimask"] == {"primary": [_flat(APPLE)], "secondary": []}
    _check_pycocotools(out)


def test_import_labelme_bad_maps(tmp_path):
    folder = tmp_path / "lm"
    _labelme_folder(folder)
    for bad in ({"leaf": "prim ary"}, {"leaf": "fruit:"}, {"leaf": ":primary"}, {"leaf": "9lives"}):
        with pytest.raises(ValueError, match=f"label map leaf={bad['leaf']}: expected"):
            import_labelme(folder, tmp_path / "out.json", bad)
    with pytest.raises(ValueError, match="not among mask_names"):
        import_labelme(folder, tmp_path / "out.json", LABEL_MAP, mask_names=["primary", "other"])
    with pytest.raises(ValueError, match="not valid mask names"):
        import_labelme(folder, tmp_path / "out.json", None, mask_names=["a-b"])
    with pytest.raises(ValueError, match="mask_names: no mask names given"):
        import_labelme(folder, tmp_path / "out.json", None, mask_names=[])
    assert not (tmp_path / "out.json").exists()


def _polygons_by_image(json_file: Path) -> dict:
    dicts, meta = load_multimask_json(json_file)
    classes = meta["thing_classes"]
    return {
        Path(d["file_name"]).resolve(): [(classes[a["category_id"]], a["multimask"]) for a in d["annotations"]]
        for d in dicts
    }


def test_labelme_round_trip(tmp_path):
    folder, first, exported = tmp_path / "lm", tmp_path / "first.json", tmp_path / "exported"
    _labelme_folder(folder)
    import_labelme(folder, first, LABEL_MAP)
    report = export_labelme(first, exported)
    assert not report

    doc = json.loads((exported / "b.json").read_text())
    assert doc["imagePath"] == "../lm/pics/b.png" and doc["imageData"] is None
    as_data = labelme_documents(first)  # the same files as data, nothing written
    assert as_data.keys() == {"a.json", "b.json"} and as_data["b.json"]["imagePath"] == str(folder / "pics" / "b.png")
    assert as_data["b.json"]["shapes"] == doc["shapes"]
    assert (doc["imageHeight"], doc["imageWidth"]) == (50, 70)
    shapes = [(s["label"], s["group_id"], s["shape_type"]) for s in doc["shapes"]]
    assert shapes == [("fruit/primary", 1, "polygon")]
    assert {s["group_id"] for s in json.loads((exported / "a.json").read_text())["shapes"]} == {1, 2, 3}

    second = tmp_path / "second.json"
    assert not import_labelme(exported, second)
    before, after = _polygons_by_image(first), _polygons_by_image(second)
    assert before.keys() == after.keys() and len(before) == 2
    for image, instances in before.items():
        assert [c for c, _ in after[image]] == [c for c, _ in instances]
        for (_, m1), (_, m2) in zip(instances, after[image], strict=True):
            assert m1.keys() == m2.keys()
            for name in m1:
                assert len(m1[name]) == len(m2[name])
                for p, q in zip(m1[name], m2[name], strict=True):
                    np.testing.assert_allclose(p, q, atol=1e-3)


def test_round_trip_keeps_custom_mask_names(tmp_path):
    folder = tmp_path / "lm"
    _labelme_folder(folder)
    import_labelme(folder, tmp_path / "a.json", {"leaf": "whole", "lesion": "part_1"}, default_class="leaf")
    export_labelme(tmp_path / "a.json", tmp_path / "exp")
    import_labelme(tmp_path / "exp", tmp_path / "b.json")  # names recorded by export_labelme
    assert json.loads((tmp_path / "b.json").read_text())["mask_names"] == ["whole", "part_1"]


def test_export_rle_hole_is_reported(tmp_path):
    _png(tmp_path / "img" / "x.png")
    ring = np.zeros((H, W), np.uint8)
    ring[10:50, 10:60] = 1
    ring[20:40, 25:45] = 0
    blob = np.zeros((H, W), np.uint8)
    blob[5:8, 65:75] = 1
    masks = {"primary": _rle(ring), "secondary": _rle(blob)}
    write_multimask_json(
        tmp_path / "ds.json",
        [{"id": 1, "file_name": "img/x.png", "height": H, "width": W}],
        [{"id": 1, "name": "tyre"}],
        [make_annotation(1, 1, 1, masks, H, W, list(masks))],
        list(masks),
    )
    report = export_labelme(tmp_path / "ds.json", tmp_path / "exp")
    assert report.counts == {"masks with holes lost": 1}
    assert "mask 'primary'" in report.messages[0] and "1 hole(s) filled" in report.messages[0]

    shapes = json.loads((tmp_path / "exp" / "x.json").read_text())["shapes"]
    assert [s["label"] for s in shapes] == ["tyre/primary", "tyre/secondary"]
    assert all(s["group_id"] == 1 for s in shapes)
    poly = [v for p in shapes[0]["points"] for v in p]
    traced = mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], H, W)))
    filled = ring.copy()
    filled[20:40, 25:45] = 1
    iou = (traced & filled).sum() / (traced | filled).sum()
    assert iou > 0.9

    assert not import_labelme(tmp_path / "exp", tmp_path / "back.json")
    (ann,) = load_multimask_json(tmp_path / "back.json")[0][0]["annotations"]
    assert ann["multimask"]["primary"] == [poly]
