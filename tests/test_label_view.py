"""The Label tab's handlers: datasets, uploads, the editor's server functions, propose, import/export."""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from app.labeling.view import LabelView
from multimask.data import Report, load_multimask_json
from tests.test_app import _make_run

SQUARE = [10, 10, 60, 10, 60, 60, 10, 60]
INNER = [20, 20, 40, 20, 40, 40]


def _png(tmp_path, name="a.png", h=80, w=100):
    path = tmp_path / name
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


@pytest.fixture()
def view(tmp_path):
    runs = tmp_path / "runs"
    _make_run(runs / "tiny")
    v = LabelView(tmp_path / "data", runs, import_roots=[tmp_path / "incoming"])
    update, msg = v.create_dataset("leaves", "leaf, fruit", "primary, secondary")
    assert "Created" in msg and update["value"] == "leaves"
    return v


def _request(session="s1"):
    return SimpleNamespace(session_hash=session)


def _instances():
    return [{"id": "a1", "class": "leaf", "masks": {"primary": [SQUARE], "secondary": [INNER]}}]


def test_upload_then_save_and_load_through_the_server_functions(view, tmp_path):
    msg = view.upload("leaves", [_png(tmp_path), tmp_path / "missing.png"])
    assert msg.startswith("Added 1 image(s).") and "missing.png" in msg
    gallery, _, doc_json, ids, summary, _ = view.open_dataset("leaves", "all", 1)
    assert len(gallery) == 1 and len(ids) == 1 and "1 images (1 unlabelled" in summary
    thumb = cv2.imread(gallery[0][0])
    assert gallery[0][0].endswith(".jpg") and thumb.shape[:2] == (80, 100)  # small images are not enlarged
    doc = json.loads(doc_json)
    assert (doc["width"], doc["height"], doc["revision"]) == (100, 80, 0)
    assert doc["image_url"].startswith("/gradio_api/file=") and doc["image_url"].endswith(".png")
    saved = view.save_annotations("leaves", ids[0], 0, _instances(), None)
    assert saved["ok"] and saved["revision"] == 1 and saved["status"] == "in_progress"
    assert "0 unlabelled, 1 in progress, 0 done" in view.summary("leaves"), "the counts follow autosaves"
    assert view.summary("nope") == {"__type__": "update"} and view.summary(None) == {"__type__": "update"}
    again = view.load_image("leaves", ids[0], None)
    assert again["revision"] == 1 and again["instances"][0]["masks"]["secondary"] == [INNER]


def test_conflicting_save_is_refused_and_nothing_is_overwritten(view, tmp_path):
    view.upload("leaves", [_png(tmp_path)])
    image_id = view.store.open("leaves").images()[0]["id"]
    assert view.save_annotations("leaves", image_id, 0, _instances(), None)["ok"]
    stale = view.save_annotations("leaves", image_id, 0, [], None)  # a second tab still at revision 0
    assert stale == {"ok": False, "conflict": True, "error": stale["error"]} and "another" in stale["error"]
    assert view.load_image("leaves", image_id, None)["instances"][0]["id"] == "a1"


@pytest.mark.parametrize("instances, fragment", [
    ([{"id": "x", "class": "tree", "masks": {"primary": [SQUARE]}}], "tree"),
    ([{"id": "x", "class": "leaf", "masks": {"nucleus": [SQUARE]}}], "nucleus"),
    ([{"id": "x", "class": "leaf", "masks": {"primary": [[1, 2, float("nan"), 4, 5, 6]]}}], "finite"),
    ([{"id": "x", "class": "leaf", "masks": {"primary": [[1, 2, 500, 4, 5, 6]]}}], "outside"),
    ("not a list", "list"),
])
def test_bad_payloads_get_a_clear_error_and_change_nothing(view, tmp_path, instances, fragment):
    view.upload("leaves", [_png(tmp_path)])
    image_id = view.store.open("leaves").images()[0]["id"]
    reply = view.save_annotations("leaves", image_id, 0, instances, None)
    assert reply["ok"] is False and reply["conflict"] is False and fragment in reply["error"]
    assert view.load_image("leaves", image_id, None)["revision"] == 0
    assert view.save_annotations("leaves", image_id, "0", [], None)["error"] == "base_revision must be an integer"


def test_navigation_and_copy_previous(view, tmp_path):
    view.upload("leaves", [_png(tmp_path, "a.png"), _png(tmp_path, "b.png")])
    first, second = [e["id"] for e in view.store.open("leaves").images()]
    view.save_annotations("leaves", first, 0, _instances(), None)
    assert view.load_image("leaves", first, "next")["image_id"] == second
    assert view.load_image("leaves", second, "next") == {"ok": False, "error": "this is the last image"}
    assert view.load_image("leaves", first, "next_unlabelled")["image_id"] == second
    copied = view.copy_previous("leaves", second)["instances"]
    assert copied[0]["masks"]["primary"] == [SQUARE] and copied[0]["id"] != "a1"


