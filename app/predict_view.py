"""The Predict tab: run a trained model on an uploaded image, filter by score and toggle mask layers.

The model runs once per (run, image) at RAW_SCORE_THRESHOLD; its output is kept in a `gr.State` and the
score slider and mask toggles only re-filter and redraw it. Loaded models are cached per run weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from multimask.data.images import MAX_IMAGE_PIXELS, read_image_bgr

from .runs import RunInfo, RunNotFoundError, find_runs, get_run

logger = logging.getLogger(__name__)

RAW_SCORE_THRESHOLD = 0.05  # detections below this are never kept, whatever the slider says
# Larger images are shrunk to this longer side (or the model's own test size, if larger) before the model runs:
# it resizes its input to that size anyway, and its (detections x masks x H x W) output at a photo's full size
# could take gigabytes. Boxes and areas in the table are given in the original image's pixels.
PREDICT_MAX_SIDE = 1600
DEFAULT_SCORE_THRESHOLD = 0.5
NO_IMAGE_MESSAGE = "Upload an image to detect objects."
BASE_COLUMNS = ["#", "class", "score", "x0", "y0", "x1", "y1"]


class InputError(ValueError):
    """Bad input from the user; the message is shown in the status line as is."""


def no_runs_message(runs_root: str | Path) -> str:
    """What to show when `runs_root` holds no trained run."""
    return (
        f"No trained run in `{runs_root}` yet. Train one, for example on synthetic data:\n\n"
        "```\npython -m multimask synth --out datasets/synth\n"
        "python -m multimask train --config-file tiny_cpu --train-json datasets/synth/train.json "
        f"--val-json datasets/synth/val.json --output-dir {Path(runs_root) / 'synth_tiny'}\n```\n\n"
        "then press **Refresh**."
    )


def to_rgb(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB copy of an uploaded image: grayscale is repeated, an alpha channel dropped.

    `image` is the uploaded file's path, as the Image component hands it over, read as training and
    `multimask predict` read files (`read_image_bgr`), or an array. Raises InputError for no image, an
    unreadable file, an unsupported array, or more than MAX_IMAGE_PIXELS pixels.
    """
    if image is None:
        raise InputError(NO_IMAGE_MESSAGE)
    if isinstance(image, (str, Path)):
        try:
            image = read_image_bgr(image, max_pixels=None)[:, :, ::-1]
        except ValueError:
            raise InputError("The upload is not a readable image: use PNG, JPEG, BMP, TIFF or WebP.") from None
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 2):  # gray, gray + alpha
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape[:2]:
        raise InputError(f"Unsupported image of shape {image.shape}: upload an RGB, RGBA or grayscale image.")
    h, w = image.shape[:2]
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(f"The image is {w}x{h} ({h * w:,} pixels), over the limit of {MAX_IMAGE_PIXELS:,} "
                         "pixels; downscale it first.")
    image = _to_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        top = image.max(initial=0)
        if top > 255:  # 16-bit and wider: keep the top 8 bits of the type's range
            image = image.astype(np.float64) * (255.0 / np.iinfo(image.dtype).max)
        return np.clip(image, 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image.astype(np.float64))
        if image.max(initial=0) <= 1.0:
            image = image * 255.0
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)
    raise InputError(f"Unsupported image data type {image.dtype}.")


