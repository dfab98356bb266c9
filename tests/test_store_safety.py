"""The label store on a shared lab server: two processes on one data root, crashes, huge payloads, imports and
links that lead out of the allowed folders, and messages without server paths."""

from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.core.datasets import storage as store_module
from app.core.datasets.payload import MAX_SAVE_BYTES, MAX_TOTAL_POINTS, PayloadError, _checked_values, check_polygon
from app.core.datasets.storage import LOCK_FILE, LabelStore
from app.views.label import LabelView
from multimask.data.dataset_json import make_annotation, write_multimask_json
from multimask.data.geometry import MAX_WARNINGS
from tests.test_app import _make_run

REPO = Path(__file__).resolve().parents[1]
NAMES = ["primary", "secondary"]
TRIANGLE = [1.0, 1.0, 9.0, 1.0, 9.0, 9.0]
W = H = 40


def _png(value: int, h: int = H, w: int = W) -> bytes:
    img = np.random.default_rng(value).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _inst(iid: str = "a", cls: str = "leaf") -> dict:
    return {"id": iid, "class": cls, "masks": {"primary": [list(TRIANGLE)], "secondary": []}}


@pytest.fixture()
def ds(tmp_path):
    return LabelStore(tmp_path / "data").create("leaves", ["leaf", "fruit"])


@pytest.fixture()
def fresh_states(monkeypatch):
    """Forget what this process holds of every dataset, as a newly started process would."""
    monkeypatch.setattr(store_module, "_STATES", {})


def _run_workers(script: str, args: list[list[str]], go: Path) -> list:
    """Start one Python process per argument list running `script`, let them start together (the go file), and
    return what each printed (JSON)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *a], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for a in args
    ]
    ready = [go.with_suffix(f".ready{k}") for k in range(len(args))]
    for k in range(len(procs)):  # each writes its ready file once its dataset is open
        _wait_for(lambda k=k: ready[k].exists() or procs[k].poll() is not None, 300, f"worker {k} to start")
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out))
    return outs


def _wait_for(cond, seconds: float, what: str) -> None:
    done = threading.Event()
    for _ in range(int(seconds * 20)):
        if cond():
            return
        done.wait(0.05)
    raise AssertionError(f"waited {seconds} s for {what}")


WORKER_PRELUDE = """
import json, sys, threading, time
from pathlib import Path
from app.core.datasets.storage import ConflictError, LabelStore
root, name, go, index = sys.argv[1:5]
ds = LabelStore(root).open(name)
Path(go).with_suffix(".ready" + index).touch()
deadline = time.monotonic() + 300
while not Path(go).exists():  # both processes start together
    if time.monotonic() > deadline:
        sys.exit("no go file within 300 s")
    time.sleep(0.005)
"""

SAVE_WORKER = (
    WORKER_PRELUDE
    + """
rounds, tag = int(sys.argv[5]), sys.argv[6]
ids = [e["id"] for e in ds.images()]
results = []
def run(t):
    for r in range(rounds):
        for i in ids:
            iid = f"{tag}t{t}r{r}"
            inst = [{"id": iid, "class": "leaf", "masks": {"primary": [[1, 1, 9, 1, 9, 9]]}}]
            try:
                ds.save(i, r, inst, status="done" if r % 2 else "in_progress")
                results.append([i, r, iid])
            except ConflictError:
                results.append([i, r, None])
threads = [threading.Thread(target=run, args=(t,)) for t in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""
)

ADD_WORKER = (
    WORKER_PRELUDE
    + """
added, errors = ds.add_images_from_folder(sys.argv[5], sys.argv[5])
print(json.dumps([e["id"] for e in added] + errors))
"""
)


# ---------------------------------------------------------------- two processes on one data root


