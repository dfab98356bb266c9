"""`python -m multimask split` (the app's seeded split by image) and `stats`, and the per-class AP table."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.core.datasets import LabelStore
from multimask.cli import main
from multimask.data import load_multimask_json
from multimask.data.split import seeded_val_ids, split_dataset
from multimask.data.stats import dataset_stats, format_stats
from multimask.evaluation import format_class_ap

SQUARE = [10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]
INNER = [20.0, 20.0, 30.0, 20.0, 30.0, 30.0, 20.0, 30.0]


def _ann(ann_id, image_id, cat, primary, secondary):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "iscrowd": 0,
        "multimask": {"primary": primary, "secondary": secondary},
    }


@pytest.fixture
def small_json(tmp_path) -> Path:
    """4 images (img3 without instances), classes leaf (id 5) and fruit (id 9); some instances lack a mask."""
    (tmp_path / "images").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "images" / f"img{i}.png"), np.full((60, 80, 3), 40 * i, np.uint8))
    anns = [
        _ann(1, 0, 5, [SQUARE], [INNER]),
        _ann(2, 0, 9, [INNER], []),
        _ann(3, 1, 5, [SQUARE], []),
        _ann(4, 2, 5, [], [INNER]),
        _ann(5, 2, 9, [SQUARE], [INNER]),
    ]
    path = tmp_path / "all.json"
    path.write_text(
        json.dumps(
            {
                "mask_names": ["primary", "secondary"],
                "images": [{"id": i, "file_name": f"images/img{i}.png", "height": 60, "width": 80} for i in range(4)],
                "categories": [{"id": 9, "name": "fruit"}, {"id": 5, "name": "leaf"}],
                "annotations": anns,
            }
        )
    )
    return path


def _images(path: Path) -> dict:
    return {i["id"]: i for i in json.loads(path.read_text())["images"]}


def test_stats_counts_classes_masks_and_empty_images(small_json, capsys):
    dicts, meta = load_multimask_json(small_json)
    stats = dataset_stats(dicts, meta["thing_classes"], meta["mask_names"])
    assert list(stats.classes) == ["leaf", "fruit"]  # in category id order
    leaf, fruit = stats.classes["leaf"], stats.classes["fruit"]
    assert (leaf.images, leaf.instances, leaf.masks) == (3, 3, {"primary": 2, "secondary": 2})
    assert (fruit.images, fruit.instances, fruit.masks) == (2, 2, {"primary": 2, "secondary": 1})
    assert (stats.images, stats.images_without_instances) == (4, 1)
    assert (stats.total.images, stats.total.instances, stats.total.masks) == (3, 5, {"primary": 4, "secondary": 3})

    main(["stats", str(small_json)])
    out = capsys.readouterr().out
    assert out.startswith(format_stats(stats))
    lines = out.splitlines()
    assert lines[0].split() == [
        "class",
        "images",
        "instances",
        "primary",
        "no",
        "primary",
        "secondary",
        "no",
        "secondary",
    ]
    assert lines[1].split() == ["leaf", "3", "3", "2", "1", "2", "1"]
    assert lines[2].split() == ["fruit", "2", "2", "2", "0", "1", "1"]
    assert lines[3].split() == ["all", "3", "5", "4", "1", "3", "2"]
    assert "4 images, 1 without instances" in out and "no problems found" in out


def test_split_is_seeded_by_image_and_keeps_everything(synth_data, tmp_path, capsys):
    src = Path(synth_data["train"])
    main(["split", str(src), "--val-fraction", "0.25", "--seed", "3", "--out", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    source_dicts, meta = load_multimask_json(src)
    by_id = {d["image_id"]: d for d in source_dicts}
    parts = {s: load_multimask_json(tmp_path / "a" / f"{s}.json") for s in ("train", "val")}
    ids = {s: [d["image_id"] for d in dicts] for s, (dicts, _) in parts.items()}
    assert len(ids["val"]) == round(len(source_dicts) * 0.25) and not set(ids["train"]) & set(ids["val"])
    assert sorted(ids["train"] + ids["val"]) == sorted(by_id)
    assert set(ids["val"]) == seeded_val_ids(list(by_id), 0.25, 3)
    for dicts, part_meta in parts.values():
        assert part_meta["thing_classes"] == meta["thing_classes"] and part_meta["mask_names"] == meta["mask_names"]
        for d in dicts:  # the same image file, and the same instances, masks and classes
            assert Path(d["file_name"]).resolve() == Path(by_id[d["image_id"]]["file_name"]).resolve()
            assert [(a["category_id"], a["multimask"]) for a in d["annotations"]] == [
                (a["category_id"], a["multimask"]) for a in by_id[d["image_id"]]["annotations"]
            ]
    raw = json.loads((tmp_path / "a" / "train.json").read_text())
    assert all(not Path(i["file_name"]).is_absolute() for i in raw["images"])

    n_val_instances = sum(len(by_id[i]["annotations"]) for i in ids["val"])
    header, *rows = printed.splitlines()[1 : len(meta["thing_classes"]) + 3]
    assert header.split() == ["class", "train", "images", "train", "instances", "val", "images", "val", "instances"]
    assert rows[-1].split() == [
        "all",
        str(len(ids["train"])),
        str(sum(len(d["annotations"]) for d in source_dicts) - n_val_instances),
        str(len(ids["val"])),
        str(n_val_instances),
    ]

    again = split_dataset(src, tmp_path / "b", 0.25, 3)
    assert all(again.paths[s].read_bytes() == (tmp_path / "a" / f"{s}.json").read_bytes() for s in ("train", "val"))
    others = [set(_images(split_dataset(src, tmp_path / f"s{k}", 0.25, k).paths["val"])) for k in (4, 5, 6)]
    assert any(o != set(ids["val"]) for o in others)


def test_split_of_an_app_export_is_the_apps_split(tmp_path):
    ds = LabelStore(tmp_path / "data").create("leaves", ["leaf", "fruit"])
    ids = [
        ds.add_image_bytes(f"img{i}.png", cv2.imencode(".png", np.full((60, 80, 3), i, np.uint8))[1].tobytes())["id"]
        for i in range(11)
    ]
    for k, image in enumerate(ids[:10]):
        ds.save(
            image,
            0,
            [
                {
                    "id": "a",
                    "class": ["leaf", "fruit"][k % 2],
                    "masks": {"primary": [SQUARE], "secondary": [INNER] if k % 3 else []},
                }
            ],
        )
    # ids[10] is never labelled: the app leaves it out, so does the split of its export
    app = {s: {i["label_id"] for i in _images(p).values()} for s, p in ds.export(tmp_path / "app", 0.3, 7).items()}
    assert app["val"] == seeded_val_ids(ids[:10], 0.3, 7) and len(app["val"]) == 3

    everything = ds.export(tmp_path / "all", val_fraction=0)["train"]
    result = split_dataset(everything, tmp_path / "split", 0.3, 7)
    ours = {s: {i["label_id"] for i in _images(p).values()} for s, p in result.paths.items()}
    assert ours == app
    assert result.stats["val"].total.instances == 3 and result.stats["train"].total.instances == 7
    for path in result.paths.values():
        dicts, _ = load_multimask_json(path)
        assert all(Path(d["file_name"]).is_file() for d in dicts)


def test_bad_input_is_one_line_naming_the_file(small_json, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    own = tmp_path / "train.json"  # a split into its own folder would overwrite it
    own.write_bytes(small_json.read_bytes())
    cases = [
        (["split", str(broken), "--out", str(tmp_path / "o")], str(broken)),
        (["stats", str(broken)], str(broken)),
        (["split", str(small_json), "--val-fraction", "1", "--out", str(tmp_path / "o")], "val_fraction"),
        (["split", str(own), "--out", str(tmp_path)], str(own)),
    ]
    for argv, named in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and named in err, (argv, err)
    assert not (tmp_path / "o").exists() and own.read_bytes() == small_json.read_bytes()


def test_class_ap_table():
    nan = float("nan")
    results = {
        "bbox": {"AP": 50.0, "AP-leaf": 61.234, "AP-fruit": nan},
        "segm/primary": {"AP": 40.0, "AP-leaf": 40.0, "AP-fruit": nan},
        "segm/secondary": {"AP": 10.0, "AP-leaf": 0.0, "AP-fruit": nan},
    }
    lines = format_class_ap(results).splitlines()
    assert lines[0].split() == ["class", "bbox", "segm/primary", "segm/secondary"]
    assert lines[1].split() == ["leaf", "61.23", "40.00", "0.00"]
    assert lines[2].split() == ["fruit", "-", "-", "-"]
    assert math.isnan(results["bbox"]["AP-fruit"])  # the results are only read