@dataclass
class RawPrediction:
    """A model's detections on one image at RAW_SCORE_THRESHOLD, by decreasing score.

    Masks are kept cropped to their extent (`crops[i]` is (K, h, w) bool at `origins[i]` = (x, y)) so that a
    session's state stays small on large images.
    """

    run_name: str
    run_key: tuple
    source: str  # digest of the uploaded image, to reuse the prediction while it is unchanged
    scale: float  # pixels of the uploaded image per pixel of `image` (1.0 unless it was shrunk)
    image: np.ndarray  # RGB uint8 (H, W, 3), what the model saw and the overlay shows
    boxes: np.ndarray  # (N, 4) float32 XYXY
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64
    origins: np.ndarray  # (N, 2) int64
    crops: list[np.ndarray]
    areas: np.ndarray  # (N, K) int64 pixel count per mask
    mask_names: list[str]
    class_names: list[str]
    rendered: tuple | None = None  # (threshold, mask names) of the overlay last sent for it

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_instances(cls, instances, image: np.ndarray, run_name: str, run_key: tuple,
                       mask_names: Sequence[str], class_names: Sequence[str], *, source: str = "",
                       scale: float = 1.0) -> RawPrediction:
        """Convert a predictor's output Instances (on any device) for `image`."""
        instances = instances.to("cpu")
        h, w = image.shape[:2]
        k = len(mask_names)
        scores = instances.scores.numpy().astype(np.float32)
        if instances.has("pred_multimask"):
            masks = instances.pred_multimask.numpy()
        else:
            masks = np.zeros((len(scores), k, h, w), dtype=bool)
        order = np.argsort(-scores, kind="stable")
        origins, crops = np.zeros((len(order), 2), dtype=np.int64), []
        for j, i in enumerate(order):
            m = masks[i]
            ys, xs = np.flatnonzero(m.any(axis=(0, 2))), np.flatnonzero(m.any(axis=(0, 1)))
            if ys.size == 0:
                crops.append(np.zeros((k, 0, 0), dtype=bool))
                continue
            origins[j] = xs[0], ys[0]
            crops.append(m[:, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].copy())
        areas = np.array([c.sum(axis=(1, 2)) for c in crops], dtype=np.int64).reshape(len(crops), k)
        return cls(run_name=run_name, run_key=tuple(run_key), source=source, scale=float(scale), image=image,
                   boxes=instances.pred_boxes.tensor.numpy().astype(np.float32)[order].reshape(-1, 4),
                   scores=scores[order], classes=instances.pred_classes.numpy().astype(np.int64)[order],
                   origins=origins, crops=crops, areas=areas, mask_names=list(mask_names),
                   class_names=list(class_names))

    def class_name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)

    def full_masks(self, indices: Sequence[int], mask_indices: Sequence[int]) -> np.ndarray:
        """(len(indices), K, H, W) bool masks; only `mask_indices` are filled, the others stay empty."""
        h, w = self.image.shape[:2]
        out = np.zeros((len(indices), len(self.mask_names), h, w), dtype=bool)
        for j, i in enumerate(indices):
            x, y = self.origins[i]
            crop = self.crops[i]
            for k in mask_indices:
                out[j, k, y:y + crop.shape[1], x:x + crop.shape[2]] = crop[k]
        return out


def table_columns(mask_names: Sequence[str]) -> list[str]:
    """Instance table columns: index, class, score, box, then the pixel area of each mask."""
    return BASE_COLUMNS + [f"{name} area" for name in mask_names]


def empty_table(mask_names: Sequence[str] = ()) -> pd.DataFrame:
    return pd.DataFrame(columns=table_columns(mask_names))