@pytest.mark.slow
def test_two_processes_saving_from_the_same_revisions_never_both_succeed(ds, tmp_path):
    ids = [ds.add_image_bytes(f"im{k}.png", _png(k))["id"] for k in range(3)]
    rounds, go = 6, tmp_path / "go"
    outs = _run_workers(
        SAVE_WORKER, [[str(ds.folder.parent), "leaves", str(go), str(k), str(rounds), f"p{k}"] for k in range(2)], go
    )
    results = [r for out in outs for r in out]
    assert len(results) == 2 * 3 * rounds * len(ids)  # every attempt ended in a save or a ConflictError
    fresh = LabelStore(ds.folder.parent).open("leaves")
    index = {e["id"]: e["status"] for e in json.loads((ds.folder / "index.json").read_text())["images"]}
    for image_id in ids:
        wins = sorted((base, iid) for i, base, iid in results if i == image_id and iid is not None)
        assert [base for base, _ in wins] == list(range(len(wins))), f"{image_id}: one save per base revision"
        stored = fresh.load(image_id)
        assert stored["revision"] == len(wins) and stored["instances"][0]["id"] == wins[-1][1]  # none lost
        assert index[image_id] == stored["status"] == ("done" if (len(wins) - 1) % 2 else "in_progress")


@pytest.mark.slow
def test_two_processes_adding_images_keep_each_others_entries(ds, tmp_path):
    for k in range(2):
        folder = tmp_path / f"in{k}"
        folder.mkdir()
        for j in range(12):
            (folder / f"p{k}_{j}.png").write_bytes(_png(100 * k + j))
    go = tmp_path / "go"
    outs = _run_workers(
        ADD_WORKER, [[str(ds.folder.parent), "leaves", str(go), str(k), str(tmp_path / f"in{k}")] for k in range(2)], go
    )
    assert [len(out) for out in outs] == [12, 12]
    entries = json.loads((ds.folder / "index.json").read_text())["images"]
    assert sorted(e["id"] for e in entries) == sorted(outs[0] + outs[1])
    assert sorted(p.name for p in ds.images_dir.iterdir()) == sorted(e["file_name"] for e in entries)


# ---------------------------------------------------------------- crash leftovers


def _crash_leftovers(ds) -> tuple[str, list[Path]]:
    """An image whose annotations file says "done" while index.json says "in_progress" (a kill between the two
    writes), and temporary files of interrupted writes."""
    image_id = ds.add_image_bytes("a.png", _png(1))["id"]
    ds.save(image_id, 0, [_inst()])
    doc = json.loads((ds.annotations_dir / f"{image_id}.json").read_text())
    (ds.annotations_dir / f"{image_id}.json").write_text(json.dumps({**doc, "revision": 2, "status": "done"}))
    temps = [
        ds.folder / ".index.json.x1.tmp",
        ds.annotations_dir / f".{image_id}.json.x2.tmp",
        ds.images_dir / ".b.png.x3.tmp",
    ]
    for t in temps:
        t.write_bytes(b"half")
    return image_id, temps


def test_opening_after_a_crash_takes_the_status_from_the_annotations_and_removes_temp_files(ds, fresh_states):
    image_id, temps = _crash_leftovers(ds)
    assert json.loads((ds.folder / "index.json").read_text())["images"][0]["status"] == "in_progress"
    again = LabelStore(ds.folder.parent).open("leaves")  # a new process opening the dataset
    assert again.images()[0]["status"] == "done" and again.load(image_id)["status"] == "done"
    assert json.loads((ds.folder / "index.json").read_text())["images"][0]["status"] == "done"
    assert not [t for t in temps if t.exists()]
    assert again.save(image_id, 2, [_inst("b")])["revision"] == 3


