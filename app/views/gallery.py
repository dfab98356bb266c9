"""The Label tab's image gallery: thumbnails with a status badge and the file name, as one `gr.HTML`.

Its value is the JSON of `{"dataset": name, "items": [{"id", "name", "status", "thumb"}, ...]}` (one page). A
click opens the image in the polygon editor on the page (`window.mmEditors[...].open(id)`): no server round trip
of its own. The editor tells the page which image it shows and its status (the `mm-editor-image` DOM event), so
the gallery marks the current image and updates its badge as the editor autosaves.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

STATIC_DIR = Path(__file__).parent / "static"
GALLERY_JS = (STATIC_DIR / "gallery.js").read_text(encoding="utf-8")
GALLERY_CSS = (STATIC_DIR / "gallery.css").read_text(encoding="utf-8")
STATUS_LABELS = {"unlabelled": "unlabelled", "in_progress": "in progress", "done": "done"}

# Static: the JS fills it from the value (a template that changed would be re-rendered, wiping the JS's work).
GALLERY_TEMPLATE = (
    '<div class="mm-gallery" data-editor="mm-editor"><div class="mm-gallery-grid"></div>'
    '<div class="mm-gallery-empty">No images yet: add some below.</div></div>'
)


def gallery_value(dataset: str | None, entries: list[dict], thumbs: list[Path]) -> str:
    """The gallery's value for index entries (`id`, `file_name`, `status`) and their thumbnail files."""
    return json.dumps(
        {
            "dataset": dataset or "",
            "status_labels": STATUS_LABELS,
            "items": [
                {"id": e["id"], "name": e["file_name"], "status": e["status"], "thumb": f"/gradio_api/file={t}"}
                for e, t in zip(entries, thumbs)
            ],
        },
        separators=(",", ":"),
    )


def make_gallery(**kwargs) -> gr.HTML:
    """The gallery component (its value: see `gallery_value`)."""
    return gr.HTML(
        value=gallery_value(None, [], []),
        html_template=GALLERY_TEMPLATE,
        css_template=GALLERY_CSS,
        js_on_load=GALLERY_JS,
        apply_default_css=False,
        elem_id="mm-gallery",
        **kwargs,
    )