def parse_threshold(threshold: Any) -> float:
    """The slider value as a float in [0, 1]; InputError otherwise."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"Score threshold must be a number, got {threshold!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"Score threshold must be between 0 and 1, got {value}.")
    return value


def select(raw: RawPrediction, threshold: float) -> np.ndarray:
    """Indices of the detections with score >= threshold (in decreasing score order)."""
    return np.flatnonzero(raw.scores >= threshold)


def instance_table(raw: RawPrediction, keep: Sequence[int]) -> pd.DataFrame:
    """One row per kept detection, box and mask areas in the uploaded image's pixels; "#" matches the "#n"
    label drawn on the overlay."""
    rows = []
    for j, i in enumerate(keep):
        box = [round(float(v) * raw.scale) for v in raw.boxes[i]]
        rows.append([j, raw.class_name(int(raw.classes[i])), round(float(raw.scores[i]), 3), *box,
                     *(round(int(a) * raw.scale ** 2) for a in raw.areas[i])])
    return pd.DataFrame(rows, columns=table_columns(raw.mask_names))


def render(raw: RawPrediction, threshold: float, visible: Sequence[str] | None) -> tuple[np.ndarray, pd.DataFrame]:
    """The overlay (RGB, the image's size) and the instance table for the detections above `threshold`.

    `visible` names the mask layers to draw (None: all); unknown names are ignored.
    """
    from multimask.visualizer import MultiMaskVisualizer

    keep = select(raw, threshold)
    wanted = set(raw.mask_names if visible is None else [visible] if isinstance(visible, str) else visible)
    shown = [n for n in raw.mask_names if n in wanted]
    masks = raw.full_masks(keep, [raw.mask_names.index(n) for n in shown])
    labels = [f"#{j} {raw.class_name(int(raw.classes[i]))} {raw.scores[i]:.0%}" for j, i in enumerate(keep)]
    vis = MultiMaskVisualizer(raw.image, None)
    vis.draw_multimask(masks, raw.mask_names, boxes=raw.boxes[keep], labels=labels, visible=shown)
    overlay = vis.output.get_image()
    if overlay.shape != raw.image.shape:  # matplotlib can round the canvas size by a pixel
        import cv2

        overlay = cv2.resize(overlay, (raw.image.shape[1], raw.image.shape[0]), interpolation=cv2.INTER_AREA)
    return overlay, instance_table(raw, keep)


class PredictorCache:
    """Loaded predictors keyed by run weights (path and mtime), least recently used dropped past `max_size`."""

    def __init__(self, max_size: int = 2, device: str | None = None):
        self.max_size = max_size
        self.device = device
        self.loads = 0  # how many models were loaded (for tests and logs)
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.inference_lock = threading.Lock()  # one forward pass at a time on the shared models

    def get(self, run: RunInfo):
        """The predictor of `run`, loaded on first use (cuda when available, else cpu)."""
        from multimask.config import default_device
        from multimask.engine import MultiMaskPredictor

        with self._lock:
            if run.key in self._items:
                self._items.move_to_end(run.key)
                return self._items[run.key]
            logger.info("loading run %s (%s)", run.name, run.weights)
            predictor = MultiMaskPredictor.from_run(run.path, score_threshold=RAW_SCORE_THRESHOLD,
                                                    device=self.device or default_device())
            self.loads += 1
            self._items[run.key] = predictor
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
            return predictor


def image_digest(rgb: np.ndarray) -> str:
    return f"{rgb.shape}:{hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest()}"


def run_model(predictor, rgb: np.ndarray, run: RunInfo, lock: threading.Lock | None = None, *,
              source: str | None = None) -> RawPrediction:
    """Detections of `predictor` on an RGB uint8 image, at the predictor's (raw) score threshold; an image
    whose longer side exceeds PREDICT_MAX_SIDE (or the model's INPUT.MAX_SIZE_TEST) is shrunk first. `source`:
    the image's `image_digest`, when the caller has it already."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(h, w) / max(PREDICT_MAX_SIDE, int(predictor.cfg.INPUT.MAX_SIZE_TEST))
    shown = rgb
    if scale > 1:
        shown = cv2.resize(rgb, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA)
        scale = w / shown.shape[1]
    else:
        scale = 1.0
    bgr = np.ascontiguousarray(shown[:, :, ::-1])
    with lock or contextlib.nullcontext():
        instances = predictor(bgr)["instances"]
    return RawPrediction.from_instances(instances, shown, run.name, run.key, predictor.mask_names,
                                        predictor.metadata.thing_classes, source=source or image_digest(rgb),
                                        scale=scale)


Outputs = tuple[Any, pd.DataFrame, str, Any]


class PredictView:
    """The Predict tab's event handlers, independent of the components so they can be called directly."""

    def __init__(self, runs_root: str | Path, cache: PredictorCache | None = None):
        self.runs_root = Path(runs_root)
        self.cache = cache or PredictorCache()

    def run_choices(self) -> list[tuple[str, str]]:
        """(label, run name) pairs for the run dropdown, newest first."""
        return [(_run_label(r), r.name) for r in find_runs(self.runs_root)]

    def refresh_runs(self, current: str | None) -> tuple[Any, str]:
        """Re-list the runs, keeping the current choice when it still exists."""
        choices = self.run_choices()
        names = [v for _, v in choices]
        value = current if current in names else (names[0] if names else None)
        status = no_runs_message(self.runs_root) if not names else f"Found {len(names)} run(s) in `{self.runs_root}`."
        return gr.update(choices=choices, value=value), status

    def load_runs(self, current: str | None) -> tuple[Any, str]:
        """On page load: re-list the runs (some may have been trained since the app started)."""
        update, status = self.refresh_runs(current)
        return update, (status if not update["choices"] else NO_IMAGE_MESSAGE)

    def select_run(self, run_name: str | None) -> tuple[Any, str]:
        """The mask-layer checkboxes of the chosen run (all on)."""
        try:
            run = self._get_run(run_name)
        except RunNotFoundError as e:
            return gr.update(choices=[], value=[]), _warn(e)
        names = list(run.mask_names)
        return gr.update(choices=names, value=names), f"Run `{run.name}`: masks {', '.join(names)}."

    def predict(self, run_name: str | None, image: Any, threshold: Any, visible: Sequence[str] | None,
                state: RawPrediction | None = None) -> Outputs:
        """Detect on `image` with the chosen run (reusing `state` when run and image are unchanged).

        Returns (overlay, instance table, status Markdown, new state); errors give a message, no overlay.
        """
        try:
            run = self._get_run(run_name)
            if image is None:
                return None, empty_table(run.mask_names), NO_IMAGE_MESSAGE, None
            rgb = to_rgb(image)
            threshold = parse_threshold(threshold)
            ran = None
            digest = image_digest(rgb)
            if isinstance(state, RawPrediction) and state.run_key == run.key and state.source == digest:
                raw = state
            else:
                t0 = time.perf_counter()
                predictor = self.cache.get(run)
                raw = run_model(predictor, rgb, run, self.cache.inference_lock, source=digest)
                ran = time.perf_counter() - t0
            overlay, table = render(raw, threshold, visible)
            raw.rendered = _render_key(threshold, visible)
            return overlay, table, _summary(raw, len(table), threshold, ran), raw
        except (RunNotFoundError, InputError) as e:
            return None, empty_table(), _warn(e), None
        except Exception as e:  # shown in the status line, never as a traceback in the page
            logger.exception("prediction failed")
            return None, empty_table(), _warn(f"Prediction failed: {type(e).__name__}: {e}"), None

    def redraw(self, state: RawPrediction | None, threshold: Any,
               visible: Sequence[str] | None) -> tuple[Any, Any, str]:
        """Re-filter and redraw the last prediction without running the model; skips when there is none, or
        when the overlay last sent already shows these settings."""
        if not isinstance(state, RawPrediction):
            return gr.skip(), gr.skip(), gr.skip()
        try:
            threshold = parse_threshold(threshold)
            if state.rendered == _render_key(threshold, visible):
                return gr.skip(), gr.skip(), gr.skip()
            overlay, table = render(state, threshold, visible)
            state.rendered = _render_key(threshold, visible)
            return overlay, table, _summary(state, len(table), threshold, None)
        except InputError as e:
            return gr.skip(), gr.skip(), _warn(e)
        except Exception as e:
            logger.exception("redraw failed")
            return gr.skip(), gr.skip(), _warn(f"Drawing failed: {type(e).__name__}: {e}")

    def _get_run(self, run_name: str | None) -> RunInfo:
        if not run_name and not find_runs(self.runs_root):
            raise RunNotFoundError(no_runs_message(self.runs_root))
        return get_run(self.runs_root, run_name)


def _render_key(threshold: float, visible: Sequence[str] | str | None) -> tuple:
    return threshold, None if visible is None else tuple([visible] if isinstance(visible, str) else visible)


def _run_label(run: RunInfo) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.mtime))
    return f"{run.name}  ({when}; {', '.join(run.mask_names)})"


