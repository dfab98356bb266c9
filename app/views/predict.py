"""The Predict tab: run a trained model on an uploaded image, filter by score and toggle mask layers.

The model runs once per (run, image) at RAW_SCORE_THRESHOLD; its output is kept in a `gr.State` and the
score slider and mask toggles only re-filter and redraw it; a click on a table row highlights that detection.
Loaded models are cached per run weights. The overlay and table are drawn by `predict_draw`, the downloads written
by `predict_export`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.data_classes import ImageData

from multimask.data.images import MAX_IMAGE_PIXELS, ImageTooLargeError, read_image_bgr, to_uint8

from ..core.models.predictors import (
    RAW_SCORE_THRESHOLD,
    PredictorCache,
    RawPrediction,
    image_digest,
    run_model,
)
from ..core.models.runs import RunInfo, RunNotFoundError, RunProgress, find_runs, get_run, run_progress
from ..core.roots import scrub, shown
from .predict_draw import empty_table, render, select
from .predict_export import remove_folder, session_folder, write_downloads
from .updates import choices_keeping

logger = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.5
NO_IMAGE_MESSAGE = "Upload an image to detect objects."
RUNS_POLL_SECONDS = 10.0  # how often an open Predict tab re-lists the runs (new runs, training progress)
IMAGE_FORMATS = "PNG, JPEG, BMP, TIFF or WebP"


class InputError(ValueError):
    """Bad input from the user; the message is shown in the status line as is."""


def undecoded(image: gr.Image) -> gr.Image:
    """`image` (type "filepath") made to hand an upload to the handler as its file, undecoded: the handler reads it
    as training does and names what is wrong with a file that is not an image (Gradio's own check, PIL's, fails
    first with a bare "Error"). Patched on the instance: a subclass makes Gradio write a .pyi file beside this one."""
    decode = image.preprocess

    def preprocess(payload: ImageData | None) -> Any:
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return decode(payload)
        return payload.path  # Gradio has checked that it is an upload to this app

    image.preprocess = preprocess
    return image


def no_runs_message(runs_root: str | Path) -> str:
    """What to show when `runs_root` holds no trained run."""
    name = Path(runs_root).resolve().name
    return (
        f"No trained run in the runs folder `{name}` yet. Train one in the Train tab, or on the server, for "
        "example on synthetic data:\n\n"
        "```\npython -m multimask synth --out datasets/synth\n"
        "python -m multimask train --config-file tiny_cpu --train-json datasets/synth/train.json "
        f"--val-json datasets/synth/val.json --output-dir {name}/synth_tiny\n```\n\n"
        "then press **Refresh**."
    )


def _too_large(w: int, h: int) -> str:
    return (
        f"The image is {w}x{h} ({h * w:,} pixels), over the limit of {MAX_IMAGE_PIXELS:,} pixels; downscale it first."
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
        try:  # refused from its header when too large, before the pixels are decoded
            image = read_image_bgr(image, max_pixels=MAX_IMAGE_PIXELS)[:, :, ::-1]
        except ImageTooLargeError as e:
            raise InputError(_too_large(e.width, e.height)) from None
        except ValueError:
            raise InputError(
                f"The upload is not a readable image: {Path(image).name!r} "
                f"{unreadable_reason(image)}. Use {IMAGE_FORMATS}."
            ) from None
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 2):  # gray, gray + alpha
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape[:2]:
        raise InputError(f"Unsupported image of shape {image.shape}: upload an RGB, RGBA or grayscale image.")
    h, w = image.shape[:2]
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(_too_large(w, h))
    try:
        image = to_uint8(image)  # as training reads files
    except ValueError as e:
        raise InputError(f"Unsupported image: {e}.") from None
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def unreadable_reason(path: str | Path) -> str:
    """Why a file that OpenCV could not decode is no image, from its first bytes ("is empty", "is text, ...")."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "cannot be read"
    if not head:
        return "is empty"
    kind = _image_kind(head)
    if kind:
        return f"is a {kind} file that cannot be decoded (damaged or cut short?)"
    if b"\0" not in head and head.lstrip()[:1] == b"<":
        return "is HTML or XML text, not an image"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "is not in an image format"
    return "is text, not an image"