def test_opening_waits_for_a_live_writer_before_removing_temp_files(ds, fresh_states):
    _, temps = _crash_leftovers(ds)
    fd = os.open(ds.folder / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process in the middle of a write: its temp files are live
    opened = []
    opener = threading.Thread(target=lambda: opened.append(LabelStore(ds.folder.parent).open("leaves")))
    try:
        opener.start()
        opener.join(timeout=1.0)
        assert opener.is_alive() and not opened, "opening must wait for the file lock"
        assert all(t.exists() for t in temps)
    finally:
        os.close(fd)  # releases the lock
    opener.join(timeout=120)
    assert opened, "waited 120 s for the dataset to open after the lock was released"
    assert not [t for t in temps if t.exists()]


@pytest.mark.slow
def test_a_status_written_by_another_process_is_followed(ds):
    image_id = ds.add_image_bytes("a.png", _png(1))["id"]
    other = ds.add_image_bytes("b.png", _png(2))["id"]
    script = (
        "import sys; from app.core.datasets.storage import LabelStore; "
        "LabelStore(sys.argv[1]).open('leaves').save(sys.argv[2], 0, [], status='done')"
    )
    subprocess.run([sys.executable, "-c", script, str(ds.folder.parent), other], cwd=REPO, check=True)
    ds.save(image_id, 0, [_inst()])  # writes index.json: must not bring back the other image's old status
    index = {e["id"]: e["status"] for e in json.loads((ds.folder / "index.json").read_text())["images"]}
    assert index == {image_id: "in_progress", other: "done"}


# ---------------------------------------------------------------- big payloads


def test_the_payload_is_checked_outside_the_dataset_lock(ds, monkeypatch):
    slow_image = ds.add_image_bytes("a.png", _png(1))["id"]
    other = ds.add_image_bytes("b.png", _png(2))["id"]
    other_saved, waited = threading.Event(), []
    real = store_module.validate_instances

    def validate(instances, **kw):
        if instances and instances[0]["id"] == "slow":  # a huge payload being checked...
            threading.Thread(target=lambda: (ds.save(other, 0, [_inst()]), other_saved.set())).start()
            waited.append(other_saved.wait(timeout=120))  # ...while another image is saved
        return real(instances, **kw)

    monkeypatch.setattr(store_module, "validate_instances", validate)
    assert ds.save(slow_image, 0, [_inst("slow")])["revision"] == 1
    assert waited == [True], "the other image's save waited for the payload check"
    assert ds.load(other)["revision"] == 1


def test_a_class_renamed_while_the_payload_was_checked_is_refused(ds, monkeypatch):
    image_id = ds.add_image_bytes("a.png", _png(1))["id"]
    real = store_module.validate_instances
    renamed = []

    def validate(instances, **kw):
        out = real(instances, **kw)
        if not renamed:
            renamed.append(ds.rename_class("fruit", "berry"))
        return out

    monkeypatch.setattr(store_module, "validate_instances", validate)
    with pytest.raises(PayloadError, match="unknown class 'fruit'"):
        ds.save(image_id, 0, [_inst(cls="fruit")])
    assert ds.load(image_id)["revision"] == 0


def test_warnings_of_large_crossing_parts_are_bounded(ds):
    """Repairing a 1000-point random polygon takes minutes: the save lists 20 problems without repairing any."""
    image_id = ds.add_image_bytes("a.png", _png(1))["id"]
    rng = np.random.default_rng(0)
    instances = [
        {
            "id": f"x{k}",
            "class": "leaf",
            "masks": {"primary": [rng.uniform(0, W, 2000).round(2).tolist()], "secondary": [list(TRIANGLE)]},
        }
        for k in range(30)
    ]
    warnings = ds.save(image_id, 0, instances)["warnings"]
    assert len(warnings) == MAX_WARNINGS + 1
    assert all("part 1 crosses itself: exports repair it" in w for w in warnings[:-1])
    assert warnings[-1] == f"only the first {MAX_WARNINGS} problems are listed: there may be more"


def test_fast_coordinate_checks_round_and_refuse_as_the_exact_ones():
    rng = random.Random(0)
    part = [rng.uniform(-0.5, 800.5) for _ in range(4000)]
    part += [round(rng.uniform(0, 800), 3) for _ in range(4000)]  # many ties at the third decimal (2.675)
    part += [rng.randint(0, 800) for _ in range(2000)]
    fast, exact = check_polygon(part, 800, 800, "w"), _checked_values(part, 800, 800, "w")
    assert fast == exact and all(type(v) is float for v in fast)
    for bad, match in (
        (800.6, r"point 2 is outside the image \(x = 800.6"),
        (float("nan"), "coordinate 2 is not finite"),
        (10**400, "not finite"),
        (True, "coordinate 2 is not a number"),
    ):
        with pytest.raises(PayloadError, match=match):
            check_polygon([1.0, 2.0, bad, 4.0, 5.0, 6.0], 800, 800, "w")


def test_a_maximal_legal_payload_fits_the_request_size_limit():
    """As the editor sends it: coordinates with two decimals, no spaces; the longest ids and class names."""
    width = height = 99_999  # 5-digit coordinates
    cls = "c" * 100
    per = MAX_TOTAL_POINTS // 1000
    rng = np.random.default_rng(0)
    instances = [
        {
            "id": f"{k:040d}",
            "class": cls,
            "masks": {"primary": [np.round(rng.uniform(10_000, 99_999, 2 * per), 2).tolist()], "secondary": []},
        }
        for k in range(1000)
    ]
    body = json.dumps({"data": ["leaves", "0123456789ab", 123, instances, "in_progress"]}, separators=(",", ":"))
    assert len(body) < MAX_SAVE_BYTES
    kw = {"classes": [cls], "mask_names": NAMES, "width": width, "height": height}
    assert len(store_module.validate_instances(instances, **kw)) == 1000
    instances[-1]["masks"]["secondary"] = [[1.0, 1.0, 2.0, 1.0, 2.0, 2.0]]
    with pytest.raises(PayloadError, match=f"too many points in this image \\(more than {MAX_TOTAL_POINTS}\\)"):
        store_module.validate_instances(instances, **kw)


# ---------------------------------------------------------------- imports confined to the allowed folders


@pytest.fixture()
def view(tmp_path):
    _make_run(tmp_path / "runs" / "tiny")
    v = LabelView(tmp_path / "data", tmp_path / "runs", import_roots=[tmp_path / "incoming"])
    v.create_dataset("leaves", "leaf", "primary, secondary")
    (tmp_path / "incoming").mkdir()
    (tmp_path / "outside").mkdir()
    for k, name in enumerate(["secret.png", "secret2.png", "linked.png"]):
        (tmp_path / "outside" / name).write_bytes(_png(50 + k))
    (tmp_path / "incoming" / "ok.png").write_bytes(_png(1))
    (tmp_path / "incoming" / "link.png").symlink_to(tmp_path / "outside" / "linked.png")
    return v


OUTSIDE = ["secret.png", "secret2.png", "link.png"]


def _assert_only_ok_imported(view, tmp_path, msg: str) -> None:
    ds = view.store.open("leaves")
    assert [e["file_name"] for e in ds.images()] == ["ok.png"], msg
    assert all(f"{n}: outside the folders this app may read" in msg for n in OUTSIDE), msg
    assert str(tmp_path / "outside") not in msg  # the outside files are named by file name only


def test_multimask_import_skips_images_outside_the_allowed_folders(view, tmp_path):
    names = ["ok.png", str(tmp_path / "outside" / "secret.png"), "../outside/secret2.png", "link.png"]
    images = [{"id": k, "file_name": n, "height": H, "width": W} for k, n in enumerate(names)]
    anns = [make_annotation(k + 1, k, 1, {"primary": [TRIANGLE], "secondary": []}, H, W, NAMES) for k in range(4)]
    write_multimask_json(tmp_path / "incoming" / "d.json", images, [{"id": 1, "name": "leaf"}], anns, NAMES)
    msg = view.import_data("leaves", "multimask JSON", str(tmp_path / "incoming" / "d.json"), "", "")
    _assert_only_ok_imported(view, tmp_path, msg)
    # the command line trusts its user: no allowed roots, the same file imports every image
    other = LabelStore(tmp_path / "cli").create("cli", ["leaf"])
    other.import_multimask(tmp_path / "incoming" / "d.json")
    assert len(other.images()) == 4


def test_multimask_json_inside_the_data_root_cannot_reach_outside(view, tmp_path):
    data = tmp_path / "data"
    images = [{"id": 1, "file_name": "../../outside/secret.png", "height": H, "width": W}]
    anns = [make_annotation(1, 1, 1, {"primary": [TRIANGLE], "secondary": []}, H, W, NAMES)]
    write_multimask_json(data / "leaves" / "x.json", images, [{"id": 1, "name": "leaf"}], anns, NAMES)
    msg = view.import_data("leaves", "multimask JSON", str(data / "leaves" / "x.json"), "", "")
    assert "secret.png: outside the folders this app may read" in msg
    assert view.store.open("leaves").images() == []


def test_coco_import_skips_images_outside_the_allowed_folders(view, tmp_path):
    names = ["ok.png", str(tmp_path / "outside" / "secret.png"), "../outside/secret2.png", "link.png"]
    coco = {
        "images": [{"id": k, "file_name": n, "height": H, "width": W} for k, n in enumerate(names)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": k,
                "category_id": 1,
                "segmentation": [TRIANGLE],
                "iscrowd": 0,
                "bbox": [1, 1, 8, 8],
                "area": 32,
            }
            for k in range(4)
        ],
        "categories": [{"id": 1, "name": "leaf"}],
    }
    (tmp_path / "incoming" / "coco.json").write_text(json.dumps(coco))
    msg = view.import_data("leaves", "COCO", str(tmp_path / "incoming" / "coco.json"), "", "")
    _assert_only_ok_imported(view, tmp_path, msg)