def _warn(message: object) -> str:
    return f"⚠️ {message}"


def _summary(raw: RawPrediction, shown: int, threshold: float, seconds: float | None) -> str:
    text = (f"{shown} of {len(raw)} detections with score ≥ {threshold:.2f} "
            f"(run `{raw.run_name}`; detections under {RAW_SCORE_THRESHOLD} are not kept)")
    return text + (f" · model ran in {seconds:.2f} s" if seconds is not None else "")


def build_predict_tab(demo: gr.Blocks, runs_root: str | Path, view: PredictView | None = None) -> PredictView:
    """Add the Predict tab's components and events to the current Blocks; returns its handlers.

    API endpoints: `predict` (run, image, threshold, masks), `redraw` (threshold, masks; uses the session's
    last prediction), `list_runs` and `select_run`.
    """
    view = view or PredictView(runs_root)
    choices = view.run_choices()
    first = choices[0][1] if choices else None
    first_masks = list(get_run(runs_root, first).mask_names) if first else []
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                run = gr.Dropdown(choices, value=first, label="Run", scale=4, elem_id="mm-predict-run")
                refresh = gr.Button("Refresh", scale=1, min_width=80)
            # The file as uploaded (image_mode None: no PIL conversion, which clips 16-bit greyscale to white),
            # read by to_rgb as training and the CLI read images.
            image = gr.Image(type="filepath", image_mode=None, format="png", label="Image",
                             sources=["upload", "clipboard"])
            threshold = gr.Slider(0.0, 1.0, value=DEFAULT_SCORE_THRESHOLD, step=0.01, label="Score threshold",
                                  info=f"Detections under {RAW_SCORE_THRESHOLD} are never kept.")
            masks = gr.CheckboxGroup(first_masks, value=first_masks, label="Mask layers")
            detect = gr.Button("Detect", variant="primary")
        with gr.Column(scale=2):
            overlay = gr.Image(format="png", label="Prediction", interactive=False)
            status = gr.Markdown(no_runs_message(runs_root) if not choices else NO_IMAGE_MESSAGE, label="Status")
            table = gr.Dataframe(empty_table(first_masks), label="Instances", interactive=False, datatype="auto")
    state = gr.State(None, time_to_live=3600)

    predict_io = {"fn": view.predict, "inputs": [run, image, threshold, masks, state],
                  "outputs": [overlay, table, status, state], "concurrency_id": "multimask_model",
                  "concurrency_limit": 1}
    redraw_io = {"fn": view.redraw, "inputs": [state, threshold, masks], "outputs": [overlay, table, status],
                 "show_progress": "minimal"}
    threshold.change(**redraw_io, trigger_mode="always_last", api_name="redraw")  # first: it owns the name
    masks.input(**redraw_io, trigger_mode="always_last", api_visibility="private")
    # After a prediction, a redraw with the slider and layers as they are by then (moved while the model ran)
    detect.click(**predict_io, api_name="predict").then(**redraw_io, api_visibility="private")
    image.change(**predict_io, api_visibility="private").then(**redraw_io, api_visibility="private")
    run.change(view.select_run, [run], [masks, status], api_name="select_run").then(
        **predict_io, api_visibility="private").then(**redraw_io, api_visibility="private")
    refresh.click(view.refresh_runs, [run], [run, status], api_name="list_runs")
    demo.load(view.load_runs, [run], [run, status], api_visibility="private")  # runs trained meanwhile
    view.run_dropdown = run  # the Train tab's "Open in Predict" sets it
    return view