def _image_kind(head: bytes) -> str | None:
    """The image format a file's first bytes announce, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    signatures = {
        b"\x89PNG\r\n\x1a\n": "PNG",
        b"\xff\xd8\xff": "JPEG",
        b"BM": "BMP",
        b"II*\0": "TIFF",
        b"MM\0*": "TIFF",
        b"GIF8": "GIF",
    }
    return next((kind for magic, kind in signatures.items() if head.startswith(magic)), None)


def parse_threshold(threshold: Any) -> float:
    """The slider value as a float in [0, 1]; InputError otherwise."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"Score threshold must be a number, got {threshold!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"Score threshold must be between 0 and 1, got {value}.")
    return value


Outputs = tuple[Any, pd.DataFrame, str, Any]


class PredictView:
    """The Predict tab's event handlers, independent of the components so they can be called directly."""

    def __init__(self, runs_root: str | Path, cache: PredictorCache | None = None):
        self.runs_root = Path(runs_root)
        self.cache = cache or PredictorCache()

    def run_choices(self) -> list[tuple[str, str]]:
        """(label, run name) pairs for the run dropdown, newest first; a label says when the weights are partial."""
        runs = find_runs(self.runs_root)
        progress = run_progress(self.runs_root, runs)
        return [(_run_label(r, progress[r.name]), r.name) for r in runs]

    def refresh_runs(self, current: str | None) -> tuple[Any, str]:
        """Re-list the runs, keeping the current choice when it still exists."""
        choices = self.run_choices()
        names = [v for _, v in choices]
        status = (
            no_runs_message(self.runs_root)
            if not names
            else f"Found {len(names)} run(s) in the runs folder `{shown(self.runs_root, [self.runs_root])}`."
        )
        return choices_keeping(choices, current, names, names[0] if names else None), status

    def load_runs(self, current: str | None) -> tuple[Any, str]:
        """On page load: re-list the runs (some may have been trained since the app started)."""
        update, status = self.refresh_runs(current)
        return update, (status if not update["choices"] else NO_IMAGE_MESSAGE)

    def poll_runs(self, listed: list | None, current: str | None = None) -> tuple[Any, list]:
        """The run list again, on a timer: new choices when runs or their progress changed since `listed` (the
        choices sent last), else nothing. A chosen run that still exists is left as it is; with none chosen (no
        run existed when the page opened) or a chosen run gone, the newest is chosen."""
        choices = [list(c) for c in self.run_choices()]
        if choices == listed:
            return gr.skip(), listed
        names = [name for _, name in choices]
        chosen = {} if current in names or not names else {"value": names[0]}
        return gr.update(choices=[tuple(c) for c in choices], **chosen), choices

    def select_run(self, run_name: str | None) -> tuple[Any, str]:
        """The mask-layer checkboxes of the chosen run (all on)."""
        try:
            run = self._get_run(run_name)
        except RunNotFoundError as e:
            return gr.update(choices=[], value=[]), _warn(e)
        names = list(run.mask_names)
        return gr.update(choices=names, value=names), f"Run `{run.name}`: masks {', '.join(names)}."

    def predict(
        self,
        run_name: str | None,
        image: Any,
        threshold: Any,
        visible: Sequence[str] | None,
        state: RawPrediction | None = None,
    ) -> Outputs:
        """Detect on `image` with the chosen run (reusing `state` when run and image are unchanged).

        Returns (overlay, instance table, status Markdown, new state); errors give a message, no overlay. An upload
        that is no image is named whatever the run.
        """
        try:
            rgb = None if image is None else to_rgb(image)
            run = self._get_run(run_name)
            if rgb is None:
                return None, empty_table(run.mask_names), NO_IMAGE_MESSAGE, None
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
            if isinstance(image, (str, Path)):
                raw.file_name = Path(image).name
            overlay, table = self._render(raw, threshold, visible)
            return overlay, table, _summary(raw, len(table), threshold, ran), raw
        except (RunNotFoundError, InputError) as e:
            return None, empty_table(), _warn(e), None
        except Exception as e:  # shown in the status line, never as a traceback in the page
            logger.exception("prediction failed")
            return None, empty_table(), _warn(f"Prediction failed: {type(e).__name__}: {self._scrub(e)}"), None

    def redraw(
        self, state: RawPrediction | None, threshold: Any, visible: Sequence[str] | None
    ) -> tuple[Any, Any, str]:
        """Re-filter and redraw the last prediction without running the model; skips when there is none, or
        when the overlay last sent already shows these settings."""
        if not isinstance(state, RawPrediction):
            return gr.skip(), gr.skip(), gr.skip()
        try:
            threshold = parse_threshold(threshold)
            if state.rendered == _render_key(threshold, visible, state.highlight):
                return gr.skip(), gr.skip(), gr.skip()
            overlay, table = self._render(state, threshold, visible)
            return overlay, table, _summary(state, len(table), threshold, None)
        except InputError as e:
            return gr.skip(), gr.skip(), _warn(e)
        except Exception as e:
            logger.exception("redraw failed")
            return gr.skip(), gr.skip(), _warn(f"Drawing failed: {type(e).__name__}: {self._scrub(e)}")

    def highlight(
        self, state: RawPrediction | None, threshold: Any, visible: Sequence[str] | None, number: Any
    ) -> tuple[Any, str]:
        """Highlight detection `number` (the table's "#") on the overlay, or show all again when it is the one
        highlighted already (a second click on its row). Returns (overlay, status)."""
        if not isinstance(state, RawPrediction):
            return gr.skip(), _warn("Detect first, then click a row to highlight its instance.")
        try:
            threshold = parse_threshold(threshold)
            shown = len(select(state, threshold))
            j = _instance_index(number, shown)
            state.highlight = None if state.highlight == j else j
            overlay, _ = self._render(state, threshold, visible)
        except InputError as e:
            return gr.skip(), _warn(e)
        except Exception as e:
            logger.exception("highlight failed")
            return gr.skip(), _warn(f"Drawing failed: {type(e).__name__}: {self._scrub(e)}")
        if state.highlight is None:
            return overlay, _summary(state, shown, threshold, None)
        return overlay, f"Instance #{number} highlighted; click its row again to show all {shown}."

    def highlight_row(
        self, state: RawPrediction | None, threshold: Any, visible: Sequence[str] | None, evt: gr.SelectData
    ) -> tuple[Any, str]:
        """A click on an instance table cell: highlight the row's instance (its "#", the first value)."""
        row = evt.row_value if isinstance(evt.row_value, (list, tuple)) else [None]
        return self.highlight(state, threshold, visible, row[0] if row else None)

    def downloads(self, state: RawPrediction | None, folder: str | None) -> tuple[Any, Any, str | None]:
        """Write the predictions JSON and overlay PNG of the overlay last sent to the session's folder; returns
        the two download buttons' updates and the folder. Nothing to download without a prediction."""
        if not isinstance(state, RawPrediction) or state.overlay is None:
            off = gr.update(value=None, interactive=False)
            return off, off, folder
        if state.exported == state.rendered and folder:
            return gr.skip(), gr.skip(), folder
        rendered, overlay = state.rendered, state.overlay  # read once: a redraw may replace them meanwhile
        try:
            path = session_folder(folder)
            doc, png = write_downloads(state, select(state, rendered[0]), overlay, path)
        except (OSError, ValueError):
            logger.exception("writing the downloads failed")
            off = gr.update(value=None, interactive=False)
            return off, off, folder
        state.exported = rendered
        return (gr.update(value=str(doc), interactive=True), gr.update(value=str(png), interactive=True), str(path))

    def _render(self, raw: RawPrediction, threshold: float, visible: Sequence[str] | None) -> tuple:
        overlay, table = render(raw, threshold, visible, raw.highlight)
        raw.rendered, raw.overlay = _render_key(threshold, visible, raw.highlight), overlay
        return overlay, table

    def _scrub(self, error: Exception) -> str:
        """An exception's text with server paths named from the runs folder (or by file name)."""
        return scrub(str(error), [self.runs_root])

    def _get_run(self, run_name: str | None) -> RunInfo:
        if not run_name and not find_runs(self.runs_root):
            raise RunNotFoundError(no_runs_message(self.runs_root))
        return get_run(self.runs_root, run_name)


