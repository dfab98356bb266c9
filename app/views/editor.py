"""The browser-side polygon editor of the Label view: one `gr.HTML` whose JS draws and edits the polygons.

Every click, drag, zoom and undo happens in the browser (static/editor.js); Python is only called through the
component's server functions (`server.<name>(...)` in the JS), never per click:

- ``save_annotations(dataset, image_id, base_revision, instances, status)`` ->
  ``{"ok": True, "revision": int, "status": str, "warnings": [str]}`` or ``{"ok": False, "conflict": bool,
  "error": str}``; called after every completed edit, one call at a time, with the latest state.
- ``load_image(dataset, image_id, direction)`` -> an editor document (a dict) or ``{"ok": False, "error": str}``;
  ``direction`` is None, "prev", "next" or "next_unlabelled" relative to ``image_id``.
- ``copy_previous(dataset, image_id)`` and ``propose(dataset, image_id)`` -> ``{"ok": True, "instances": [...]}``
  or ``{"ok": False, "error": str}``.
- ``assist(dataset, image_id, request)`` -> ``{"ok": True, "parts": [[x1, y1, ...], ...]}`` (a lasso segment:
  ``"points"``) or ``{"ok": False, "error": str}``; the requests are `app.core.assists.service`'s.

The component's value is an *editor document*, a JSON string built by `editor_document` (empty string: nothing
loaded). Python sets it to show an image; the JS sets it to the document it loaded itself (A/D navigation), so
the value names the image on screen, but it does not follow the edits: the store is the truth.
"""

from __future__ import annotations

import functools
import json
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
from gradio import utils as gr_utils

from multimask.data.dataset_json import DEFAULT_MASK_NAMES
from multimask.visualizer import MASK_STYLES, PALETTE, instance_color

from ..core.datasets.payload import ID_RE
from ..core.datasets.records import STATUSES

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
EDITOR_JS = (STATIC_DIR / "editor.js").read_text(encoding="utf-8")
EDITOR_CSS = (STATIC_DIR / "editor.css").read_text(encoding="utf-8")

SERVER_FUNCTION_NAMES = ("save_annotations", "load_image", "copy_previous", "propose", "assist")
PALETTE_SIZE = len(PALETTE)  # instance_color(i) cycles through all of them
SVG_DASHES = {"-": None, "--": "8 5", ":": "2 4"}  # matplotlib line styles as SVG stroke-dasharray

