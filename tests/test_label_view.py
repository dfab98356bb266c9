"""The Label tab's handlers: datasets, uploads, the editor's server functions, propose, import/export."""

import asyncio
import json
from types import SimpleNamespace

import cv2
import gradio as gr
import numpy as np
import pytest

from app.views.label import RATIO_LABELS, LabelView
from multimask.data import Report, load_multimask_json
from tests.test_app import CLASSES, _make_run

SQUARE = [10, 10, 60, 10, 60, 60, 10, 60]
INNER = [20, 20, 40, 20, 40, 40]


def _png(tmp_path, name="a.png", h=80, w=100):
    path = tmp_path / name
    seed = sum(map(ord, name))  # another name, other pixels: the store refuses an image it holds already
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
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


def _thumbs(gallery_json):
    """(file name, status, thumbnail path) per gallery card."""
    return [
        (i["name"], i["status"], i["thumb"].removeprefix("/gradio_api/file="))
        for i in json.loads(gallery_json)["items"]
    ]


def test_upload_then_save_and_load_through_the_server_functions(view, tmp_path):
    msg, opened = view.upload("leaves", [_png(tmp_path), tmp_path / "missing.png"])
    assert msg.startswith("Added 1 image(s).") and "missing.png: No such file" in msg
    assert json.loads(opened)["file_name"] == "a.png", "the first uploaded image opens in the editor"
    gallery, _, doc_json, summary, _ = view.open_dataset("leaves", "all", 1)
    (card,) = _thumbs(gallery)
    ids = [e["id"] for e in view.store.open("leaves").images()]
    assert card[:2] == ("a.png", "unlabelled") and "1 images (1 unlabelled" in summary
    thumb = cv2.imread(card[2])
    assert card[2].endswith(".jpg") and thumb.shape[:2] == (80, 100)  # small images are not enlarged
    doc = json.loads(doc_json)
    assert (doc["width"], doc["height"], doc["revision"]) == (100, 80, 0)
    assert doc["image_url"].startswith("/gradio_api/file=") and doc["image_url"].endswith(".png")
    saved = view.save_annotations("leaves", ids[0], 0, _instances(), None)
    assert saved["ok"] and saved["revision"] == 1 and saved["status"] == "in_progress"
    gallery2, summary, _ = view.refresh_gallery("leaves", "all", 1, gallery)
    assert "0 unlabelled, 1 in progress, 0 done" in summary, "the counts follow autosaves"
    assert _thumbs(gallery2)[0][1] == "in_progress", "so do the gallery's badges"
    assert view.refresh_gallery("leaves", "all", 1, gallery2)[0] == gr.skip(), "an unchanged gallery is not resent"
    assert view.refresh_gallery("nope", "all", 1, "") == (gr.skip(),) * 3
    again = view.load_image("leaves", ids[0], None)
    assert again["revision"] == 1 and again["instances"][0]["masks"]["secondary"] == [INNER]


def test_conflicting_save_is_refused_and_nothing_is_overwritten(view, tmp_path):
    view.upload("leaves", [_png(tmp_path)])
    image_id = view.store.open("leaves").images()[0]["id"]
    assert view.save_annotations("leaves", image_id, 0, _instances(), None)["ok"]
    stale = view.save_annotations("leaves", image_id, 0, [], None)  # a second tab still at revision 0
    assert stale == {"ok": False, "conflict": True, "error": stale["error"]} and "another" in stale["error"]
    assert view.load_image("leaves", image_id, None)["instances"][0]["id"] == "a1"


