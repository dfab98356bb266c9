"""The multimask Gradio app. `build_app` (in `app.blocks`) assembles the tabs; `labeling`, `training` and `runs`
hold the logic behind them and import without Gradio (the training benchmark runs where Gradio is absent).
"""

from __future__ import annotations

__all__ = ["build_app"]


def __getattr__(name: str):
    if name == "build_app":
        from .blocks import build_app

        return build_app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