# Static on purpose: the JS adds the drawing into it, and a template that changes with the value would be
# re-rendered by Gradio, wiping what the JS added. Rendered as a Handlebars + JS template string: no backticks,
# no "${", no "{{" here.
HTML_TEMPLATE = """
<div class="mm-editor" tabindex="0">
  <div class="mm-toolbar">
    <span class="mm-group">
      <button type="button" data-act="prev" title="Previous image (A)">&#9664; Prev</button>
      <button type="button" data-act="next" title="Next image (D)">Next &#9654;</button>
      <button type="button" data-act="next_unlabelled" title="Next image not labelled yet">Next unlabelled</button>
    </span>
    <span class="mm-group">
      <button type="button" data-act="new" title="Start a new instance (N)">+ New instance</button>
      <label class="mm-class-label">class <select class="mm-class" title="Class of new instances"></select></label>
    </span>
    <span class="mm-group">
      <button type="button" data-act="undo" title="Undo (Ctrl+Z)">&#8630; Undo</button>
      <button type="button" data-act="redo" title="Redo (Ctrl+Shift+Z, Ctrl+Y)">&#8631; Redo</button>
      <button type="button" data-act="delete" title="Delete the selected vertex or part (Delete)">Delete</button>
      <button type="button" data-act="fit" title="Fit the image to the window (F)">Fit</button>
    </span>
    <span class="mm-group mm-tools">
      <button type="button" data-act="tool" data-tool="polygon" title="Polygon: click its vertices (P)">Polygon</button>
      <button type="button" data-act="tool" data-tool="box"
        title="Box: drag a box around an object; then click to include, Shift+click to exclude (B)">Box</button>
      <button type="button" data-act="tool" data-tool="lasso"
        title="Magnetic lasso: click along an edge, the path follows the image (L)">Lasso</button>
      <button type="button" data-act="tool" data-tool="wand"
        title="Wand: click a region of one colour (W)">Wand</button>
      <button type="button" data-act="tool" data-tool="sam"
        title="Segment-Anything, with a checkpoint of yours: click or drag a box; then include / exclude (S)"
        >SAM</button>
      <label class="mm-tol-label" title="Wand tolerance: how far a colour may differ">tol
        <input type="range" class="mm-tolerance" min="1" max="80" value="12"></label>
      <button type="button" data-act="part"
        title="Propose the second mask inside the active instance's first; then click to include or exclude (I)"
        >Part</button>
      <button type="button" data-act="snap"
        title="Snap the selected outline (a rough one) to the object around it; then include / exclude (G)"
        >Snap</button>
      <button type="button" data-act="clip"
        title="Clip the active instance's later masks to its first (C)">Clip</button>
    </span>
    <span class="mm-group">
      <button type="button" data-act="copy" title="Add the previous image's instances">Copy previous</button>
      <button type="button" data-act="propose" title="Add the chosen model's predictions">Propose</button>
      <button type="button" data-act="done" class="mm-done" title="Mark this image as done">Done</button>
    </span>
    <span class="mm-save" data-state="idle"></span>
    <button type="button" data-act="reload" class="mm-reload" hidden>Reload</button>
  </div>
  <div class="mm-body">
    <div class="mm-stage">
      <svg class="mm-svg" xmlns="http://www.w3.org/2000/svg">
        <defs class="mm-defs"></defs>
        <g class="mm-world"><image class="mm-image" preserveAspectRatio="none"></image><g class="mm-shapes"></g></g>
        <g class="mm-overlay"></g>
        <g class="mm-draw"></g>
      </svg>
      <div class="mm-hint">No image loaded: create or choose a dataset on the left, then add images.</div>
      <div class="mm-mode"></div>
      <button type="button" class="mm-zoom" title="Zoom level; click or F: fit"></button>
      <div class="mm-toast" hidden></div>
    </div>
    <div class="mm-side">
      <div class="mm-info"></div>
      <div class="mm-legend"></div>
      <label class="mm-part-next-label" title="After closing an instance's first mask, the next polygon or assist
        goes to its second mask">
        <input type="checkbox" class="mm-part-next"> then draw its second mask</label>
      <div class="mm-list-title">Instances</div>
      <ol class="mm-list"></ol>
      <div class="mm-warnings"></div>
      <details class="mm-help">
        <summary>Keys and mouse</summary>
        <ul>
          <li>Click: add a vertex; click the first vertex, Enter or double-click: close; Esc: cancel;
            Backspace: remove the last vertex; Shift+click: always add a vertex</li>
          <li>Drag a vertex; click or drag a midpoint to insert one; Alt+click or double-click an edge: insert
            a vertex there</li>
          <li>Click an outline to select its part; drag inside the selected part to move it;
            Delete: the selected vertex (or the part); Shift+Delete: the part</li>
          <li>N: new instance; 1 / 2 / Tab: mask slot; H: hide or show the active instance</li>
          <li>Tools: P polygon; B box (drag around an object); L magnetic lasso; W wand (click a region);
            S Segment-Anything (a click or a box; needs a checkpoint). After Box, SAM or Part: click to include,
            Shift+click to exclude; Enter or Esc: done</li>
          <li>I: the active instance's second mask proposed inside its first; C: clip it to the first;
            G: snap the selected outline (drawn roughly) to the object around it</li>
          <li>Ctrl+Z, Ctrl+Shift+Z / Ctrl+Y: undo, redo</li>
          <li>Wheel: zoom; middle or right drag, or Space+drag: pan; F: fit</li>
          <li>A / D: previous / next image</li>
        </ul>
      </details>
    </div>
  </div>
</div>
"""


def palette(n: int) -> list[list[int]]:
    """The first `n` instance colours as [r, g, b] ints in 0..255: the prediction overlay's colours."""
    return [[int(round(float(c) * 255)) for c in instance_color(i)] for i in range(max(int(n), 0))]


def mask_styles() -> list[dict[str, Any]]:
    """How the editor draws each mask slot, as the prediction overlay does (`multimask.visualizer.MASK_STYLES`):
    [{"fill": alpha of the filled area, "hatch": bool, "dash": SVG dash array or None}] (the last one repeats)."""
    return [{"fill": alpha, "hatch": bool(hatch), "dash": SVG_DASHES[line]} for alpha, hatch, line in MASK_STYLES]