@pytest.mark.parametrize(
    "instances, fragment",
    [
        ([{"id": "x", "class": "tree", "masks": {"primary": [SQUARE]}}], "tree"),
        ([{"id": "x", "class": "leaf", "masks": {"nucleus": [SQUARE]}}], "nucleus"),
        ([{"id": "x", "class": "leaf", "masks": {"primary": [[1, 2, float("nan"), 4, 5, 6]]}}], "finite"),
        ([{"id": "x", "class": "leaf", "masks": {"primary": [[1, 2, 500, 4, 5, 6]]}}], "outside"),
        ("not a list", "list"),
    ],
)
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
    assert inst and all(set(i["masks"]) == {"primary", "secondary"} for i in inst)
    # The run's classes are not the dataset's: they are kept by name (the editor gives them the toolbar's
    # class), and the notes say so, class by class.
    unmapped = sorted({i["class"] for i in inst})
    assert set(unmapped) <= set(CLASSES) and not set(unmapped) & {"leaf", "fruit"}
    assert [n for n in reply["notes"] if "is not a class of this dataset" in n] == [
        f"the model's class {c!r} is not a class of this dataset: its {sum(i['class'] == c for i in inst)} "
        "instance(s) take the toolbar's class"
        for c in unmapped
    ]
    for i in inst:
        i["class"] = "leaf"  # as the editor does
    assert view.save_annotations("leaves", image_id, 0, inst, None)["ok"]  # proposals are valid payloads
    # Pressing Propose again adds nothing: what the image has is left out, and the notes say how much.
    again = view.propose("leaves", image_id, _request())
    assert again["ok"] and again["instances"] == [] and f"{len(inst)} already on the image left out" in again["notes"]
    # A class of the same name (any case) is the dataset's.
    view.add_class("leaves", unmapped[0].upper())
    view.save_annotations("leaves", image_id, 1, [], None)
    mapped = view.propose("leaves", image_id, _request())["instances"]
    assert {i["class"] for i in mapped} & {unmapped[0].upper()}
    # A threshold above every detection: the reply says what the best one scored.
    view.choose_run("tiny", 1.0, _request())
    high = view.propose("leaves", image_id, _request())
    assert high["ok"] and high["instances"] == [] and "its best detection scored 0." in high["notes"][0]
    assert "under the threshold of 1.00" in high["notes"][0]
    view.store.open("leaves").image_path(image_id).write_bytes(b"damaged on disk")
    damaged = view.propose("leaves", image_id, _request())
    assert damaged == {"ok": False, "error": f"cannot read the image of {image_id}"}
    assert "choose a trained run" in view.propose("leaves", image_id, _request("other tab"))["error"]
    view.choose_run("../escape", 0.5, _request())
    assert view.propose("leaves", image_id, _request())["ok"] is False


def test_folder_import_only_from_allowed_roots(view, tmp_path):
    (tmp_path / "incoming").mkdir()
    _png(tmp_path / "incoming", "c.png")
    message, opened = view.add_folder("leaves", str(tmp_path / "incoming"))
    assert message.startswith("Added 1 image(s)") and json.loads(opened)["file_name"] == "c.png"
    assert "outside the folders this app may read" in view.add_folder("leaves", "/etc")[0]
    assert "outside the folders" in view.add_folder("leaves", str(tmp_path / "incoming" / ".." / ".."))[0]


def test_remove_acts_on_the_image_in_the_editor_after_confirmation(view, tmp_path):
    view.upload("leaves", [_png(tmp_path, f"{n}.png") for n in "abc"])
    a, b, c = [e["id"] for e in view.store.open("leaves").images()]
    # The editor moved from a to b with Next: its value (the document) names b, and Remove takes that.
    shown = json.dumps(view.load_image("leaves", a, "next"))
    assert view.current_image(shown) == "Open in the editor: **b.png**"
    message, _, _ = view.remove_image("leaves", shown, False)
    assert "Tick **confirm** to remove b.png" in message and len(view.store.open("leaves").images()) == 3
    thumbs = view.store.open("leaves").folder / "thumbs"
    assert (thumbs / f"{b}.jpg").is_file()
    message, confirm, next_doc = view.remove_image("leaves", shown, True)
    assert message == "Removed b.png and its annotations." and confirm["value"] is False
    assert [e["file_name"] for e in view.store.open("leaves").images()] == ["a.png", "c.png"]
    assert not (thumbs / f"{b}.jpg").exists()
    assert json.loads(next_doc)["image_id"] == c, "the editor moves on to the next image"
    last = view.remove_image("leaves", next_doc, True)[2]
    assert json.loads(last)["image_id"] == a, "after the last image, the one before it"
    assert "Open the image" in view.remove_image("leaves", "", True)[0]
    assert "not in the dataset" in view.remove_image("leaves", shown, True)[0]


