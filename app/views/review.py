"""The Label tab's review queue: rank the dataset's labelled images by how much a trained run disagrees with
them (`app.core.models.review`), then step through them in the editor, worst first."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from multimask.data.images import read_image_bgr

from ..core.lru import LruCache
from ..core.models.predictors import run_model
from ..core.models.review import ImageReview, Objects, labelled_objects, predicted_objects, ranked, review_image
from ..core.models.runs import RunNotFoundError, get_run

COLUMNS = ["#", "image", "score", "what differs"]  # score: the disagreement, 0 to 1
CACHED_PREDICTIONS = 20_000  # images whose detections are kept (as RLEs: a few kB each)


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    return None


class ReviewQueue:
    """Handlers of the review queue over a `LabelView` (its store, runs folder and loaded predictors).

    A run's detections on an image are kept (per run weights and image file) so that ranking again after edits,
    or at another threshold, runs the model only on images it has not seen.
    """

    def __init__(self, view):
        self.view = view
        self._predictions: LruCache[tuple[list[float], Objects, float, tuple[int, int]]] = LruCache(CACHED_PREDICTIONS)

    def rank(
        self, dataset: str | None, run_name: str | None, threshold: Any, progress: Callable = _no_progress
    ) -> tuple[str, pd.DataFrame, list[str], int]:
        """(summary, the ranked table, the queue of image ids, position -1: nothing opened yet)."""
        empty = pd.DataFrame(columns=COLUMNS)
        try:
            ds = self.view._dataset(dataset)
            if not run_name:
                raise ValueError("choose a trained run above first")
            run = get_run(self.view.runs_root, run_name)
            threshold = min(max(float(threshold), 0.0), 1.0)
        except (ValueError, TypeError, RunNotFoundError) as e:
            return f"⚠️ {e}", empty, [], -1
        images = [e for e in ds.images() if e["status"] != "unlabelled"]
        if not images:
            return "No labelled image to review yet.", empty, [], -1
        reviews: list[ImageReview] = []
        unreadable: list[str] = []
        for k, entry in enumerate(images):
            progress((k, len(images)), desc=f"{run.name} on {entry['file_name']}")
            try:
                scores, predicted, scale, (h, w) = self._detections(ds, entry["id"], run)
            except ValueError:
                unreadable.append(entry["file_name"])
                continue
            keep = sum(s >= threshold for s in scores)
            labels = labelled_objects(ds.load(entry["id"])["instances"], ds.mask_names, h, w, scale)
            reviews.append(review_image(entry["id"], entry["file_name"], labels, predicted[:keep], ds.mask_names))
        order = ranked(reviews)
        table = pd.DataFrame(
            [[i + 1, r.file_name, round(r.score, 3), r.reason()] for i, r in enumerate(order)], columns=COLUMNS
        )
        disagree = sum(r.score > 0 for r in order)
        summary = (
            f"Ranked {len(order)} labelled image(s) by **{run.name}** at score >= {threshold:.2f}: {disagree} "
            "disagree with their labels. **Next in queue** opens them worst first; so does a click on a row."
        )
        if unreadable:
            summary += f" Not readable, left out: {', '.join(unreadable[:5])}."
        return summary, table, [r.image_id for r in order], -1

    def _detections(self, ds, image_id: str, run) -> tuple[list[float], Objects, float, tuple[int, int]]:
        """The run's detections on an image (cached): scores, objects, the image's scale, the size seen."""
        path = ds.image_path(image_id)
        stat = path.stat()
        key = (run.key, str(path), stat.st_mtime_ns, stat.st_size)
        found = self._predictions.get(key)
        if found is not None:
            return found
        rgb = read_image_bgr(path, max_pixels=None)[:, :, ::-1]
        predictor = self.view.predictors.get(run)
        raw = run_model(predictor, rgb, run, self.view.predictors.inference_lock)
        scores, objects = predicted_objects(raw, ds.mask_names)
        found = (scores, objects, raw.scale, raw.image.shape[:2])
        self._predictions.put(key, found)
        return found

    def open_at(self, dataset: str | None, queue: list[str] | None, position: Any) -> tuple[Any, int, str]:
        """(the editor showing the queue's image at `position`, that position, where the queue stands)."""
        queue = list(queue or [])
        if not queue:
            return gr.skip(), -1, "Rank the images first."
        try:
            position = int(position)
        except (TypeError, ValueError):
            position = 0
        if position >= len(queue):
            return gr.skip(), len(queue) - 1, f"End of the queue ({len(queue)} image(s))."
        position = max(position, 0)
        try:
            ds = self.view._dataset(dataset)
            document = json.dumps(self.view.document(ds, queue[position]), separators=(",", ":"))
        except ValueError as e:  # e.g. the image was removed since the ranking
            return gr.skip(), position, f"⚠️ {e}"
        return document, position, f"Image {position + 1} of {len(queue)} in the queue."

    def next(self, dataset: str | None, queue: list[str] | None, position: Any) -> tuple[Any, int, str]:
        try:
            position = int(position) + 1
        except (TypeError, ValueError):
            position = 0
        return self.open_at(dataset, queue, position)

    def select(self, dataset: str | None, queue: list[str] | None, evt: gr.SelectData) -> tuple[Any, int, str]:
        """A click on a row of the table opens its image."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return self.open_at(dataset, queue, row)


def build_review_panel(
    queue: ReviewQueue, dataset: gr.Dropdown, run: gr.Dropdown, threshold: gr.Slider
) -> Callable[[gr.HTML], None]:
    """The review queue's components (inside the current layout block); returns what wires their events to the
    editor, once it exists."""
    gr.Markdown(
        "**Review queue**: where the chosen run disagrees most with the labels (missing or extra objects, low "
        "IoU, a part that does not match its object).",
        elem_classes=["mm-note"],
    )
    rank = gr.Button("Rank images by disagreement", size="sm", elem_id="mm-review-rank")
    summary = gr.Markdown(elem_id="mm-review-summary")
    table = gr.Dataframe(
        pd.DataFrame(columns=COLUMNS),
        interactive=False,
        max_height=260,
        wrap=True,
        column_widths=["12%", "36%", "17%", "35%"],
        elem_id="mm-review-table",
        show_label=False,
    )
    with gr.Row(equal_height=True):
        step = gr.Button("Next in queue", size="sm", scale=1, elem_id="mm-review-next")
        where = gr.Markdown(elem_id="mm-review-where")
    ids = gr.State([])
    position = gr.State(-1)

    def rank_with_progress(dataset_name, run_name, score, progress=gr.Progress()):
        return queue.rank(dataset_name, run_name, score, progress)

    rank.click(rank_with_progress, [dataset, run, threshold], [summary, table, ids, position], api_name="review_rank")

    def wire(editor: gr.HTML) -> None:
        step.click(queue.next, [dataset, ids, position], [editor, position, where], api_visibility="private")
        table.select(queue.select, [dataset, ids], [editor, position, where], api_visibility="private")

    return wire