def editor_document_dict(
    *,
    dataset: str,
    image_id: str,
    image_url: str,
    width: int,
    height: int,
    classes: Sequence[str],
    mask_names: Sequence[str] = DEFAULT_MASK_NAMES,
    instances: Sequence[Mapping[str, Any]] = (),
    revision: int = 0,
    status: str = "unlabelled",
    rules: Mapping[str, Any] | None = None,
    position: int = 0,
    count: int = 1,
    file_name: str | None = None,
) -> dict[str, Any]:
    """The editor document as a dict (what `load_image` returns); see `editor_document`."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if not mask_names:
        raise ValueError("mask_names must not be empty")
    rules = dict(rules or {})
    rules.setdefault("secondary_inside_primary", False)
    return {
        "dataset": str(dataset),
        "image_id": str(image_id),
        "image_url": str(image_url),
        "width": int(width),
        "height": int(height),
        "classes": [str(c) for c in classes],
        "mask_names": [str(m) for m in mask_names],
        "rules": {
            "secondary_inside_primary": bool(rules["secondary_inside_primary"]),
            **{k: v for k, v in rules.items() if k != "secondary_inside_primary"},
        },
        "revision": int(revision),
        "status": status,
        "instances": [dict(inst) for inst in instances],
        "palette": palette(PALETTE_SIZE),
        # what the editor checks and draws by, sent so that the JS holds no copy of them
        "statuses": list(STATUSES),
        "id_pattern": ID_RE.pattern,
        "mask_styles": mask_styles(),
        "position": int(position),
        "count": int(count),
        "file_name": str(file_name or image_id),
    }


def editor_document(**kwargs: Any) -> str:
    """The editor document (the component's value) as a JSON string.

    Keyword arguments: dataset, image_id, image_url (what the browser fetches, e.g. "/gradio_api/file=<path>"),
    width and height (the image's original size: every coordinate is in these pixels), classes, mask_names
    (default primary/secondary), instances ([{"id", "class", "masks": {name: [[x1, y1, ...], ...]}}]),
    revision (of the stored annotations, sent back as base_revision when saving), status
    ("unlabelled" | "in_progress" | "done"), rules ({"secondary_inside_primary": bool}), position (0-based index
    of the image in the dataset), count (number of images) and file_name (shown; default: the image id).
    """
    return json.dumps(editor_document_dict(**kwargs), separators=(",", ":"))


def _request_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of `fn`'s parameter typed `gr.Request` (or `gr.Request | None`), if any."""
    try:
        hints = gr_utils.get_type_hints(fn)
    except Exception:  # noqa: BLE001 (unresolvable annotations: no request then)
        return None
    for name, hint in hints.items():
        if hint is gr.Request or gr.Request in typing.get_args(hint):
            return name
    return None


async def _as_gradio_request(raw: Any) -> gr.Request | None:
    """A `gr.Request` with the session hash for a server function call.

    Gradio hands server functions the raw Starlette request; the session hash is only in its JSON body, which
    Gradio has read already (`Request.json()` returns it again without reading the stream). Without it,
    `session_hash` is None.
    """
    if raw is None or isinstance(raw, gr.Request):
        return raw
    try:
        body = await raw.json()
    except (ValueError, RuntimeError):  # not JSON, or a body that cannot be read again
        body = None
    session_hash = body.get("session_hash") if isinstance(body, dict) else None
    return gr.Request(request=raw, session_hash=session_hash if isinstance(session_hash, str) else None)


def _spread_arguments(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a Gradio server function called from JS as `server.name(a, b, c)`.

    Gradio passes a JS call's arguments to Python as ONE list (a single argument: as itself); this spreads them
    into `fn`'s positional parameters. A parameter of `fn` typed `gr.Request` gets the request, as in event
    handlers. An exception becomes `{"ok": False, "error": ...}` (plus `"conflict": False` for saves) so that
    the browser can show it, rather than an HTTP 500 without a message. `fn` runs in a worker thread.
    """
    name, request_param = fn.__name__, _request_parameter(fn)

    async def call(args: Any, request: gr.Request = None) -> Any:
        args = args if isinstance(args, list) else [args]
        kwargs = {request_param: await _as_gradio_request(request)} if request_param else {}
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        except Exception as e:  # noqa: BLE001 (reported to the browser)
            logger.exception("editor server function %s failed", name)
            reply: dict[str, Any] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            if name == "save_annotations":
                reply["conflict"] = False
            return reply

    call.__name__ = call.__qualname__ = name
    call.__doc__ = fn.__doc__
    return call


def make_editor(
    server_functions: Sequence[Callable[..., Any]], *, elem_id: str = "mm-editor", value: str = "", **kwargs: Any
) -> gr.HTML:
    """The polygon editor: a `gr.HTML` whose value is an editor document (JSON string, "" = nothing loaded).

    `server_functions` are plain Python functions named save_annotations, load_image, copy_previous, propose
    and assist (see the module docstring for their contract); the browser calls them with positional arguments.
    A missing one only disables what needs it (e.g. no `propose`: the Propose button reports it).
    Further keyword arguments go to `gr.HTML`.
    """
    fns = []
    for fn in server_functions:
        name = getattr(fn, "__name__", None)
        if not name or not callable(fn):
            raise TypeError(f"server functions must be named functions, got {fn!r}")
        if name not in SERVER_FUNCTION_NAMES:
            logger.warning("editor server function %r is not one the editor calls %s", name, SERVER_FUNCTION_NAMES)
        fns.append(_spread_arguments(fn))
    return gr.HTML(
        value=value,
        html_template=HTML_TEMPLATE,
        css_template=EDITOR_CSS,
        js_on_load=EDITOR_JS,
        server_functions=fns,
        apply_default_css=False,
        elem_id=elem_id,
        elem_classes=["mm-editor-block"],
        **kwargs,
    )