def test_classes_and_dataset_errors(view):
    assert "Added class" in view.add_class("leaves", "stem")[0]
    assert "⚠️" in view.add_class("leaves", "stem")[0]
    assert "Renamed" in view.rename_class("leaves", "stem", "twig")[0]
    assert "twig" in view.store.open("leaves").classes
    assert "⚠️" in view.create_dataset("../evil", "a", "primary")[1]
    assert "⚠️" in view.create_dataset("leaves", "a", "primary")[1]  # exists
    assert "choose or create a dataset" in view.upload("", [object()])[0]


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
    assert cv2.imread(_thumbs(gallery)[0][2]).shape[:2] == (144, 192)


def test_upload_errors_name_the_file_once(view, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not an image")
    message, opened = view.upload("leaves", [notes])
    assert message.startswith("⚠️ Added 0 image(s).") and opened == gr.skip()
    assert message.count("notes.png") == 1, message


def test_runs_trained_after_the_page_opened_reach_propose(view, tmp_path):
    assert view.refresh_runs(None)["choices"] == ["tiny"]
    _make_run(tmp_path / "runs" / "later")
    update = view.refresh_runs("tiny")
    assert sorted(update["choices"]) == ["later", "tiny"] and "value" not in update, "the page keeps its run"
    assert view.refresh_runs("gone")["value"] is None


def test_a_typed_threshold_is_used_and_bad_ones_are_clamped(view):
    assert "score >= 0.35" in view.choose_run("tiny", "0.35", _request())
    assert view._session_runs["s1"] == ("tiny", 0.35)
    assert "score >= 1.00" in view.choose_run("tiny", 7, _request())
    assert "score >= 0.50" in view.choose_run("tiny", "abc", _request())


def test_the_demo_dataset_is_labelled_and_ready_to_train(view):
    update, message = view.create_demo()
    assert update["value"] == "demo" and "Created **demo**" in message
    ds = view.store.open("demo")
    statuses = [e["status"] for e in ds.images()]
    assert statuses.count("done") == 24 and statuses.count("unlabelled") == 6
    assert ds.classes == ["disc", "box", "triangle"] and ds.mask_names == ["primary", "secondary"]
    assert view.create_demo()[0]["value"] == "demo2", "a second demo does not touch the first"
    assert len(view.store.open("demo").images()) == 30


def test_the_browser_state_key_is_kept_outside_the_served_data_root(tmp_path):
    from app.views.label import browser_secret

    first = browser_secret(tmp_path / "runs")
    assert len(first) == 64 and browser_secret(tmp_path / "runs") == first, "the same key after a restart"
    assert (tmp_path / "runs" / ".browser-state-secret").stat().st_mode & 0o077 == 0


def test_an_empty_dataset_is_remembered_for_the_next_visit(view):
    assert view.remember("leaves", "") == {"dataset": "leaves", "image_id": None}
    doc = json.dumps({"dataset": "leaves", "image_id": "abc"})
    assert view.remember("leaves", doc) == {"dataset": "leaves", "image_id": "abc"}
    assert view.restore(view.remember("leaves", ""))["value"] == "leaves"


def test_the_timer_leaves_the_page_field_alone_while_nothing_changed(view, tmp_path):
    view.upload("leaves", [_png(tmp_path)])
    gallery, _, _, _, _ = view.open_dataset("leaves", "all", 1)
    assert view.refresh_gallery("leaves", "all", 1, gallery)[2] == gr.skip()
    assert view.refresh_gallery("leaves", "all", 1, "")[2]["value"] == 1


def test_a_demo_name_taken_meanwhile_gets_the_next_one(view, monkeypatch):
    real = view.store.create

    def racing(name, classes, *args):
        if name == "demo":  # another click created it between the check and the create
            real(name, classes, *args)
        return real(name, classes, *args)

    monkeypatch.setattr(view.store, "create", racing)
    update, message = view.create_demo()
    assert update["value"] == "demo2" and "Created **demo2**" in message
    monkeypatch.setattr(view.store, "create", lambda *a: (_ for _ in ()).throw(ValueError("disk says no")))
    update, message = view.create_demo()
    assert message.startswith("⚠️ The demo dataset could not be made: disk says no")


def test_an_image_added_twice_is_skipped_with_a_count(view, tmp_path):
    first = _png(tmp_path, "a.png")
    view.upload("leaves", [first])
    renamed = tmp_path / "copy of a.png"
    renamed.write_bytes(first.read_bytes())
    message, opened = view.upload("leaves", [first, renamed, _png(tmp_path, "b.png")])
    assert (
        message.startswith(
            "Added 1 image(s). Skipped 2 already in the dataset (the same image, under any name): a.png, copy of a.png."
        )
        and json.loads(opened)["file_name"] == "b.png"
    )
    assert [e["file_name"] for e in view.store.open("leaves").images()] == ["a.png", "b.png"]
    assert view.upload("leaves", [first])[0].startswith("⚠️ Added 0 image(s). Skipped 1")


@pytest.mark.parametrize("image_id", ["abc123", "../x", 7, None])
def test_an_unknown_image_id_is_named_not_a_stop_iteration(view, tmp_path, image_id):
    from app.views.editor import _spread_arguments

    view.upload("leaves", [_png(tmp_path)])
    reply = asyncio.run(_spread_arguments(view.load_image)(["leaves", image_id, None]))
    assert reply["ok"] is False and "StopIteration" not in reply["error"] and "image" in reply["error"], reply


def test_the_health_panel_lists_findings_that_open_their_image(view, tmp_path):
    view.upload("leaves", [_png(tmp_path, "a.png"), _png(tmp_path, "b.png")])
    ds = view.store.open("leaves")
    first, second = (e["id"] for e in ds.images())
    part_outside = {"primary": [[10, 10, 40, 10, 40, 40, 10, 40]], "secondary": [[60, 50, 80, 50, 80, 70, 60, 70]]}
    ds.save(first, 0, [{"id": "a", "class": "leaf", "masks": part_outside}])
    ds.save(second, 0, [{"id": "b", "class": "fruit", "masks": {**part_outside, "secondary": []}}])
    summary, findings, ratios = view.check_health("leaves")
    assert summary.startswith("Checked 2 labelled image(s).")
    assert "**secondary outside primary**: 1 in 1 image(s)" in summary and "**no secondary**: 1 in 1" in summary
    assert "| leaf | 1 | 50% | 1 | 1 |" in summary and "| fruit | 1 | 50% | 1 | 0 |" in summary  # class balance
    labels = [label for label, _ in findings["choices"]]
    assert labels == ["secondary outside primary · a.png · instance #1", "no secondary · b.png · instance #1"]
    assert set(ratios["ratio"]) <= set(RATIO_LABELS) and ratios["instances"].sum() == 1  # one instance has both
    opened = json.loads(view.open_finding("leaves", findings["choices"][1][1]))
    assert opened["image_id"] == second and opened["dataset"] == "leaves"
    assert view.open_finding("leaves", None) == gr.skip()
    assert view.check_health("gone")[0].startswith("⚠️ no labelling dataset named 'gone'")
