"""The labelling storage behind the Label tab: datasets, images, revisions, checks, export and import."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO

from app.core.datasets import ConflictError, LabelDataset, LabelStore, PayloadError, intake, validate_instances
from app.core.datasets import storage as store_module
from multimask.data.dataset_json import load_multimask_json, make_annotation, write_multimask_json
from multimask.data.geometry import Report
from multimask.data.images import MAX_IMAGE_PIXELS

H, W = 60, 80
CLASSES = ["leaf", "fruit"]
NAMES = ["primary", "secondary"]
SQUARE = [10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]
INNER = [20.0, 20.0, 30.0, 20.0, 30.0, 30.0, 20.0, 30.0]
OUTSIDE = [60.0, 5.0, 75.0, 5.0, 75.0, 20.0, 60.0, 20.0]


def _png(h: int = H, w: int = W, value: int = 0) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), value, np.uint8))[1].tobytes()


def _jpeg(h: int = H, w: int = W) -> bytes:
    return cv2.imencode(".jpg", np.full((h, w, 3), 128, np.uint8))[1].tobytes()


def _huge_png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with (almost) no pixel data: cheap to make, costly to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _inst(iid: str = "a", cls: str = "leaf", primary=None, secondary=None) -> dict:
    return {"id": iid, "class": cls, "masks": {"primary": [primary or SQUARE], "secondary": secondary or []}}


@pytest.fixture
def store(tmp_path) -> LabelStore:
    return LabelStore(tmp_path / "data")


@pytest.fixture
def ds(store) -> LabelDataset:
    return store.create("leaves", CLASSES)


def _add(ds: LabelDataset, n: int, prefix: str = "img") -> list[str]:
    return [ds.add_image_bytes(f"{prefix}{i}.png", _png(value=i))["id"] for i in range(n)]


# ---------------------------------------------------------------- datasets


def test_create_list_open(store, tmp_path):
    assert store.list_datasets() == []
    ds = store.create("leaves", CLASSES)
    store.create("b-2.v1", ["x"], mask_names=("whole",))
    (tmp_path / "data" / "not_a_dataset").mkdir()  # a folder without dataset.json is not listed
    assert store.list_datasets() == ["b-2.v1", "leaves"]
    folder = tmp_path / "data" / "leaves"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["classes"] == CLASSES and meta["mask_names"] == NAMES
    assert meta["rules"] == {"secondary_inside_primary": True} and meta["created"]
    assert json.loads((folder / "index.json").read_text()) == {"images": []}
    assert (folder / "images").is_dir() and (folder / "annotations").is_dir()
    assert ds.meta == {
        "name": "leaves",
        "classes": CLASSES,
        "mask_names": NAMES,
        "rules": {"secondary_inside_primary": True},
    }
    again = LabelStore(tmp_path / "data").open("b-2.v1")
    assert again.mask_names == ["whole"] and again.images() == []
    with pytest.raises(ValueError, match="already exists"):
        store.create("leaves", CLASSES)
    with pytest.raises(ValueError, match="already exists"):
        store.create("not_a_dataset", CLASSES)
    with pytest.raises(ValueError, match="no labelling dataset named 'nope'"):
        store.open("nope")


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "-x", "a b", "x" * 65, "a\n", None, 3]
)
def test_bad_dataset_names(store, tmp_path, name):
    with pytest.raises(ValueError, match="invalid dataset name"):
        store.create(name, CLASSES)
    with pytest.raises(ValueError, match="invalid dataset name"):
        store.open(name)
    assert not (tmp_path / "x").exists() and store.list_datasets() == []


def test_open_sees_changes_made_outside(store, ds):
    _add(ds, 2)
    meta = json.loads((ds.folder / "dataset.json").read_text())
    (ds.folder / "dataset.json").write_text(json.dumps({**meta, "classes": [*CLASSES, "bud", "x" * 10]}))
    index = json.loads((ds.folder / "index.json").read_text())
    (ds.folder / "index.json").write_text(json.dumps({"images": index["images"][:1]}))
    again = store.open("leaves")
    assert again.classes == [*CLASSES, "bud", "x" * 10] and len(again.images()) == 1
    assert ds.classes == again.classes  # one shared state per folder
    (ds.folder / "index.json").write_text('{"images": [{"id": "../x"}]}')
    with pytest.raises(ValueError, match=r"index.json images\[0\]"):
        store.open("leaves")


def test_bad_classes_and_mask_names(store):
    with pytest.raises(ValueError, match="duplicate class"):
        store.create("a", ["leaf", "leaf"])
    with pytest.raises(ValueError, match="class name"):
        store.create("a", ["leaf", "  "])
    with pytest.raises(ValueError, match="not valid"):
        store.create("a", CLASSES, mask_names=["primary", "sec-ondary"])
    with pytest.raises(ValueError, match="duplicate mask"):
        store.create("a", CLASSES, mask_names=["primary", "primary"])
    assert store.list_datasets() == []


# ---------------------------------------------------------------- images


def test_add_images_by_bytes(ds):
    png = ds.add_image_bytes("photo 1.PNG", _png())
    assert png["file_name"] == "photo_1.png" and (png["width"], png["height"]) == (W, H)
    assert png["status"] == "unlabelled"
    jpg = ds.add_image_bytes("C:\\Users\\me\\pics\\../../leaf.jpeg", _jpeg(30, 40))
    assert jpg["file_name"] == "leaf.jpeg" and (jpg["width"], jpg["height"]) == (40, 30)
    again = ds.add_image_bytes("../../photo 1.png", _png(value=1))  # path stripped, name made unique
    assert again["file_name"] == "photo_1_2.png"
    no_suffix = ds.add_image_bytes("scan", _jpeg())
    assert no_suffix["file_name"] == "scan.jpg"
    assert ds.add_image_bytes("really_png.JPG", _png(value=2))["file_name"] == "really_png.png"
    # The same image again, under any name: refused, naming the copy it has (nothing is written).
    with pytest.raises(ValueError, match=r"^copy\.png: the same image as photo_1\.png, already in the dataset"):
        ds.add_image_bytes("copy.png", _png())
    ds.remove_image(ds.images()[-1]["id"])
    ids = [e["id"] for e in (png, jpg, again, no_suffix)]
    assert len(set(ids)) == 4 and all(store_module.IMAGE_ID_RE.fullmatch(i) for i in ids)
    assert [e["id"] for e in ds.images()] == ids
    path = ds.image_path(png["id"])
    assert path.parent == ds.images_dir and path.read_bytes() == _png()
    index = json.loads((ds.folder / "index.json").read_text())["images"]
    assert index == ds.images()
    for bad in ("../x", "", "a/b", None):
        with pytest.raises(ValueError, match="image id"):
            ds.image_path(bad)
    with pytest.raises(ValueError, match="not in dataset"):
        ds.image_path("abc123")


def test_bad_images_are_refused(ds, monkeypatch):
    with pytest.raises(ValueError, match="notes.txt: not a readable image"):
        ds.add_image_bytes("notes.txt", b"hello, not an image")
    with pytest.raises(ValueError, match="empty.png: the file is empty"):
        ds.add_image_bytes("empty.png", b"")
    with pytest.raises(ValueError, match=f"huge.png: 10000x9000 is larger than {MAX_IMAGE_PIXELS} pixels"):
        ds.add_image_bytes("huge.png", _huge_png_header(10000, 9000))
    with pytest.raises(ValueError, match="bomb.png: over 178 million pixels"):
        ds.add_image_bytes("bomb.png", _huge_png_header(20000, 20000))
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="anim.gif: GIF images are not supported"):
        ds.add_image_bytes("anim.gif", gif.getvalue())
    with pytest.raises(ValueError, match="truncated.png: not a readable image"):
        ds.add_image_bytes("truncated.png", _png()[:40])
    monkeypatch.setattr(intake, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(ValueError, match="big.png: larger than"):
        ds.add_image_bytes("big.png", _png())
    monkeypatch.setattr(intake, "MAX_IMAGE_PIXELS", W * H - 1)  # decoded size checked too
    monkeypatch.setattr(intake, "MAX_IMAGE_BYTES", 10**6)
    with pytest.raises(ValueError, match="larger than"):
        ds.add_image_bytes("a.png", _png())
    assert ds.images() == [] and list(ds.images_dir.iterdir()) == []


def test_add_from_folder(ds, tmp_path):
    allowed = tmp_path / "uploads"
    src = allowed / "batch"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(_png())
    (src / "b.jpg").write_bytes(_jpeg())
    (src / "broken.png").write_bytes(b"nope")
    (src / "readme.txt").write_text("not an image")  # not an image suffix: ignored
    (src / "sub" / "c.png").write_bytes(_png())  # not recursive
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "s.png").write_bytes(_png())
    (src / "link.png").symlink_to(outside / "s.png")

    added, errors = ds.add_images_from_folder(src, allowed)
    assert [e["file_name"] for e in added] == ["a.png", "b.jpg"]
    assert len(errors) == 2
    assert errors[0].startswith("broken.png: not a readable image")
    assert errors[1].startswith("link.png: links outside")
    assert [e["file_name"] for e in ds.images()] == ["a.png", "b.jpg"]
    assert json.loads((ds.folder / "index.json").read_text())["images"] == ds.images()

    for bad in (outside, allowed / ".." / "secret", "/"):
        with pytest.raises(ValueError, match="only folders inside"):
            ds.add_images_from_folder(bad, allowed)
    with pytest.raises(ValueError, match="not a folder"):
        ds.add_images_from_folder(allowed / "missing", allowed)


def test_remove_image(ds):
    a, b = _add(ds, 2)
    ds.save(a, 0, [_inst()])
    path = ds.image_path(a)
    ds.remove_image(a)
    assert [e["id"] for e in ds.images()] == [b]
    assert not path.exists() and not (ds.annotations_dir / f"{a}.json").exists()
    assert [e["id"] for e in json.loads((ds.folder / "index.json").read_text())["images"]] == [b]
    with pytest.raises(ValueError, match="not in dataset"):
        ds.load(a)


# ---------------------------------------------------------------- annotations


def test_save_load_round_trip(ds):
    (image,) = _add(ds, 1)
    assert ds.load(image) == {"image_id": image, "revision": 0, "status": "unlabelled", "instances": []}
    inst = _inst("a", secondary=[INNER])
    out = ds.save(image, 0, [inst])
    assert out == {"revision": 1, "status": "in_progress", "warnings": []}
    loaded = ds.load(image)
    assert loaded["revision"] == 1 and loaded["instances"] == [inst]
    two = [inst, _inst("b", "fruit", primary=OUTSIDE)]
    assert ds.save(image, 1, two)["revision"] == 2
    assert ds.load(image)["instances"] == two
    doc = json.loads((ds.annotations_dir / f"{image}.json").read_text())
    assert doc["revision"] == 2 and doc["status"] == "in_progress" and doc["saved_at"]
    # a fresh object reads the same
    assert LabelStore(ds.folder.parent).open("leaves").load(image)["instances"] == two


def test_conflict(ds):
    (image,) = _add(ds, 1)
    ds.save(image, 0, [_inst("a")])
    ds.save(image, 1, [_inst("b")])  # tab 1
    with pytest.raises(ConflictError, match=r"changed elsewhere.*revision 2.*revision 1") as e:
        ds.save(image, 1, [_inst("c")])  # tab 2, still at revision 1
    assert isinstance(e.value, RuntimeError) and e.value.current_revision == 2
    assert ds.load(image)["instances"] == [_inst("b")] and ds.load(image)["revision"] == 2


def test_concurrent_saves_from_one_revision(ds):
    (image,) = _add(ds, 1)
    results: list = []

    def save(k):
        try:
            results.append(ds.save(image, 0, [_inst(f"t{k}")]))
        except ConflictError as e:
            results.append(e)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, ConflictError) for r in results) == 7
    assert ds.load(image)["revision"] == 1


def test_status_transitions(ds):
    (image,) = _add(ds, 1)

    def index_status():
        return json.loads((ds.folder / "index.json").read_text())["images"][0]["status"]

    assert ds.save(image, 0, [])["status"] == "unlabelled"
    assert ds.save(image, 1, [_inst()])["status"] == "in_progress" and index_status() == "in_progress"
    assert ds.save(image, 2, [_inst()], status="done")["status"] == "done"
    assert index_status() == "done" and ds.images()[0]["status"] == "done"
    assert ds.save(image, 3, [_inst()])["status"] == "done"  # stays done
    assert ds.save(image, 4, [])["status"] == "done"  # done and empty: a checked negative
    assert ds.save(image, 5, [_inst()], status="in_progress")["status"] == "in_progress"
    assert ds.save(image, 6, [])["status"] == "unlabelled" and index_status() == "unlabelled"
    with pytest.raises(ValueError, match="status must be one of"):
        ds.save(image, 7, [], status="finished")
    assert ds.load(image)["revision"] == 7


def test_index_written_only_when_status_changes(ds, monkeypatch):
    (image,) = _add(ds, 1)
    ds.save(image, 0, [_inst()])
    writes = []
    for name in ("atomic_write_json", "atomic_write_bytes"):
        real = getattr(store_module, name)
        monkeypatch.setattr(
            store_module, name, lambda p, *a, real=real, **k: (writes.append(Path(p).name), real(p, *a, **k))
        )
    ds.save(image, 1, [_inst("b")])
    assert writes == [f"{image}.json"]


def test_secondary_inside_primary_warning(ds):
    (image,) = _add(ds, 1)
    inside = _inst("in", secondary=[INNER])
    edge = _inst("edge", secondary=[[45.0, 20.0, 50.3, 20.0, 50.3, 30.0, 45.0, 30.0]])  # 5.7% out of 53 px2...
    out = _inst("out", secondary=[OUTSIDE])
    lone = {"id": "lone", "class": "leaf", "masks": {"secondary": [INNER]}}
    result = ds.save(image, 0, [inside, edge, out, lone])
    warnings = result["warnings"]
    assert len(warnings) == 3
    assert "instance #2 (id 'edge'" in warnings[0] and "outside its 'primary'" in warnings[0]
    assert "instance #3 (id 'out'" in warnings[1] and "100%" in warnings[1]
    # A secondary without a primary says so, not "100% outside".
    assert "instance #4 (id 'lone', leaf) has a 'secondary' mask but no 'primary' mask" in warnings[2]
    assert ds.load(image)["revision"] == 1  # warnings do not stop the save
    tiny = _inst("tiny", secondary=[[45.0, 20.0, 50.05, 20.0, 50.05, 30.0, 45.0, 30.0]])  # 1% out: tolerated
    assert ds.save(image, 1, [tiny])["warnings"] == []


def test_other_save_warnings(ds):
    (image,) = _add(ds, 1)
    bowtie = [10.0, 10.0, 30.0, 30.0, 30.0, 10.0, 10.0, 30.0]
    flat = [1.0, 1.0, 5.0, 1.0, 9.0, 1.0]
    empty = {"id": "e", "class": "leaf", "masks": {"primary": [], "secondary": []}}
    result = ds.save(image, 0, [_inst("x", primary=bowtie), empty, _inst("f", primary=flat)])
    text = "\n".join(result["warnings"])
    assert "id 'x'" in text and "crosses itself" in text
    assert "id 'e'" in text and "not saved" in text
    assert "instance #3 (id 'f'" in text and "no area" in text
    assert [i["id"] for i in ds.load(image)["instances"]] == ["x", "f"]


def test_payload_validation():
    kw = {"classes": CLASSES, "mask_names": NAMES, "width": W, "height": H}
    good = {"id": "a-1_B", "class": "leaf", "masks": {"primary": [[0, 0, 80.4, -0.3, 40, 60.5]]}}
    out = validate_instances([good], **kw)
    assert out == [
        {"id": "a-1_B", "class": "leaf", "masks": {"primary": [[0.0, 0.0, 80.0, 0.0, 40.0, 60.0]], "secondary": []}}
    ]
    assert validate_instances([_inst(primary=[1.234567, 2, 3, 4, 5, 6])], **kw)[0]["masks"]["primary"] == [
        [1.23, 2.0, 3.0, 4.0, 5.0, 6.0]
    ]
    assert validate_instances([], **kw) == []

    def bad(payload, match):
        with pytest.raises(PayloadError, match=match):
            validate_instances(payload, **kw)

    def with_part(part, mask="primary"):
        return [{"id": "p", "class": "leaf", "masks": {mask: [part]}}]

    bad({"id": "a"}, "must be a list")
    bad(["x"], "instance #1: must be an object")
    bad([{"id": "a", "class": "leaf"}], r"missing \['masks'\]")
    bad([{**_inst(), "extra": 1}], r"unexpected \['extra'\]")
    bad([_inst(iid="../x")], "instance #1: id must be")
    bad([_inst(iid="")], "id must be")
    bad([_inst(iid=7)], "id must be")
    bad([_inst(iid="x" * 41)], "id must be")
    bad([_inst("a"), _inst("a")], r"instance #2 \(id 'a'\): duplicate id")
    bad([_inst(cls="tree")], "unknown class 'tree'")
    bad([{"id": "a", "class": "leaf", "masks": [SQUARE]}], "masks must be an object")
    bad([{"id": "a", "class": "leaf", "masks": {"tertiary": [SQUARE]}}], "unknown mask name 'tertiary'")
    bad([{"id": "a", "class": "leaf", "masks": {"primary": SQUARE}}], "part 1: a polygon must be a flat list")
    bad([{"id": "a", "class": "leaf", "masks": {"primary": "x"}}], "must be a list of polygons")
    bad(with_part([1, 2, 3, 4, 5]), "part 1: odd number of coordinates")
    bad(with_part([1, 2, 3, 4]), "at least 3 points")
    bad(with_part([1, 2, 3, 4, float("nan"), 6]), "coordinate 4 is not finite")
    bad(with_part([1, 2, 3, 4, float("inf"), 6]), "not finite")
    bad(with_part([1, 2, 3, 4, 10**400, 6]), "not finite")
    bad(with_part([1, 2, 3, True, 5, 6]), "coordinate 3 is not a number")
    bad(with_part([1, 2, 3, "4", 5, 6]), "not a number")
    bad(with_part([1, 2, 3, None, 5, 6]), "not a number")
    bad(with_part([1, 2, 3, 4, [5], 6]), "not a number")
    bad(with_part([1, 2, 3, 4, 80.6, 6]), r"point 3 is outside the image \(x = 80.6")
    bad(with_part([1, 2, 3, -0.6, 5, 6], "secondary"), r"mask 'secondary', part 1: point 2 is outside the image")
    bad(with_part([0.0, 0.0] * 10_001), "too many points")
    bad([{"id": "a", "class": "leaf", "masks": {"primary": [SQUARE] * 101}}], "too many parts")
    bad([_inst(f"i{k}") for k in range(1001)], "too many instances")
    bad([_inst("ok"), _inst("z", secondary=[[1, 2, 3]])], r"instance #2 \(id 'z'\), mask 'secondary', part 1")
    assert len(validate_instances(with_part([0.0, 0.0] * 10_000), **kw)[0]["masks"]["primary"][0]) == 20_000


def test_save_refuses_bad_payload_and_writes_nothing(ds):
    (image,) = _add(ds, 1)
    ds.save(image, 0, [_inst()])
    with pytest.raises(PayloadError, match="unknown class"):
        ds.save(image, 1, [_inst(cls="tree")])
    with pytest.raises(PayloadError, match="base_revision"):
        ds.save(image, True, [_inst()])
    assert ds.load(image)["revision"] == 1 and ds.load(image)["instances"] == [_inst()]


def test_failed_write_keeps_previous_annotations(ds, monkeypatch):
    (image,) = _add(ds, 1)
    ds.save(image, 0, [_inst("old")])

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        ds.save(image, 1, [_inst("new")], status="done")
    with pytest.raises(OSError, match="disk full"):
        ds.add_image_bytes("b.png", _png(value=9))
    monkeypatch.undo()
    loaded = ds.load(image)
    assert loaded["revision"] == 1 and loaded["instances"] == [_inst("old")] and loaded["status"] == "in_progress"
    assert [e["status"] for e in ds.images()] == ["in_progress"]  # nothing half-changed in memory either
    assert not [p for p in ds.folder.rglob("*") if p.name.endswith(".tmp")]
    assert ds.save(image, 1, [_inst("new")])["revision"] == 2


def test_navigation_and_previous_instances(ds):
    a, b, c, d = _add(ds, 4)
    assert ds.next_image(a, "next") == b and ds.next_image(d, "next") is None
    assert ds.next_image(b, "prev") == a and ds.next_image(a, "prev") is None
    assert ds.next_image(None, "next") == a and ds.next_image(None, "prev") == d
    ds.save(b, 0, [_inst("x", secondary=[INNER]), _inst("y", "fruit", primary=OUTSIDE)])
    ds.save(c, 0, [_inst()], status="done")
    assert ds.next_image(a, "next_unlabelled") == d
    assert ds.next_image(d, "next_unlabelled") == a  # wraps around
    with pytest.raises(ValueError, match="direction"):
        ds.next_image(a, "sideways")

    assert ds.previous_instances(a) == []
    sources: dict[str, str] = {}
    copied = ds.previous_instances(c, sources)
    assert [sources[i["id"]] for i in copied] == [i["id"] for i in ds.load(b)["instances"]]
    assert [(i["class"], i["masks"]) for i in copied] == [(i["class"], i["masks"]) for i in ds.load(b)["instances"]]
    assert {i["id"] for i in copied}.isdisjoint({"x", "y"}) and len({i["id"] for i in copied}) == 2
    assert ds.save(c, 1, copied)["revision"] == 2  # what it returns is a valid payload

    small = ds.add_image_bytes("small.png", _png(30, 40))["id"]
    ds.save(
        d,
        0,
        [
            _inst("big", primary=[30.0, 20.0, 70.0, 20.0, 70.0, 50.0, 30.0, 50.0]),
            _inst("gone", primary=[60.0, 40.0, 70.0, 40.0, 70.0, 50.0]),
        ],
    )
    (clipped,) = ds.previous_instances(small)  # 80x60 -> 40x30: clipped, an instance left empty is dropped
    assert np.asarray(clipped["masks"]["primary"][0]).reshape(-1, 2).max(axis=0).tolist() == [40.0, 30.0]
    ds.save(small, 0, [clipped])


# ---------------------------------------------------------------- classes


def test_add_and_rename_class(ds):
    a, b, c = _add(ds, 3)
    ds.save(a, 0, [_inst("1"), _inst("2", "fruit", primary=OUTSIDE)])
    ds.save(b, 0, [_inst("3", "fruit")])
    ds.add_class(" stem ")
    assert ds.classes == [*CLASSES, "stem"]
    for bad, match in (("leaf", "already exists"), ("", "non-empty"), ("  ", "non-empty"), (None, "non-empty")):
        with pytest.raises(ValueError, match=match):
            ds.add_class(bad)

    before_b = ds.load(b)["revision"]
    ds.rename_class("leaf", "blade")
    assert ds.classes == ["blade", "fruit", "stem"]
    assert json.loads((ds.folder / "dataset.json").read_text())["classes"] == ["blade", "fruit", "stem"]
    loaded = ds.load(a)
    assert [i["class"] for i in loaded["instances"]] == ["blade", "fruit"] and loaded["revision"] == 2
    assert ds.load(b)["revision"] == before_b  # did not use it: untouched
    assert ds.load(c)["revision"] == 0
    with pytest.raises(ConflictError):
        ds.save(a, 1, [_inst("1", "blade")])  # an editor holding the old version must reload
    for old, new, match in (
        ("leaf", "x", "no class 'leaf'"),
        ("fruit", "stem", "already exists"),
        ("fruit", "", "non-empty"),
    ):
        with pytest.raises(ValueError, match=match):
            ds.rename_class(old, new)
    assert LabelStore(ds.folder.parent).open("leaves").classes == ["blade", "fruit", "stem"]


# ---------------------------------------------------------------- export


def _check_export(paths: dict, classes=("leaf", "fruit")) -> None:
    for path in paths.values():
        coco = COCO(str(path))
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert mask_util.area(coco.annToRLE(ann)) > 0
        report = Report()
        dicts, meta = load_multimask_json(path, report=report)
        assert not report, report.summary()
        assert meta["thing_classes"] == list(classes) and meta["mask_names"] == NAMES
        assert all(Path(d["file_name"]).is_file() for d in dicts)


def _split(paths: dict) -> tuple[list, list]:
    return tuple(sorted(i["label_id"] for i in json.loads(paths[s].read_text())["images"]) for s in ("train", "val"))


def test_export(ds, tmp_path):
    ids = _add(ds, 12)
    for k, image in enumerate(ids[:10]):
        ds.save(
            image,
            0,
            [_inst("a", secondary=[INNER]), _inst("b", "fruit", primary=OUTSIDE)],
            status="done" if k < 6 else None,
        )
    ds.save(ids[10], 0, [], status="done")  # a checked negative: exported without instances
    # ids[11] never labelled: left out
    out = tmp_path / "exports" / "run1"
    paths = ds.export(out, val_fraction=0.25, seed=1)
    assert paths == {"train": out / "train.json", "val": out / "val.json"}
    _check_export(paths)
    train, val = _split(paths)
    assert len(val) == 3 and len(train) == 8 and set(train + val) == set(ids[:11])
    raw = json.loads(paths["train"].read_text())
    assert raw["mask_names"] == NAMES and all(not Path(i["file_name"]).is_absolute() for i in raw["images"])
    n_anns = sum(1 for i in raw["images"] if i["label_id"] != ids[10]) * 2
    assert len(raw["annotations"]) == n_anns
    ann = raw["annotations"][0]
    assert ann["multimask"]["primary"] == [SQUARE] and ann["multimask"]["secondary"] == [INNER]
    assert ann["bbox"] == [10.0, 10.0, 40.0, 40.0]

    assert _split(ds.export(tmp_path / "again", val_fraction=0.25, seed=1)) == (train, val)
    docs = ds.export_documents(val_fraction=0.25, seed=1)  # the same, as data: nothing written
    assert (
        sorted(i["label_id"] for i in docs["val"]["images"]) == val
        and docs["train"]["annotations"] == raw["annotations"]
    )
    assert all(Path(i["file_name"]) == ds.image_path(i["label_id"]) for i in docs["train"]["images"])
    others = [_split(ds.export(tmp_path / f"seed{k}", val_fraction=0.25, seed=k)) for k in (2, 3, 4)]
    assert any(o != (train, val) for o in others)  # ids are random: one other seed could match by chance
    done = _split(ds.export(tmp_path / "done", val_fraction=0.25, seed=1, only_done=True))
    assert set(done[0] + done[1]) == set(ids[:6]) | {ids[10]}
    none = ds.export(tmp_path / "noval", val_fraction=0)
    assert json.loads(none["val"].read_text())["images"] == []
    with pytest.raises(ValueError, match="val_fraction"):
        ds.export(tmp_path / "x", val_fraction=1.0)
    with pytest.raises(ValueError, match="no classes yet"):
        LabelStore(tmp_path / "data2").create("empty", []).export(tmp_path / "x")


def test_export_repairs_self_crossing_polygons(ds, tmp_path):
    (image,) = _add(ds, 1)
    ds.save(image, 0, [_inst("x", primary=[10.0, 10.0, 30.0, 30.0, 30.0, 10.0, 10.0, 30.0])])
    report = Report()
    paths = ds.export(tmp_path / "out", val_fraction=0, report=report)
    assert report.counts == {"repaired polygons": 1}
    _check_export(paths)
    (ann,) = json.loads(paths["train"].read_text())["annotations"]
    assert len(ann["multimask"]["primary"]) == 2  # the bow-tie became two triangles


# ---------------------------------------------------------------- import


def test_import_multimask_synthetic(store, tmp_path):
    from multimask.data.synth import CLASSES as SYNTH_CLASSES
    from multimask.data.synth import generate_synthetic_dataset

    paths = generate_synthetic_dataset(tmp_path / "synth", num_train=3, num_val=0, seed=0, height=64, width=80)
    ds = store.create("synth", ["disc"])
    report = ds.import_multimask(paths["train"])
    source, _ = load_multimask_json(paths["train"])
    assert set(report.counts) <= {"masks with holes lost", "skipped masks", "repaired masks"}
    assert ds.classes == list(dict.fromkeys(["disc", *SYNTH_CLASSES]))
    images = ds.images()
    assert [e["file_name"] for e in images] == ["train_0000.png", "train_0001.png", "train_0002.png"]
    for entry, rec in zip(images, source, strict=True):
        loaded = ds.load(entry["id"])
        assert loaded["revision"] == 1 and len(loaded["instances"]) == len(rec["annotations"])
        assert entry["status"] == ("done" if rec["annotations"] else "unlabelled")
        validate_instances(loaded["instances"], classes=ds.classes, mask_names=NAMES, width=80, height=64)
    holes = sum(
        1
        for rec in source
        for a in rec["annotations"]
        for m in a["multimask"].values()
        if isinstance(m, dict) and _has_hole(mask_util.decode(m))
    )
    assert report.counts.get("masks with holes lost", 0) == holes
    _check_export(ds.export(tmp_path / "out", val_fraction=0.34), ds.classes)
    with pytest.raises(ValueError, match=r"mask names \['whole'\] differ from this dataset's"):
        store.create("other", ["x"], mask_names=["whole", "part"]).import_multimask(_one_mask_json(tmp_path))


def _has_hole(mask: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _one_mask_json(tmp_path: Path) -> Path:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes(_png())
    ann = make_annotation(1, 1, 1, {"whole": [SQUARE]}, H, W, ["whole"])
    write_multimask_json(
        tmp_path / "one" / "d.json",
        [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        [{"id": 1, "name": "leaf"}],
        [ann],
        ["whole"],
    )
    return tmp_path / "one" / "d.json"


def test_import_multimask_with_hole_and_missing_image(ds, tmp_path):
    src = tmp_path / "src"
    (src / "pics").mkdir(parents=True)
    (src / "pics" / "a.png").write_bytes(_png())
    (src / "pics" / "bad.png").write_bytes(b"junk")
    ring = np.zeros((H, W), np.uint8)
    ring[10:50, 10:50] = 1
    ring[20:40, 20:40] = 0
    rle = mask_util.encode(np.asfortranarray(ring))
    rle = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    images = [
        {"id": k, "file_name": f"pics/{n}", "height": H, "width": W}
        for k, n in ((1, "a.png"), (2, "missing.png"), (3, "bad.png"))
    ]
    anns = [
        make_annotation(1, 1, 1, {"primary": rle, "secondary": [INNER]}, H, W, NAMES),
        make_annotation(2, 1, 2, {"primary": [OUTSIDE], "secondary": []}, H, W, NAMES),
        make_annotation(3, 3, 1, {"primary": [SQUARE], "secondary": []}, H, W, NAMES),
    ]
    write_multimask_json(src / "d.json", images, [{"id": 1, "name": "leaf"}, {"id": 2, "name": "stem"}], anns, NAMES)
    report = ds.import_multimask(src / "d.json")
    assert report.counts == {"masks with holes lost": 1, "skipped images": 2}
    text = report.summary()
    assert "missing.png" in text and "bad.png: not a readable image" in text
    assert ds.classes == ["leaf", "fruit", "stem"]
    (entry,) = ds.images()
    assert entry["file_name"] == "a.png" and entry["status"] == "done"
    first, second = ds.load(entry["id"])["instances"]
    assert first["class"] == "leaf" and second["class"] == "stem"
    outline = np.asarray(first["masks"]["primary"][0]).reshape(-1, 2)
    assert outline.min(axis=0).tolist() == [10.5, 10.5] and outline.max(axis=0).tolist() == [49.5, 49.5]
    assert first["masks"]["secondary"] == [INNER]
    assert len(list(ds.images_dir.iterdir())) == 1


def test_import_coco_fields(ds, tmp_path):
    src = tmp_path / "uoais"
    (src / "images").mkdir(parents=True)
    (src / "images" / "a.png").write_bytes(_png())
    data = {
        "images": [{"id": 5, "file_name": "images/a.png", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "box"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "segmentation": [SQUARE], "visible_mask": [INNER]},
            {"id": 2, "image_id": 5, "category_id": 3, "segmentation": [[1, 1, 2]], "visible_mask": []},
        ],
    }
    (src / "train.json").write_text(json.dumps(data))
    report = ds.import_coco_fields(src / "train.json", {"segmentation": "primary", "visible_mask": "secondary"})
    assert report.counts == {"skipped polygons": 1, "skipped annotations": 1}
    (entry,) = ds.images()
    (inst,) = ds.load(entry["id"])["instances"]
    assert inst["class"] == "box" and inst["masks"] == {"primary": [SQUARE], "secondary": [INNER]}
    assert "box" in ds.classes
    with pytest.raises(ValueError, match=r"maps to mask names \['amodal'\].*\['primary', 'secondary'\]"):
        ds.import_coco_fields(src / "train.json", {"segmentation": "amodal"})
    assert len(ds.images()) == 1


def test_import_labelme(ds, tmp_path):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "a.png").write_bytes(_png())

    def shape(label, points, group):
        return {"label": label, "points": points, "group_id": group, "shape_type": "polygon", "flags": {}}

    doc = {
        "shapes": [
            shape("leaf/primary", [[10, 10], [50, 10], [50, 50], [10, 50]], 1),
            shape("leaf/secondary", [[20, 20], [30, 20], [30, 30], [20, 30]], 1),
            shape("leaf/other", [[1, 1], [5, 1], [5, 5]], 1),
            shape("apple/primary", [[60, 5], [75, 5], [75, 20], [60, 20]], 2),
        ],
        "imagePath": "a.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    (lm / "a.json").write_text(json.dumps(doc))
    report = ds.import_labelme(lm)
    assert report.counts == {"skipped shapes": 1}  # mask name 'other' is not this dataset's
    (entry,) = ds.images()
    leaf, apple = ds.load(entry["id"])["instances"]
    assert leaf["class"] == "leaf" and leaf["masks"] == {"primary": [SQUARE], "secondary": [INNER]}
    assert apple["class"] == "apple" and apple["masks"] == {"primary": [OUTSIDE], "secondary": []}

    mapped = {"leaf/primary": "leaf:primary", "leaf/secondary": "secondary", "apple/primary": "fruit:primary"}
    # The same folder again: its image is in the dataset already, so it is skipped, with its annotations.
    again = ds.import_labelme(lm, mapped)
    assert again.counts["skipped images"] == 1 and len(ds.images()) == 1
    assert any("a.png: the same image as a.png, already in the dataset: skipped" in m for m in again.messages)
    other = LabelStore(ds.folder.parent).create("other", ["leaf"])
    assert not other.import_labelme(lm, mapped).counts.keys() - {"skipped shapes"}
    (entry,) = other.images()
    assert [i["class"] for i in other.load(entry["id"])["instances"]] == ["leaf", "fruit"]
    with pytest.raises(ValueError, match=r"maps to mask names \['inner'\]; this dataset's mask names are"):
        ds.import_labelme(lm, {"leaf/primary": "inner"})


def test_tiff_is_stored_as_png_for_the_browser(tmp_path):
    import cv2
    import numpy as np

    from app.core.datasets.storage import LabelStore

    ds = LabelStore(tmp_path).create("tif", ["a"])
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    entry = ds.add_image_bytes("scan.tif", cv2.imencode(".tiff", img)[1].tobytes())
    assert entry["file_name"].endswith(".png") and (entry["width"], entry["height"]) == (40, 30)
    assert np.array_equal(cv2.imread(str(ds.image_path(entry["id"]))), img)


def test_an_image_whose_instances_were_all_deleted_is_unlabelled_again(ds):
    (image,) = _add(ds, 1)
    assert ds.save(image, 0, [_inst("a")])["status"] == "in_progress"
    assert ds.save(image, 1, [], "in_progress")["status"] == "unlabelled"  # what an older editor sent
    assert ds.images()[0]["status"] == "unlabelled"
    assert ds.save(image, 2, [], "done")["status"] == "done", "a checked negative stays done"


def test_the_health_check_names_each_finding_s_image_by_id_and_file(ds):
    ids = _add(ds, 4)
    ds.save(ids[0], 0, [_inst("a", secondary=[INNER]), _inst("b", secondary=[OUTSIDE])])
    ds.save(ids[1], 0, [_inst("c")])
    ds.save(ids[2], 0, [], status="done")  # a checked negative; ids[3] is not labelled: not checked
    health = ds.health()
    found = [(f.kind, f.image_id, f.file_name, f.instance) for f in health.findings]
    assert found == [
        ("secondary outside primary", ids[0], "img0.png", 1),
        ("no secondary", ids[1], "img1.png", 0),
        ("image without instances", ids[2], "img2.png", None),
    ]
    assert len(health.ratios["leaf"]) == 2 and min(health.ratios["leaf"]) < 0.1
