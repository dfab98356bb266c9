"""The Gradio app: listing runs, the Predict handlers called directly, and the app end to end over HTTP."""

import logging
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from app import build_app
from app.core.models.predictors import RawPrediction
from app.core.models.runs import RunNotFoundError, find_runs, get_run
from app.views.predict import NO_IMAGE_MESSAGE, PredictView, render, to_rgb
from app.views.predict_draw import display_scale
from multimask.config import get_multimask_cfg
from multimask.data.images import MAX_IMAGE_PIXELS, to_uint8
from tests.conftest import serve_app

CLASSES = ["disc", "box", "triangle"]
OLD = 1_600_000_000  # an mtime older than the freshly saved run


def _make_run(folder):
    """A run folder with random-init weights of the tiny CPU model (no training)."""
    folder.mkdir(parents=True)
    cfg = get_multimask_cfg(
        "tiny_cpu", ["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    )
    cfg.MULTIMASK.CLASS_NAMES = CLASSES
    (folder / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("model_final")


def _drawn(image):
    """The overlay's shape for `image`: drawn `display_scale` times larger."""
    k = display_scale(*image.shape[:2])
    return image.shape[0] * k, image.shape[1] * k, 3


def _copy_run(src, dst, weights_name="model_final.pth", weights=None):
    """A run folder with `src`'s config; its weights copied from `src` or the given bytes, dated OLD."""
    dst.mkdir(parents=True)
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    if weights is None:
        shutil.copyfile(src / "model_final.pth", dst / weights_name)
    else:
        (dst / weights_name).write_bytes(weights)
    os.utime(dst / weights_name, (OLD, OLD))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """runs/ with exp1 (fresh), group/exp2 (nested, older), ckpt (last_checkpoint), corrupt weights, and
    folders that are not runs: broken config, no weights, a checkpoint outside the folder, a link outside."""
    base = tmp_path_factory.mktemp("app")
    root = base / "runs"
    _make_run(root / "exp1")
    exp1 = root / "exp1"
    _copy_run(exp1, root / "group" / "exp2")
    _copy_run(exp1, root / "ckpt", weights_name="model_0000099.pth", weights=b"x")
    (root / "ckpt" / "last_checkpoint").write_text("model_0000099.pth")
    _copy_run(exp1, root / "corrupt", weights=b"not a checkpoint")
    os.utime(root / "corrupt" / "model_final.pth", (OLD - 10, OLD - 10))
    (root / "broken").mkdir()
    (root / "broken" / "config.yaml").write_text("MODEL: [unclosed\n")
    (root / "broken" / "model_final.pth").write_bytes(b"x")
    (root / "noweights").mkdir()
    shutil.copy(exp1 / "config.yaml", root / "noweights" / "config.yaml")
    (root / "escapes").mkdir()
    shutil.copy(exp1 / "config.yaml", root / "escapes" / "config.yaml")
    (root / "escapes" / "last_checkpoint").write_text("../exp1/model_final.pth")
    _copy_run(exp1, base / "outside", weights=b"x")
    (root / "linked").symlink_to(base / "outside", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def view(runs_root):
    return PredictView(runs_root)


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(0)
    img = np.full((120, 160, 3), 40, np.uint8)
    img[30:90, 40:120] = rng.randint(100, 255, (60, 80, 3))
    return img


@pytest.fixture(scope="module")
def raw(view, image):
    """The model's raw detections on `image` (the untrained model scores many boxes around 0.3)."""
    *_, state = view.predict("exp1", image, 0.0, None, None)
    assert isinstance(state, RawPrediction) and len(state) > 10
    return state


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_find_runs_lists_valid_runs_newest_first_and_skips_broken_ones(runs_root):
    handler, logger = _Records(), logging.getLogger("app.core.models.runs")
    level, logger.level = logger.level, logging.DEBUG  # repeated warnings are logged at debug level
    logger.addHandler(handler)
    try:
        runs = find_runs(runs_root)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.name for r in runs] == ["exp1", "ckpt", "group/exp2", "corrupt"]
    exp1 = runs[0]
    assert exp1.path == (runs_root / "exp1").resolve()
    assert exp1.weights.name == "model_final.pth"
    assert exp1.mask_names == ("primary", "secondary")
    assert exp1.class_names == tuple(CLASSES)
    assert runs[1].weights.name == "model_0000099.pth"
    assert exp1.mtime > runs[1].mtime
    logged = "\n".join(handler.messages)
    for skipped in ("broken", "noweights", "escapes", "linked"):
        assert skipped in logged
    assert find_runs(runs_root / "does_not_exist") == []


@pytest.mark.parametrize(
    "name",
    [
        "../exp1",
        "exp1/../exp1",
        "/etc",
        "",
        None,
        3,
        "exp1\\..",
        "group",
        "broken",
        "linked",
        "escapes",
        "nope",
        "./exp1",
    ],
)
def test_get_run_refuses_names_that_are_not_listed_runs(runs_root, name):
    with pytest.raises(RunNotFoundError):
        get_run(runs_root, name)


def test_get_run_accepts_listed_runs(runs_root):
    assert get_run(runs_root, "group/exp2").path == (runs_root / "group" / "exp2").resolve()
    assert get_run(str(runs_root), "exp1").name == "exp1"


def test_predict_overlay_and_table(view, image, raw):
    threshold = float(raw.scores[9])
    overlay, table, status, state = view.predict("exp1", image, threshold, ["primary", "secondary"], raw)
    assert state is raw  # same run and image: the model did not run again
    assert overlay.shape == _drawn(image) and overlay.dtype == np.uint8
    expected = int((raw.scores >= threshold).sum())
    assert 10 <= expected < len(raw)
    assert len(table) == expected
    assert list(table.columns) == ["#", "class", "score", "x0", "y0", "x1", "y1", "primary area", "secondary area"]
    assert (table["score"] >= round(threshold, 3)).all()
    assert set(table["class"]) <= set(CLASSES)
    assert (table["x1"] >= table["x0"]).all() and (table["y1"] >= table["y0"]).all()
    assert table["primary area"].tolist() == raw.areas[:expected, 0].tolist()
    assert f"{expected} of {len(raw)}" in status and "⚠️" not in status
    assert view.predict("exp1", image, 0.99, None, raw)[1].empty  # random weights score well below 0.99


def test_predict_loads_the_model_once(view, image, raw):
    loads = view.cache.loads
    for threshold in (0.1, 0.3):
        assert view.predict("exp1", image, threshold, None, raw)[3] is raw
    other = image.copy()
    other[0, 0] = 255
    assert view.predict("exp1", other, 0.3, None, raw)[3] is not raw  # new image: runs again, same model
    assert view.cache.loads == loads


@pytest.mark.slow
def test_a_large_upload_is_shrunk_for_the_model_and_the_table_stays_in_its_pixels(view, image):
    """The model's masks at a photo's full size could take gigabytes; it resizes its input anyway."""
    import cv2

    from app.core.models.predictors import PREDICT_MAX_SIDE

    big = cv2.resize(image, (PREDICT_MAX_SIDE * 2, PREDICT_MAX_SIDE * 3 // 2), interpolation=cv2.INTER_NEAREST)
    overlay, table, _, state = view.predict("exp1", big, 0.0, None, None)
    assert overlay.shape == state.image.shape == (PREDICT_MAX_SIDE * 3 // 4, PREDICT_MAX_SIDE, 3)
    assert state.scale == 2.0
    shrunk = cv2.resize(big, (PREDICT_MAX_SIDE, PREDICT_MAX_SIDE * 3 // 4), interpolation=cv2.INTER_AREA)
    _, same, _, _ = view.predict("exp1", shrunk, 0.0, None, None)
    assert len(table) == len(same) > 0
    for column in ("x0", "y0", "x1", "y1"):
        assert np.allclose(table[column], 2 * same[column], atol=2), column
    assert np.allclose(table["primary area"], 4 * same["primary area"], atol=4)
    assert view.predict("exp1", big, 0.5, None, state)[3] is state, "the same upload: the model does not run again"


def test_masks_match_the_model_output(view, image, raw):
    """Cropped masks in the state paste back to exactly what the predictor returned."""
    predictor = view.cache.get(get_run(view.runs_root, "exp1"))
    inst = predictor(np.ascontiguousarray(image[:, :, ::-1]))["instances"].to("cpu")
    order = np.argsort(-inst.scores.numpy(), kind="stable")
    full = raw.full_masks(range(len(raw)), [0, 1])
    assert np.array_equal(full, inst.pred_multimask.numpy()[order])
    assert np.array_equal(raw.areas, full.sum(axis=(2, 3)))


def test_toggling_a_mask_layer_changes_the_overlay_not_the_table(view, raw):
    assert raw.areas[:, 1].sum() > 0
    both, table_both, _ = view.redraw(raw, 0.2, ["primary", "secondary"])
    primary, table_primary, _ = view.redraw(raw, 0.2, ["primary"])
    none, _, _ = view.redraw(raw, 0.2, [])
    assert both.shape == primary.shape == none.shape == _drawn(raw.image)
    assert not np.array_equal(both, primary) and not np.array_equal(primary, none)
    pd.testing.assert_frame_equal(table_both, table_primary)


def test_render_draws_nothing_extra_for_an_empty_selection(raw):
    overlay, table = render(raw, 1.0, [])
    assert table.empty and overlay.shape == _drawn(raw.image)


def test_redraw_without_a_prediction_leaves_the_outputs_alone(view):
    import gradio as gr

    assert view.redraw(None, 0.5, ["primary"]) == (gr.skip(),) * 3
    assert view.redraw("not a prediction", 0.5, []) == (gr.skip(),) * 3


def test_the_redraw_after_a_prediction_only_draws_when_the_slider_or_layers_moved_meanwhile(view, image):
    import gradio as gr

    *_, state = view.predict("exp1", image, 0.3, ["primary"], None)
    assert view.redraw(state, 0.3, ["primary"]) == (gr.skip(),) * 3, "the prediction's overlay shows these"
    overlay, table, status = view.redraw(state, 0.25, ["primary"])
    assert overlay.shape == _drawn(image) and "≥ 0.25" in status
    assert view.redraw(state, 0.25, ["primary"]) == (gr.skip(),) * 3


@pytest.mark.parametrize("shape", [(120, 160), (120, 160, 1), (120, 160, 4), (120, 160, 2)])
def test_grayscale_and_alpha_uploads(view, image, shape):
    img = np.random.RandomState(1).randint(0, 255, shape).astype(np.uint8)
    overlay, table, status, state = view.predict("exp1", img, 0.2, None, None)
    assert "⚠️" not in status
    assert overlay.shape == _drawn(img)
    assert state.image.shape == (120, 160, 3)
    if len(shape) == 3 and shape[2] == 4:
        assert np.array_equal(state.image, img[:, :, :3])
    else:
        assert np.array_equal(state.image[:, :, 0], img.reshape(120, 160, -1)[:, :, 0])


def test_an_uploaded_file_is_read_as_training_and_the_cli_read_it(tmp_path):
    import cv2

    from multimask.data.images import read_image_bgr

    grey = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100  # 16-bit: PIL's RGB makes it white
    path = tmp_path / "grey16.png"
    cv2.imwrite(str(path), grey)
    rgb = to_rgb(str(path))
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, read_image_bgr(path)[:, :, ::-1])
    assert np.array_equal(rgb[:, :, 0], to_uint8(grey)) and rgb.min() == 0 and rgb.max() == 255
    (tmp_path / "notes.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="The upload is not a readable image"):
        to_rgb(str(tmp_path / "notes.png"))


def test_to_rgb_converts_other_dtypes():
    assert to_rgb(np.ones((4, 5), np.float32)).max() == 255
    assert to_rgb(np.full((4, 5, 3), 65535, np.uint16)).max() == 255
    assert to_rgb(np.zeros((4, 5), bool)).dtype == np.uint8


def test_bad_inputs_give_a_message(view, image, runs_root):
    overlay, table, status, state = view.predict("exp1", None, 0.5, None, None)
    assert overlay is None and state is None and status == NO_IMAGE_MESSAGE and table.empty
    side = int(np.sqrt(MAX_IMAGE_PIXELS)) + 1
    huge = np.broadcast_to(np.uint8(0), (side, side, 3))  # no memory behind it
    overlay, _, status, state = view.predict("exp1", huge, 0.5, None, None)
    assert overlay is None and state is None and "limit" in status and "⚠️" in status
    assert "⚠️" in view.predict("exp1", np.zeros((2, 3, 5), np.uint8), 0.5, None, None)[2]
    assert "⚠️" in view.predict("exp1", image, "lots", None, None)[2]
    assert "⚠️" in view.predict("exp1", image, 1.5, None, None)[2]
    for name in ("../exp1", "/etc/passwd", "linked", None):
        overlay, _, status, state = view.predict(name, image, 0.5, None, None)
        assert overlay is None and state is None and "⚠️" in status


def test_corrupt_weights_give_a_message_not_a_traceback(view, image):
    overlay, _, status, state = view.predict("corrupt", image, 0.5, None, None)
    assert overlay is None and state is None and status.startswith("⚠️ Prediction failed")


def test_vanished_run(runs_root, view, image):
    _copy_run(runs_root / "exp1", runs_root / "temp")
    assert "temp" in [r.name for r in find_runs(runs_root)]
    shutil.rmtree(runs_root / "temp")
    overlay, _, status, _ = view.predict("temp", image, 0.5, None, None)
    assert overlay is None and "refresh" in status
    update, status = view.refresh_runs("temp")
    assert update["value"] == "exp1" and "temp" not in [v for _, v in update["choices"]]


def test_no_runs_yet(tmp_path, image):
    empty = PredictView(tmp_path / "runs")
    update, status = empty.refresh_runs(None)
    assert update["choices"] == [] and update["value"] is None
    assert "python -m multimask train" in status
    assert "python -m multimask train" in empty.predict(None, image, 0.5, None, None)[2]
    assert "python -m multimask train" in empty.select_run(None)[1]
    assert build_app(tmp_path / "data", tmp_path / "runs") is not None


def test_the_app_checks_jobs_only_between_start_and_stop(tmp_path):
    def pollers():
        return [t for t in threading.enumerate() if t.name == "multimask-train-poller"]

    before = len(pollers())
    mm = build_app(tmp_path / "data", tmp_path / "runs")
    assert len(pollers()) == before, "building the app starts nothing"
    mm.start(poll_seconds=0.05)
    assert len(pollers()) == before + 1
    mm.stop()  # waits for the poller to end
    assert len(pollers()) == before


def test_launch_parser_defaults_to_localhost():
    import launch

    args = launch.build_parser().parse_args([])
    assert (args.host, args.port, args.no_auth, args.users_file) == ("127.0.0.1", 7860, False, None)
    assert (args.data_root, args.runs_root) == ("datasets", "runs")
    with pytest.raises(SystemExit):
        launch.build_parser().parse_args(["--share", "true"])  # no public links: see the README's team section


@pytest.mark.slow
def test_app_end_to_end(runs_root, tmp_path, image):
    from gradio_client import Client, handle_file

    path = tmp_path / "upload.png"
    Image.fromarray(image).save(path)
    demo = build_app(tmp_path / "data", runs_root)
    server = serve_app(demo)
    try:
        client = Client(server.local_url, verbose=False)
        overlay, table, status = client.predict(
            "exp1", handle_file(path), 0.0, ["primary", "secondary"], api_name="/predict"
        )
        assert "⚠️" not in status
        with Image.open(overlay) as im:
            assert im.size == (960, 720) and im.mode == "RGB"  # drawn 6x: see display_scale
        assert table["headers"][-2:] == ["primary area", "secondary area"]
        n = len(table["data"])
        assert n > 10 and f"{n} of {n}" in status
        # The same session's last prediction is re-filtered without an image.
        overlay, table, status = client.predict(0.99, ["primary"], api_name="/redraw")
        assert len(table["data"]) == 0 and f"0 of {n}" in status
        _, status = client.predict("exp1", api_name="/list_runs")
        assert "Found 4 run(s)" in status
        overlay, _, status = client.predict("exp1", None, 0.5, ["primary"], api_name="/predict")
        assert overlay is None and status == NO_IMAGE_MESSAGE
    finally:
        server.close()