def test_labelme_import_skips_images_outside_the_allowed_folders(view, tmp_path):
    lm = tmp_path / "incoming" / "lm"
    lm.mkdir()
    names = ["../ok.png", str(tmp_path / "outside" / "secret.png"), "../../outside/secret2.png", "../link.png"]
    for k, name in enumerate(names):
        shape = {"label": "leaf/primary", "points": [[1, 1], [9, 1], [9, 9]], "group_id": None, "shape_type": "polygon"}
        (lm / f"f{k}.json").write_text(
            json.dumps({"shapes": [shape], "imagePath": name, "imageHeight": H, "imageWidth": W})
        )
    msg = view.import_data("leaves", "labelme folder", str(lm), "", "")
    _assert_only_ok_imported(view, tmp_path, msg)


# ---------------------------------------------------------------- links leading out of the data root


def test_a_dataset_folder_linked_from_outside_is_refused(tmp_path):
    outside = LabelStore(tmp_path / "elsewhere").create("theirs", ["leaf"])
    store = LabelStore(tmp_path / "data")
    store.create("mine", ["leaf"])
    (tmp_path / "data" / "theirs").symlink_to(outside.folder)
    (tmp_path / "data" / "alias").symlink_to(tmp_path / "data" / "mine")  # a link inside the data root is fine
    assert store.list_datasets() == ["alias", "mine"]
    with pytest.raises(ValueError, match="dataset 'theirs' is a link leading out of the data root: refused"):
        store.open("theirs")
    assert store.open("alias").folder == store.open("mine").folder


