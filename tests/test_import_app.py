"""The app's import: the same mapping model and report as the command line, shown in the import message."""

from __future__ import annotations

import json

import pytest

from app.core.datasets.storage import LabelStore
from app.views.label import LabelView
from tests.test_app import _make_run
from tests.test_import_microscopy import _coco_fields, _labelme


@pytest.fixture()
def ds(tmp_path):
    return LabelStore(tmp_path / "data").create("worms", ["worm"])


def test_store_labelme_union_and_default_class(ds, tmp_path):
    truth = _labelme(tmp_path / "lm")
    report = ds.import_labelme(tmp_path / "lm", ["Head_a+Head_b=primary", "Head_b=secondary"], default_class="worm")
    with_b = sum("Head_b" in dict(o) for o in truth["objects"])
    assert report.sources["Head_b"].into == {"primary": with_b, "secondary": with_b}
    assert report.images_missing == ["img/cell_2.png"] and report.counts["skipped images"] == 1
    instances = [i for e in ds.images() for i in ds.load(e["id"])["instances"]]
    assert len(instances) == 7 and {i["class"] for i in instances} == {"worm"}  # 2 objects on the missing image
    assert sum(bool(i["masks"]["secondary"]) for i in instances) == 6
    with pytest.raises(ValueError, match="pass --class NAME"):
        ds.import_labelme(tmp_path / "lm", ["Head_a=primary"])
    with pytest.raises(ValueError, match=r"maps to mask names \['whole'\]"):
        ds.import_labelme(tmp_path / "lm", ["Head_a=worm:whole"])


def test_store_coco_and_coco_fields(ds, tmp_path):
    truth = _labelme(tmp_path / "lm")
    src = _coco_fields(tmp_path, truth)
    report = ds.import_coco_fields(src, ["segmentation_Head_a+segmentation_Head_b=primary"])
    assert report.dropped_classes == {"_background_": "no annotations"}
    assert report.sources["segmentation_Mid"].skipped == {"not mapped": 9}
    data = json.loads(src.read_text())
    for ann in data["annotations"]:
        ann["segmentation"] = ann["segmentation_Tail"]
    src.write_text(json.dumps(data))
    report = ds.import_coco(src)
    assert report.sources["segmentation"].into == {"primary": 9}
    assert ds.classes == ["worm"]


def test_view_import_shows_the_report(tmp_path):
    _make_run(tmp_path / "runs" / "tiny")
    view = LabelView(tmp_path / "data", tmp_path / "runs", import_roots=[tmp_path / "incoming"])
    view.create_dataset("worms", "worm", "primary, secondary")
    _labelme(tmp_path / "incoming" / "lm")
    msg = view.import_data(
        "worms",
        "labelme folder",
        str(tmp_path / "incoming" / "lm"),
        "",
        "Head_a=primary, Head_b=primary\nHead_b=secondary",
        "worm",
    )
    assert "Imported" in msg and "Head_b" in msg and "8 primary, 8 secondary" in msg and "cell_2.png" in msg
    msg = view.import_data("worms", "labelme folder", str(tmp_path / "incoming" / "lm"), "", "Head_a=primary", "")
    assert msg.startswith("⚠️") and "pass --class NAME" in msg