def test_propose_uses_the_run_chosen_in_this_tab(view, tmp_path):
    view.upload("leaves", [_png(tmp_path, h=128, w=160)])
    image_id = view.store.open("leaves").images()[0]["id"]
    assert "choose a trained run" in view.propose("leaves", image_id, _request())["error"]
    assert "tiny" in view.choose_run("tiny", 0.0, _request())
    reply = view.propose("leaves", image_id, _request())
    assert reply["ok"], reply
    inst = reply["instances"]
    assert inst and all(i["class"] in ("leaf", "fruit") for i in inst)  # the run's classes are not the dataset's
    assert all(set(i["masks"]) == {"primary", "secondary"} for i in inst)
    assert view.save_annotations("leaves", image_id, 0, inst, None)["ok"]  # proposals are valid payloads
    view.store.open("leaves").image_path(image_id).write_bytes(b"damaged on disk")
    damaged = view.propose("leaves", image_id, _request())
    assert damaged == {"ok": False, "error": f"cannot read the image of {image_id}"}
    assert "choose a trained run" in view.propose("leaves", image_id, _request("other tab"))["error"]
    view.choose_run("../escape", 0.5, _request())
    assert view.propose("leaves", image_id, _request())["ok"] is False


def test_folder_import_only_from_allowed_roots(view, tmp_path):
    (tmp_path / "incoming").mkdir()
    _png(tmp_path / "incoming", "c.png")
    assert view.add_folder("leaves", str(tmp_path / "incoming")).startswith("Added 1 image(s)")
    assert "outside the folders this app may read" in view.add_folder("leaves", "/etc")
    assert "outside the folders" in view.add_folder("leaves", str(tmp_path / "incoming" / ".." / ".."))


def test_remove_needs_confirmation(view, tmp_path):
    view.upload("leaves", [_png(tmp_path)])
    image_id = view.store.open("leaves").images()[0]["id"]
    assert "confirm" in view.remove_image("leaves", image_id, False)[0]
    assert len(view.store.open("leaves").images()) == 1
    thumbs = view.store.open("leaves").folder / "thumbs"
    view.open_dataset("leaves", "all", 1)
    assert (thumbs / f"{image_id}.jpg").is_file()
    assert "Removed" in view.remove_image("leaves", image_id, True)[0]
    assert view.store.open("leaves").images() == [] and not (thumbs / f"{image_id}.jpg").exists()


def test_classes_and_dataset_errors(view):
    assert "Added class" in view.add_class("leaves", "stem")[0]
    assert "⚠️" in view.add_class("leaves", "stem")[0]
    assert "Renamed" in view.rename_class("leaves", "stem", "twig")[0]
    assert "twig" in view.store.open("leaves").classes
    assert "⚠️" in view.create_dataset("../evil", "a", "primary")[1]
    assert "⚠️" in view.create_dataset("leaves", "a", "primary")[1]  # exists
    assert "choose or create a dataset" in view.upload("", [object()])


def test_export_then_train_format_and_import_back(view, tmp_path):
    view.upload("leaves", [_png(tmp_path, "a.png"), _png(tmp_path, "b.png")])
    for e in view.store.open("leaves").images():
        view.save_annotations("leaves", e["id"], 0, _instances(), "done")
    msg = view.export("leaves", "v1", 0.5, 3, False, labelme=True)
    assert "train.json" in msg and "labelme train" in msg
    out = view.store.open("leaves").folder / "exports" / "v1"
    report = Report()
    dicts, meta = load_multimask_json(out / "train.json", report=report)
    assert not report and meta["mask_names"] == ["primary", "secondary"] and len(dicts) == 1
    assert len(list((out / "labelme_train").glob("*.json"))) == 1
    assert "must be a plain folder name" in view.export("leaves", "../x", 0.5, 0, False)
    view.create_dataset("copy", "leaf, fruit", "primary, secondary")
    assert "Imported" in view.import_data("copy", "multimask JSON", str(out / "train.json"), "", "")
    assert len(view.store.open("copy").images()) == 1
    assert "outside the folders" in view.import_data("copy", "multimask JSON", "/etc/passwd", "", "")


def test_gallery_shows_small_thumbnails_of_big_images(view, tmp_path):
    view.upload("leaves", [_png(tmp_path, "big.png", h=1200, w=1600)])
    gallery = view.open_dataset("leaves", "all", 1)[0]
    assert cv2.imread(gallery[0][0]).shape[:2] == (144, 192)