@pytest.mark.parametrize("sub", ["annotations", "images", "thumbs"])
def test_a_linked_subfolder_refuses_the_dataset(ds, tmp_path, sub, fresh_states):
    (tmp_path / "outside").mkdir()
    target = ds.folder / sub
    if target.exists():
        target.rmdir()
    target.symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match=f"leaves/{sub} is a link leading elsewhere: dataset refused"):
        LabelStore(ds.folder.parent).open("leaves")


def test_export_into_a_link_leading_out_is_refused(view, tmp_path):
    ds = view.store.open("leaves")
    ds.add_image_bytes("a.png", _png(1))
    ds.save(ds.images()[0]["id"], 0, [_inst()], status="done")
    (ds.folder / "exports").mkdir()
    (ds.folder / "exports" / "out").symlink_to(tmp_path / "outside")
    msg = view.export("leaves", "out", 0.0, 0, False)
    assert msg.startswith("⚠️") and "leaves/exports/out is a link leading elsewhere" in msg
    assert "export" in view.export("leaves", "fine", 0.0, 0, False)
    (ds.folder / "exports").rename(ds.folder / "old_exports")
    (ds.folder / "exports").symlink_to(tmp_path / "outside")
    assert "leaves/exports/fine is a link leading elsewhere" in view.export("leaves", "fine", 0.0, 0, False)
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["linked.png", "secret.png", "secret2.png"]


# ---------------------------------------------------------------- messages without server paths


def test_messages_name_files_relative_to_the_data_root(ds, tmp_path, fresh_states):
    store = LabelStore(tmp_path / "data")
    for call in (lambda: store.open("nope"), lambda: store.create("leaves", ["x"])):
        with pytest.raises(ValueError) as e:
            call()
        assert str(tmp_path) not in str(e.value)
    (ds.folder / "index.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"^leaves/index.json: not valid JSON") as e:
        store.open("leaves")
    view = LabelView(tmp_path / "data", tmp_path / "runs")
    assert (
        view.open_dataset("leaves", "all", 1)[3] == "⚠️ leaves/index.json: not valid JSON (line 1, column 2: "
        "Expecting property name enclosed in double quotes)"
    )