def _instance_index(number: Any, shown: int) -> int:
    """The detection index of table number `number` (from 1) among `shown` rows; InputError otherwise."""
    try:
        j = int(number) - 1
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"Not an instance number: {number!r}.") from None
    if not 0 <= j < shown or j + 1 != float(number):
        raise InputError(f"No instance #{number} among the {shown} shown; detect again or lower the threshold.")
    return j


def _render_key(threshold: float, visible: Sequence[str] | str | None, highlight: int | None) -> tuple:
    names = None if visible is None else tuple([visible] if isinstance(visible, str) else visible)
    return threshold, names, highlight


def _run_label(run: RunInfo, progress: RunProgress) -> str:
    """The run's name, how far its training got when its weights are partial, its date and mask names."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.mtime))
    details = f"({when}; {', '.join(run.mask_names)})"
    if not progress.partial:
        return f"{run.name}  {details}"
    done = progress.iterations
    if progress.state == "stopped" and done is not None:
        marker = f"stopped after {done} iterations"
    else:
        weights = "partial weights" if done is None else f"weights after {done} iterations"
        marker = {
            "training": "training…",
            "stopped": "stopped",
            "failed": "training failed",
            "unfinished": "unfinished",
        }[progress.state] + f" – {weights}"
    return f"{run.name} · {marker}  {details}"


def _warn(message: object) -> str:
    return f"⚠️ {message}"


def _summary(raw: RawPrediction, shown: int, threshold: float, seconds: float | None) -> str:
    text = (
        f"{shown} of {len(raw)} detections with score ≥ {threshold:.2f} "
        f"(run `{raw.run_name}`; detections under {RAW_SCORE_THRESHOLD} are not kept)"
    )
    return text + (f" · model ran in {seconds:.2f} s" if seconds is not None else "")


@dataclass(frozen=True)
class PredictTab:
    """The Predict tab's handles: its handlers and its run picker (the Train tab's "Open in Predict" sets it)."""

    view: PredictView
    run: gr.Dropdown


def build_predict_tab(demo: gr.Blocks, view: PredictView, tab: gr.Tab | None = None) -> PredictTab:
    """Add the Predict tab's components and events to the current Blocks (inside `tab`); returns its handles.

    API endpoints: `predict` (run, image, threshold, masks), `redraw` (threshold, masks; uses the session's
    last prediction), `list_runs` and `select_run`. The run list is re-read on page load, every
    RUNS_POLL_SECONDS, and when `tab` (the Predict tab, when given) is selected.
    """
    runs_root = view.runs_root
    choices = view.run_choices()
    first = choices[0][1] if choices else None
    first_masks = list(get_run(runs_root, first).mask_names) if first else []
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                run = gr.Dropdown(choices, value=first, label="Run", scale=4, elem_id="mm-predict-run")
                refresh = gr.Button("Refresh", scale=1, min_width=80)
            # The file as uploaded, undecoded (no PIL conversion, which clips 16-bit greyscale to white), read by
            # to_rgb as training and the CLI read images.
            image = undecoded(
                gr.Image(
                    type="filepath",
                    image_mode=None,
                    format="png",
                    label="Image",
                    sources=["upload", "clipboard"],
                    elem_id="mm-predict-image",
                )
            )
            threshold = gr.Slider(
                0.0,
                1.0,
                value=DEFAULT_SCORE_THRESHOLD,
                step=0.01,
                label="Score threshold",
                info=f"Detections under {RAW_SCORE_THRESHOLD} are never kept.",
            )
            masks = gr.CheckboxGroup(first_masks, value=first_masks, label="Mask layers")
            detect = gr.Button("Detect", variant="primary")
        with gr.Column(scale=2):
            # A small image is drawn larger (see predict_draw.display_scale); the fullscreen button enlarges it all.
            overlay = gr.Image(
                format="png",
                label="Prediction",
                interactive=False,
                buttons=["fullscreen"],
                elem_id="mm-predict-overlay",
            )
            status = gr.Markdown(
                no_runs_message(runs_root) if not choices else NO_IMAGE_MESSAGE,
                label="Status",
                elem_id="mm-predict-status",
            )
            with gr.Row():
                json_file = gr.DownloadButton(
                    "Predictions (JSON)", interactive=False, size="sm", elem_id="mm-predict-json"
                )
                png_file = gr.DownloadButton("Overlay (PNG)", interactive=False, size="sm", elem_id="mm-predict-png")
            table = gr.Dataframe(
                empty_table(first_masks),
                label="Instances (click a row to highlight it)",
                interactive=False,
                datatype="auto",
                elem_id="mm-predict-table",
            )
    state = gr.State(None, time_to_live=3600)
    folder = gr.State(None, delete_callback=remove_folder)  # the session's download folder
    listed = gr.State(None)  # the run choices last sent by the timer

    predict_io = {
        "fn": view.predict,
        "inputs": [run, image, threshold, masks, state],
        "outputs": [overlay, table, status, state],
        "concurrency_id": "multimask_model",
        "concurrency_limit": 1,
    }
    redraw_io = {
        "fn": view.redraw,
        "inputs": [state, threshold, masks],
        "outputs": [overlay, table, status],
        "show_progress": "minimal",
    }
    downloads_io = {
        "fn": view.downloads,
        "inputs": [state, folder],
        "outputs": [json_file, png_file, folder],
        "show_progress": "hidden",
        "api_visibility": "private",
    }
    threshold.change(**redraw_io, trigger_mode="always_last", api_name="redraw").then(**downloads_io)  # owns the name
    masks.input(**redraw_io, trigger_mode="always_last", api_visibility="private").then(**downloads_io)
    # After a prediction, a redraw with the slider and layers as they are by then (moved while the model ran)
    detect.click(**predict_io, api_name="predict").then(**redraw_io, api_visibility="private").then(**downloads_io)
    image.change(**predict_io, api_visibility="private").then(**redraw_io, api_visibility="private").then(
        **downloads_io
    )
    run.change(view.select_run, [run], [masks, status], api_name="select_run").then(
        **predict_io, api_visibility="private"
    ).then(**redraw_io, api_visibility="private").then(**downloads_io)
    table.select(
        view.highlight_row,
        [state, threshold, masks],
        [overlay, status],
        api_visibility="private",
        show_progress="minimal",
    ).then(**downloads_io)
    refresh.click(view.refresh_runs, [run], [run, status], api_name="list_runs")
    demo.load(view.load_runs, [run], [run, status], api_visibility="private")  # runs trained meanwhile
    poll = {
        "fn": view.poll_runs,
        "inputs": [listed, run],
        "outputs": [run, listed],
        "show_progress": "hidden",
        "api_visibility": "private",
    }
    gr.Timer(RUNS_POLL_SECONDS).tick(**poll)
    if tab is not None:
        tab.select(**poll)
    return PredictTab(view, run)
