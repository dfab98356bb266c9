"""The multimask Gradio app: `build_app(data_root, runs_root)` returns the Blocks that `launch.py` serves."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .predict_view import build_predict_tab

__all__ = ["build_app"]

TITLE = "multimask"


def build_app(data_root: str | Path = "datasets", runs_root: str | Path = "runs") -> gr.Blocks:
    """The app's Blocks: one tab per task. Theme, css and head go to `launch()` (Gradio 6).

    `data_root` is where datasets live; the Label and Train tabs will use it.
    """
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nMask R-CNN with several named masks per instance.")
        with gr.Tabs():  # noqa: SIM117 (more tabs come)
            with gr.Tab("Predict", id="predict"):
                demo.predict_view = build_predict_tab(demo, runs_root)
            # The "Label" (uses data_root) and "Train" tabs are added here in later issues.
    demo.data_root, demo.runs_root = Path(data_root), Path(runs_root)
    return demo
