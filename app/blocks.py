"""The multimask Gradio app: `build_app(data_root, runs_root)` returns the Blocks that `launch.py` serves."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .labeling.view import LabelView, build_label_tab
from .predict_view import PredictorCache, PredictView, build_predict_tab

__all__ = ["build_app"]

TITLE = "multimask"


def build_app(data_root: str | Path = "datasets", runs_root: str | Path = "runs",
              import_roots: list[str | Path] | None = None) -> gr.Blocks:
    """The app's Blocks: one tab per task. Theme, css and head go to `launch()` (Gradio 6).

    `data_root` holds the labelling datasets (its images are served to the editor); `import_roots` are further
    server folders the Label tab may read images and datasets from.
    """
    data_root = Path(data_root).resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([str(data_root)])
    predictors = PredictorCache()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nMask R-CNN with several named masks per instance.")
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                demo.label_view = LabelView(data_root, runs_root, import_roots, predictors)
                demo.editor = build_label_tab(demo, demo.label_view)
            with gr.Tab("Predict", id="predict"):
                demo.predict_view = build_predict_tab(demo, runs_root, PredictView(runs_root, predictors))
            # The "Train" tab is added here in its own issue.
    demo.data_root, demo.runs_root = data_root, Path(runs_root)
    return demo
