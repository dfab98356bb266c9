"""Gradio updates the views share."""

from __future__ import annotations

from typing import Any

import gradio as gr


def choices_keeping(choices: list, current: Any, values: list, fallback: Any) -> Any:
    """New `choices` for a dropdown that leave the page's value alone while `current` (the value this request
    saw) is still among `values`: sending it back could undo a newer change made meanwhile (the page load choosing
    the running run while opening the tab refreshed the list, "Open in Predict" choosing a run while the Predict
    tab refreshed its list); the page then followed an older choice. Else the value moves to `fallback`."""
    return gr.update(choices=choices) if current in values else gr.update(choices=choices, value=fallback)
