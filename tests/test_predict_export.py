"""The Predict tab's downloads: the predictions JSON as `multimask predict` writes it, in the upload's pixels,
and the overlay PNG, in a folder of the session's own."""

import json
import tempfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pycocotools.mask as mask_util
import pytest

from app.core.models.predictors import PREDICT_MAX_SIDE
from app.views.predict import PredictView
from app.views.predict_export import FOLDER_PREFIX, file_stem, remove_folder, session_folder
from tests.test_app import _make_run


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "runs"
    _make_run(root / "exp1")
    return root


@pytest.fixture(scope="module")
def view(runs_root):
    return PredictView(runs_root)


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    """An image file as the browser uploads it."""
    rng = np.random.RandomState(0)
    img = np.full((120, 160, 3), 40, np.uint8)
    img[30:90, 40:120] = rng.randint(100, 255, (60, 80, 3))
    path = tmp_path_factory.mktemp("upload") / "my photo.png"
    cv2.imwrite(str(path), img[:, :, ::-1])
    return path


def _download(view, state, folder=None):
    json_button, png_button, folder = view.downloads(state, folder)
    return Path(json_button["value"]), Path(png_button["value"]), folder


def test_the_json_download_is_what_multimask_predict_writes(view, runs_root, upload, tmp_path):
    from multimask.cli import main

    *_, state = view.predict("exp1", str(upload), 0.0, None, None)
    doc, png, folder = _download(view, state)
    ours = json.loads(doc.read_text())
    main(
        [
            "predict",
            "--run",
            str(runs_root / "exp1"),
            str(upload),
            "--output",
            str(tmp_path / "out"),
            "--score-threshold",
            "0.05",
            "--device",
            "cpu",
        ]
    )  # the app keeps detections from 0.05 too
    cli = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert ours.keys() == cli.keys() and ours["mask_names"] == cli["mask_names"]
    assert ours["classes"] == cli["classes"] and ours["skipped"] == []
    (image,), (cli_image,) = ours["images"], cli["images"]
    assert image.keys() == cli_image.keys()
    assert (image["file_name"], image["height"], image["width"]) == ("my photo.png", 120, 160)
    assert image["overlay"] == png.name == "my_photo_overlay.png" and doc.name == "my_photo_predictions.json"

    def key(r):
        return round(r["score"], 5), r["class_name"], tuple(round(v, 2) for v in r["bbox"]), json.dumps(r["multimask"])

    assert len(image["instances"]) == len(state) > 10
    assert sorted(map(key, image["instances"])) == sorted(map(key, cli_image["instances"]))
    assert image["instances"][0].keys() == cli_image["instances"][0].keys()
    overlay = cv2.imread(str(png))[:, :, ::-1]
    assert np.array_equal(overlay, state.overlay)
    remove_folder(folder)


@pytest.mark.slow
def test_the_json_of_a_shrunk_upload_is_in_the_uploads_pixels(view, upload, tmp_path):
    big = cv2.resize(
        cv2.imread(str(upload)), (PREDICT_MAX_SIDE * 2, PREDICT_MAX_SIDE * 3 // 2), interpolation=cv2.INTER_NEAREST
    )
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), big)
    _, table, _, state = view.predict("exp1", str(path), 0.3, None, None)
    assert state.scale == 2.0 and len(table) > 0
    doc, _, folder = _download(view, state)
    (image,) = json.loads(doc.read_text())["images"]
    assert (image["height"], image["width"]) == big.shape[:2]
    assert len(image["instances"]) == len(table)
    for (_, row), inst in zip(table.iterrows(), image["instances"]):
        x, y, w, h = inst["bbox"]
        assert np.allclose([x, y, x + w, y + h], row[["x0", "y0", "x1", "y1"]].astype(float), atol=1)
        for name in state.mask_names:
            mask = mask_util.decode(
                {"size": inst["multimask"][name]["size"], "counts": inst["multimask"][name]["counts"].encode()}
            )
            assert mask.shape == big.shape[:2]
            assert abs(int(mask.sum()) - row[f"{name} area"]) <= 0.05 * row[f"{name} area"] + 8, name
    remove_folder(folder)


def test_downloads_follow_the_overlay_and_need_a_prediction(view, upload):
    off = view.downloads(None, None)
    assert off[0]["value"] is None and off[0]["interactive"] is False and off[2] is None
    *_, state = view.predict("exp1", str(upload), 0.3, None, None)
    doc, png, folder = _download(view, state)
    assert Path(folder).parent == Path(tempfile.gettempdir()) and Path(folder).name.startswith(FOLDER_PREFIX)
    assert doc.parent == png.parent == Path(folder)
    assert view.downloads(state, folder) == (gr.skip(), gr.skip(), folder), "nothing changed: not written again"
    shown = len(json.loads(doc.read_text())["images"][0]["instances"])
    view.redraw(state, 0.35, None)
    doc2, _, folder2 = _download(view, state, folder)
    assert folder2 == folder and len(json.loads(doc2.read_text())["images"][0]["instances"]) < shown
    remove_folder(folder)
    assert not Path(folder).exists()


def test_a_folder_that_is_not_a_session_folder_is_never_reused_or_removed(tmp_path):
    """The folder comes back from the session state; still, only folders this module made are used."""
    elsewhere = tmp_path / f"{FOLDER_PREFIX}elsewhere"
    elsewhere.mkdir()
    other = Path(tempfile.mkdtemp(prefix="not-multimask-"))
    try:
        for folder in (elsewhere, other, Path("/etc"), Path("../x")):
            made = session_folder(str(folder))
            assert made != folder and made.parent == Path(tempfile.gettempdir()) and made.is_dir()
            assert made.name.startswith(FOLDER_PREFIX)
            remove_folder(str(made))
            remove_folder(str(folder))
        assert elsewhere.is_dir() and other.is_dir() and Path("/etc").is_dir()
    finally:
        other.rmdir()


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("my photo.png", "my_photo"),
        ("../../etc/passwd.png", "passwd"),
        ("", "image"),
        (None, "image"),
        ("...png", "image"),
        ("ünïcode name.jpg", "ünïcode_name"),
    ],
)
def test_download_names_come_from_the_upload_made_safe(name, stem):
    assert file_stem(name) == stem
