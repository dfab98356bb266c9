"""End-to-end tests of the browser polygon editor (app/views/editor.py + app/views/static/editor.js).

A small Gradio app serves the editor over the Label view's server functions and a real dataset on disk;
headless Chromium (Debian's, driven by Python playwright) clicks, drags and types on it, and the tests check what
the store saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import re
import shutil
import statistics
import threading
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from app.core.datasets.payload import ID_RE
from app.core.datasets.records import STATUSES
from app.views.editor import (
    PALETTE_SIZE,
    _spread_arguments,
    editor_document,
    make_editor,
    palette,
)
from app.views.label import LabelView
from multimask.visualizer import instance_color
from tests.conftest import serve_app

W, H = 640, 480
DATASET = "toy"
CLASSES = ["cat", "dog"]
MASK_NAMES = ["primary", "secondary"]
STAGE_HEIGHT = 300  # px: the 480 px high image is shown at about 0.62x before zooming
SCREENSHOT_COPY = Path("/tmp/editor_screenshot.png")


# ---- the real Label view and store behind the server functions ------------------------------------------------
class Harness:
    """The Label view's server functions over a real dataset on disk, with hooks a test may set: a delay before
    each save, an error every save reports, and what Propose returns (a trained model's proposals are tested in
    test_label_view.py and test_label_e2e.py); saves are logged. `reset` starts a fresh dataset of three images."""

    def __init__(self, data_root: Path, images: list[bytes]):
        self.view = LabelView(data_root, data_root / "runs")
        self.images = images
        self.lock = threading.Lock()
        self.count = 0
        self.reset()

    def reset(self):
        with self.lock:
            self.count += 1
            self.dataset = f"{DATASET}-{self.count}"
            ds = self.view.store.create(self.dataset, CLASSES, MASK_NAMES)
            self.ids = [ds.add_image_bytes(f"img{k}.png", data)["id"] for k, data in enumerate(self.images)]
            self.saves: list[tuple] = []
            self.proposals: list[dict] | str = []
            self.delay = 0.0  # seconds each save takes
            self.fail: str | None = None  # an error every save reports
            self.propose_sessions: list[str | None] = []
            self.assist_delay = 0.0  # seconds each assist request waits before it runs
            self.assist_requests: list[dict] = []

    def ds(self):
        return self.view.store.open(self.dataset)

    def document_json(self, k: int) -> str:
        return json.dumps(self.view.document(self.ds(), self.ids[k]))

    # The server functions (their names are the contract).
    def save_annotations(self, dataset, image_id, base_revision, instances, status):
        time.sleep(self.delay)
        with self.lock:
            self.saves.append((image_id, base_revision, copy.deepcopy(instances), status))
            if self.fail:
                return {"ok": False, "conflict": False, "error": self.fail}
        return self.view.save_annotations(dataset, image_id, base_revision, instances, status)

    def load_image(self, dataset, image_id, direction):
        return self.view.load_image(dataset, image_id, direction)

    def copy_previous(self, dataset, image_id):
        return self.view.copy_previous(dataset, image_id)

    def assist(self, dataset, image_id, request):
        time.sleep(self.assist_delay)
        with self.lock:
            self.assist_requests.append(copy.deepcopy(request))
        return self.view.assist(dataset, image_id, request)

    def propose(self, dataset, image_id, request: gr.Request | None = None):
        with self.lock:
            self.propose_sessions.append(getattr(request, "session_hash", None))
            if isinstance(self.proposals, str):
                raise RuntimeError(self.proposals)
            return {"ok": True, "instances": copy.deepcopy(self.proposals)}


@contextlib.contextmanager
def quiet_editor_log():
    """Silences the editor's log while a test makes a server function fail on purpose."""
    log = logging.getLogger("app.views.editor")
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = False


# ---- fixtures -----------------------------------------------------------------------------------------------
OBJECT_CIRCLE = ((300, 240), 120)  # every test image: an object (a disc) with a part (a rectangle) inside it
PART_RECT = ((260, 200), (340, 290))


def _image_png(seed: int) -> bytes:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 255 // W), (yy * 255 // H), np.full_like(xx, 60 + 60 * seed)], axis=2).astype(np.uint8)
    cv2.circle(img, *OBJECT_CIRCLE, (40, 160, 220), -1)
    cv2.rectangle(img, *PART_RECT, (200, 80, 60), -1)
    return cv2.imencode(".png", img)[1].tobytes()


def truth(kind: str) -> np.ndarray:
    """(H, W) bool: the test images' object ("primary") or part ("secondary")."""
    mask = np.zeros((H, W), np.uint8)
    if kind == "primary":
        cv2.circle(mask, *OBJECT_CIRCLE, 1, -1)
    else:
        cv2.rectangle(mask, *PART_RECT, 1, -1)
    return mask.astype(bool)


def iou(parts: list, kind: str) -> float:
    """IoU of stored polygon parts (flat lists, pixel-centre coordinates) with the truth."""
    mask = np.zeros((H, W), np.uint8)
    for part in parts:
        cv2.fillPoly(mask, [np.round(np.asarray(part).reshape(-1, 2) - 0.5).astype(np.int32)], 1)
    t = truth(kind)
    return float((mask.astype(bool) & t).sum() / (mask.astype(bool) | t).sum())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    store = Harness(tmp_path_factory.mktemp("datasets"), [_image_png(k) for k in range(3)])
    with gr.Blocks() as demo:
        gr.Textbox(label="notes", elem_id="notes")
        editor = make_editor(
            [store.save_annotations, store.load_image, store.copy_previous, store.propose, store.assist]
        )
        show_img2 = gr.Button("show img2", elem_id="show-img2")  # Python setting the value (e.g. a gallery)
        demo.load(lambda: store.document_json(0), outputs=editor)
        show_img2.click(lambda: store.document_json(2), outputs=editor)
    server = serve_app(demo, data_root=store.view.store.root, allowed_paths=[str(store.view.store.root)])
    yield store, f"{server.local_url}/"
    server.close()


@pytest.fixture
def page(app, browser):
    store, url = app
    store.reset()
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    open_editor(pg, url)
    yield pg
    ctx.close()
    assert not errors, errors


# ---- helpers ------------------------------------------------------------------------------------------------
def open_editor(pg, url):
    pg.goto(url)
    pg.add_style_tag(
        content=f"#mm-editor .mm-stage {{ height: {STAGE_HEIGHT}px !important; min-height: 0 !important; }}"
    )
    pg.wait_for_function("() => window.mmEditor && window.mmEditor.state().image_id")
    # Fitted to the 300 px stage (the editor refits when its stage is resized).
    pg.wait_for_function(f"""() => {{ const h = document.querySelector('#mm-editor .mm-image')
        .getBoundingClientRect().height; return h > 100 && h <= {STAGE_HEIGHT}; }}""")


def state(pg) -> dict:
    return pg.evaluate("() => window.mmEditor.state()")


def wait_saved(pg):
    pg.wait_for_function("() => { const s = window.mmEditor.state(); return !s.saving && s.save === 'saved'; }")


def wait_store(store, predicate, k=0, timeout=60.0) -> dict:
    """The stored record of the k-th image once `predicate(record)` holds (saves run in the background)."""
    deadline = time.monotonic() + timeout
    while not predicate(rec := stored(store, k)):
        assert time.monotonic() < deadline, f"waited {timeout} s for the saved record of image {k}; last: {rec}"
        time.sleep(0.02)
    return rec


def image_rect(pg) -> dict:
    """Where the image is on screen: the test's own measure of the displayed scale, independent of the JS."""
    return pg.evaluate("""() => { const r = document.querySelector('#mm-editor .mm-image').getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height}; }""")


def to_screen(rect, x, y):
    return rect["left"] + x * rect["width"] / W, rect["top"] + y * rect["height"] / H


def to_image(rect, sx, sy):
    return (sx - rect["left"]) * W / rect["width"], (sy - rect["top"]) * H / rect["height"]


def click_at(pg, rect, x, y) -> tuple[float, float]:
    """Click where image pixel (x, y) is shown, at whole screen pixels; returns the image pixel clicked."""
    sx, sy = (round(v) for v in to_screen(rect, x, y))
    pg.mouse.click(sx, sy)
    return to_image(rect, sx, sy)


def drag(pg, rect, start, end, steps=6):
    """Drag with the left button between image pixels (at whole screen pixels); returns the image pixels
    actually pressed and released at."""
    s, e = ([round(v) for v in to_screen(rect, *p)] for p in (start, end))
    pg.mouse.move(*s)
    pg.mouse.down()
    pg.mouse.move(*e, steps=steps)
    pg.mouse.up()
    return to_image(rect, *s), to_image(rect, *e)


def square(pg, rect, x, y, size=40):
    """Draw a square polygon by its four corners (image pixels) and close it with Enter."""
    for dx, dy in [(0, 0), (size, 0), (size, size), (0, size)]:
        click_at(pg, rect, x + dx, y + dy)
    pg.keyboard.press("Enter")


def pairs(flat):
    return [tuple(flat[i : i + 2]) for i in range(0, len(flat), 2)]


def assert_points(flat, expected, tol=1.0):
    got = pairs(flat)
    assert len(got) == len(expected), (got, expected)
    for (gx, gy), (ex, ey) in zip(got, expected):
        assert abs(gx - ex) <= tol and abs(gy - ey) <= tol, (got, expected)


def stored(store, k=0) -> dict:
    """The stored record of the k-th image: {"image_id", "revision", "status", "instances"}."""
    return store.ds().load(store.ids[k])


def wait_image(pg, store, k: int) -> None:
    """Wait until the editor shows the k-th image."""
    pg.wait_for_function("id => window.mmEditor && window.mmEditor.state().image_id === id", arg=store.ids[k])


def polygon_count(pg) -> int:
    return pg.locator("#mm-editor .mm-shapes polygon").count()


# ---- tests --------------------------------------------------------------------------------------------------
def test_python_helpers():
    assert palette(3) == [[int(round(float(c) * 255)) for c in instance_color(i)] for i in range(3)]
    assert len(palette(PALETTE_SIZE)) == PALETTE_SIZE and palette(0) == []
    colours = palette(PALETTE_SIZE)
    assert all(max(c) - min(c) >= 12 for c in colours), "no grey, black or white instance colour"
    assert colours[0] != colours[1] != colours[2] != colours[0]
    doc = json.loads(editor_document(dataset="d", image_id="a", image_url="/x.png", width=4, height=3, classes=["c"]))
    assert doc["mask_names"] == ["primary", "secondary"] and doc["status"] == "unlabelled" and doc["revision"] == 0
    assert doc["rules"] == {"secondary_inside_primary": False} and doc["instances"] == []
    assert len(doc["palette"]) == PALETTE_SIZE and doc["position"] == 0 and doc["count"] == 1
    # what the JS checks and draws by comes in the document, from the Python side's own constants
    assert (
        doc["statuses"] == list(STATUSES)
        and re.fullmatch(doc["id_pattern"], "i1")
        and doc["id_pattern"] == ID_RE.pattern
    )
    assert [(m["fill"], m["hatch"], m["dash"]) for m in doc["mask_styles"]] == [
        (0.45, False, None),
        (0.0, True, None),
        (0.0, False, "8 5"),
        (0.0, False, "2 4"),
    ]
    with pytest.raises(ValueError):
        editor_document(dataset="d", image_id="a", image_url="", width=4, height=3, classes=[], status="bad")

    def save_annotations(dataset, image_id, base_revision, instances, status):
        if base_revision < 0:
            raise RuntimeError("boom")
        return {"ok": True, "revision": base_revision + 1, "status": status, "warnings": []}

    fn = _spread_arguments(save_annotations)
    assert fn.__name__ == "save_annotations"
    assert asyncio.run(fn(["d", "a", 1, [], "done"]))["revision"] == 2  # Gradio passes the JS arguments as one list
    with quiet_editor_log():
        reply = asyncio.run(fn(["d", "a", -1, [], "done"]))
        assert reply == {"ok": False, "error": "RuntimeError: boom", "conflict": False}

    def propose(dataset, image_id, request: gr.Request | None = None):
        return {"ok": True, "instances": [], "request": request}

    class RawRequest:  # what Gradio hands a server function: Starlette's request, its JSON body read
        async def json(self):
            return {"session_hash": "abc", "data": ["d", "a"]}

    assert asyncio.run(_spread_arguments(propose)(["d", "a"], RawRequest()))["request"].session_hash == "abc"
    assert asyncio.run(_spread_arguments(propose)(["d", "a"]))["request"] is None
    html = make_editor([save_annotations], elem_id="ed")
    assert html.elem_id == "ed" and html.value == "" and hasattr(html, "save_annotations")
    with pytest.raises(TypeError), quiet_editor_log():
        make_editor([save_annotations, 3])


@pytest.mark.slow
def test_draw_edit_undo_reload_conflict(app, page, tmp_path):
    store, url = app
    pg = page
    # The image is shown smaller than its natural size, then zoomed once at the stage's centre.
    assert pg.evaluate("() => Object.keys(window.mmEditors)") == ["mm-editor"]
    rect0 = image_rect(pg)
    assert 0.5 < rect0["width"] / W < 0.75, rect0
    cx, cy = to_screen(rect0, W / 2, H / 2)
    pg.mouse.move(cx, cy)
    pg.mouse.wheel(0, -200)
    pg.wait_for_function(
        f"() => document.querySelector('#mm-editor .mm-image').getBoundingClientRect().width > {rect0['width'] + 20}"
    )
    rect = image_rect(pg)
    scale = rect["width"] / W
    assert 0.7 < scale < 0.98 and abs(rect["height"] / H - scale) < 1e-3, rect

    # Instance 1: a primary polygon (4 clicks + a click on the first point) ...
    prim = [click_at(pg, rect, x, y) for x, y in [(200, 150), (400, 140), (420, 330), (190, 340)]]
    assert state(pg)["drawing"] == 4
    click_at(pg, rect, 201, 151)  # within the snap distance of the first point: closes
    wait_saved(pg)
    rec = stored(store)
    assert rec["revision"] == 1 and rec["status"] == "in_progress" and len(rec["instances"]) == 1
    inst = rec["instances"][0]
    assert inst["class"] == "cat"
    assert_points(inst["masks"]["primary"][0], prim)
    assert inst["masks"]["secondary"] == []

    # ... and a secondary one: key 2, 3 clicks + Enter.
    pg.keyboard.press("2")
    sec = [click_at(pg, rect, x, y) for x, y in [(250, 200), (350, 200), (300, 300)]]
    assert state(pg)["drawing"] == 3 and state(pg)["mask_name"] == "secondary"
    pg.keyboard.press("Enter")
    wait_saved(pg)
    inst = stored(store)["instances"][0]
    assert_points(inst["masks"]["secondary"][0], sec)
    assert_points(inst["masks"]["primary"][0], prim)
    assert stored(store)["revision"] == 2

    # Drag a vertex; undo and redo follow in the store.
    _, moved = drag(pg, rect, prim[1], (430, 170))
    wait_saved(pg)
    after_drag = prim[:1] + [moved] + prim[2:]
    assert_points(stored(store)["instances"][0]["masks"]["primary"][0], after_drag)
    assert abs(moved[0] - 430) < 1.5 and abs(moved[1] - 170) < 1.5
    pg.keyboard.press("Control+z")
    wait_saved(pg)
    assert_points(stored(store)["instances"][0]["masks"]["primary"][0], prim)
    pg.keyboard.press("Control+Shift+z")
    wait_saved(pg)
    assert_points(stored(store)["instances"][0]["masks"]["primary"][0], after_drag)
    revision = stored(store)["revision"]
    assert revision == 5

    # Insert a vertex from an edge's midpoint handle, then delete it (selected + Delete).
    mid = ((after_drag[0][0] + after_drag[1][0]) / 2, (after_drag[0][1] + after_drag[1][1]) / 2)
    click_at(pg, rect, *mid)
    wait_saved(pg)
    five = stored(store)["instances"][0]["masks"]["primary"][0]
    assert_points(five, after_drag[:1] + [mid] + after_drag[1:])
    pg.keyboard.press("Delete")
    wait_saved(pg)
    assert_points(stored(store)["instances"][0]["masks"]["primary"][0], after_drag)
    # A triangle keeps its 3 points: selecting one of its vertices and pressing Delete changes nothing.
    click_at(pg, rect, *sec[2])
    assert state(pg)["mask_name"] == "secondary"
    pg.keyboard.press("Delete")
    pg.wait_for_timeout(150)
    assert len(stored(store)["instances"][0]["masks"]["secondary"][0]) == 6
    assert stored(store)["revision"] == revision + 2

    # Select the primary by clicking its outline (away from the handles), then drag its interior: it moves.
    a, b = after_drag[2], after_drag[3]
    click_at(pg, rect, a[0] + (b[0] - a[0]) * 0.3, a[1] + (b[1] - a[1]) * 0.3)
    assert state(pg)["mask_name"] == "primary"
    start, end = drag(pg, rect, (220, 300), (232, 290))
    dx, dy = end[0] - start[0], end[1] - start[1]
    wait_saved(pg)
    assert_points(stored(store)["instances"][0]["masks"]["primary"][0], [(x + dx, y + dy) for x, y in after_drag])
    pg.keyboard.press("Control+z")
    wait_saved(pg)
    assert_points(stored(store)["instances"][0]["masks"]["primary"][0], after_drag)
    # Delete a whole part: select the triangle's outline, Delete; Ctrl+Z brings it back.
    click_at(pg, rect, (sec[0][0] + sec[1][0]) / 2 + 20, (sec[0][1] + sec[1][1]) / 2)
    assert state(pg)["mask_name"] == "secondary"
    pg.keyboard.press("Delete")
    wait_saved(pg)
    assert stored(store)["instances"][0]["masks"]["secondary"] == []
    pg.keyboard.press("Control+z")
    wait_saved(pg)
    assert_points(stored(store)["instances"][0]["masks"]["secondary"][0], sec)

    # N: a second instance, class dog, closed by a double-click.
    pg.select_option("#mm-editor select.mm-class", "dog")
    pg.keyboard.press("n")
    assert state(pg)["active"] == -1 and state(pg)["mask_name"] == "primary"
    second = [click_at(pg, rect, x, y) for x, y in [(470, 150), (560, 160), (550, 300)]]
    sx, sy = (round(v) for v in to_screen(rect, 480, 290))
    pg.mouse.dblclick(sx, sy)
    second.append(to_image(rect, sx, sy))
    wait_saved(pg)
    rec = stored(store)
    assert len(rec["instances"]) == 2 and rec["instances"][1]["class"] == "dog"
    assert_points(rec["instances"][1]["masks"]["primary"][0], second)
    assert rec["instances"][0]["id"] != rec["instances"][1]["id"]
    assert polygon_count(pg) == 3

    # Hide and show instance 1: view only, nothing saved.
    revision = stored(store)["revision"]
    eye = pg.locator("#mm-editor .mm-item").nth(0).locator(".mm-eye")
    eye.click()
    assert polygon_count(pg) == 1 and state(pg)["hidden"] == [rec["instances"][0]["id"]]
    eye = pg.locator("#mm-editor .mm-item").nth(0).locator(".mm-eye")
    eye.click()
    assert polygon_count(pg) == 3 and state(pg)["hidden"] == []
    pg.wait_for_timeout(200)
    assert stored(store)["revision"] == revision

    # A screenshot with two instances for the humans.
    shot = tmp_path / "editor.png"
    pg.mouse.move(5, 5)
    pg.locator("#mm-editor").screenshot(path=str(shot))
    shutil.copy(shot, SCREENSHOT_COPY)

    # Click-to-vertex latency: a 14-vertex polygon away from the others, then Esc (never saved: not closed).
    for k in range(14):
        a = 2 * math.pi * k / 14
        click_at(pg, rect, 100 + 60 * math.cos(a), 250 + 100 * math.sin(a))
    assert state(pg)["drawing"] == 14
    pg.wait_for_timeout(100)
    assert stored(store)["revision"] == revision
    pg.keyboard.press("Escape")
    assert state(pg)["drawing"] == 0
    lat = pg.evaluate("() => window.mmEditor.lastLatencies.slice()")
    assert len(lat) >= 20
    print(
        f"\nclick-to-vertex latency over {len(lat)} clicks: median {statistics.median(lat):.1f} ms, "
        f"max {max(lat):.1f} ms"
    )
    # The 16 ms target is checked by reading this figure, not asserted: timings belong to benchmarks.
    assert all(0 <= v < 5000 for v in lat)

    # Reload: the editor shows the stored state.
    expected = stored(store)
    pg.reload()
    wait_image(pg, store, 0)
    s = state(pg)
    assert s["instances"] == expected["instances"] and s["revision"] == expected["revision"]
    assert s["status"] == "in_progress" and polygon_count(pg) == 3
    assert pg.locator("#mm-editor .mm-item:not(.mm-new)").count() == 2

    # A save on a revision that changed behind the editor's back: conflict shown, nothing overwritten.
    ahead = stored(store)  # another tab saves the image
    store.ds().save(store.ids[0], ahead["revision"], ahead["instances"], ahead["status"])
    behind = stored(store)
    pg.locator("#mm-editor .mm-item").nth(1).locator("select").select_option("cat")
    pg.wait_for_function("() => window.mmEditor.state().save === 'conflict'")
    assert "conflict" in pg.inner_text("#mm-editor .mm-save")
    assert pg.is_visible("#mm-editor .mm-reload")
    assert stored(store) == behind
    pg.click("#mm-editor .mm-reload")
    pg.wait_for_function("() => window.mmEditor.state().save === 'saved'")
    s = state(pg)
    assert s["revision"] == behind["revision"] and s["instances"] == behind["instances"]
    assert s["instances"][1]["class"] == "dog"


def test_navigation_copy_propose_done_and_keys_scope(app, page):
    store, url = app
    pg = page
    rect = image_rect(pg)
    # Typing in a text box elsewhere on the page does not reach the editor.
    pg.click("#notes textarea")
    pg.keyboard.type("nd2")
    assert state(pg)["image_id"] == store.ids[0] and state(pg)["slot"] == 0
    # Draw one instance on img0 (the editor needs focus or hover for keys: clicking it gives both).
    pts = [click_at(pg, rect, x, y) for x, y in [(100, 100), (200, 100), (150, 200)]]
    pg.keyboard.press("Enter")
    wait_saved(pg)
    # A click off the image starts a vertex on its border (Esc drops it); a vertex dragged off the image stops
    # at its border.
    outside = rect["left"] - 60
    pg.mouse.click(outside, rect["top"] + 100)
    assert state(pg)["drawing"] == 1
    assert pg.evaluate("() => window.mmEditor.drawingPoints()")[0][0] == 0
    pg.keyboard.press("Escape")
    assert state(pg)["drawing"] == 0
    drag(pg, rect, pts[2], to_image(rect, outside, rect["top"] + 120))
    rec = wait_store(store, lambda r: r["revision"] == 2)
    assert rec["instances"][0]["masks"]["primary"][0][4] == 0
    pg.keyboard.press("Control+z")
    wait_store(store, lambda r: r["revision"] == 3)
    # Right-drag pans, F fits again; Tab cycles the mask slot.
    cx, cy = to_screen(rect, 320, 240)
    pg.mouse.move(cx, cy)
    pg.mouse.down(button="right")
    pg.mouse.move(cx + 50, cy + 30, steps=4)
    pg.mouse.up(button="right")
    panned = image_rect(pg)
    assert abs(panned["left"] - rect["left"] - 50) < 1 and abs(panned["top"] - rect["top"] - 30) < 1
    pg.keyboard.press("f")
    assert abs(image_rect(pg)["left"] - rect["left"]) < 0.5
    pg.keyboard.press("Tab")
    assert state(pg)["mask_name"] == "secondary"
    pg.keyboard.press("Tab")
    assert state(pg)["mask_name"] == "primary"
    # D: next image (saved first), A: back. The next image starts with a new instance in the first slot.
    pg.keyboard.press("Tab")
    pg.keyboard.press("d")
    wait_image(pg, store, 1)
    assert state(pg)["instances"] == [] and pg.input_value("#notes textarea") == "nd2"
    assert state(pg)["mask_name"] == "primary" and state(pg)["target"] == -1
    pg.keyboard.press("a")
    wait_image(pg, store, 0)
    assert_points(state(pg)["instances"][0]["masks"]["primary"][0], pts)
    # Next unlabelled skips nothing here (img1 is unlabelled); copy the previous image's instances there.
    pg.click("#mm-editor button[data-act=next_unlabelled]")
    wait_image(pg, store, 1)
    pg.click("#mm-editor button[data-act=copy]")
    copied = wait_store(store, lambda r: r["instances"], 1)["instances"]
    assert len(copied) == 1 and copied[0]["masks"] == stored(store, 0)["instances"][0]["masks"]
    pg.keyboard.press("Control+z")
    wait_store(store, lambda r: not r["instances"], 1)
    # Propose: the proposals come in as one edit, with an unknown class mapped and a colliding id renamed.
    with store.lock:
        store.proposals = [
            {"id": "p1", "class": "cat", "masks": {"primary": [[10, 10, 60, 10, 60, 60]], "secondary": []}},
            {
                "id": "p1",
                "class": "zebra",
                "masks": {
                    "primary": [[300, 300, 350, 300, 350, 350, 300, 350]],
                    "secondary": [[310, 310, 340, 310, 340, 340]],
                },
            },
            {"id": "p3", "class": "cat", "masks": {"primary": [[1, 2, float("nan"), 4]], "secondary": []}},
        ]
    pg.click("#mm-editor button[data-act=propose]")
    got = wait_store(store, lambda r: r["instances"], 1)["instances"]
    assert len(got) == 2 and got[0]["id"] == "p1" and got[1]["id"] != "p1"
    assert got[1]["class"] in CLASSES and got[1]["masks"]["secondary"] == [[310, 310, 340, 310, 340, 340]]
    assert state(pg)["undo"] == 1
    assert store.propose_sessions and all(store.propose_sessions)  # a gr.Request parameter gets the request
    # The list's delete button removes an instance (one edit).
    pg.locator("#mm-editor .mm-item").nth(1).locator(".mm-del").click()
    wait_store(store, lambda r: len(r["instances"]) == 1, 1)
    pg.keyboard.press("Control+z")
    wait_store(store, lambda r: len(r["instances"]) == 2, 1)
    # Done toggle.
    pg.click("#mm-editor button[data-act=done]")
    wait_store(store, lambda r: r["status"] == "done", 1)
    assert "mm-on" in pg.get_attribute("#mm-editor button[data-act=done]", "class")
    # Next unlabelled from img1 goes to img2; A at img0 reports there is no previous image.
    pg.click("#mm-editor button[data-act=next_unlabelled]")
    wait_image(pg, store, 2)
    pg.hover("#mm-editor .mm-stage")
    pg.keyboard.press("a")
    wait_image(pg, store, 1)
    assert state(pg)["status"] == "done" and len(state(pg)["instances"]) == 2


def test_the_next_object_is_a_new_instance_without_pressing_n(app, page):
    """Forgetting N never merges two objects: after an instance is drawn, a first-mask polygon starts the next
    one; 2 adds a part to the instance just drawn; picking an instance adds parts to it."""
    store, _ = app
    pg = page
    rect = image_rect(pg)

    square(pg, rect, 50, 50, 100)  # object 1
    pg.keyboard.press("2")
    square(pg, rect, 70, 70)  # its part
    assert state(pg)["slot"] == 0 and state(pg)["target"] == -1, "back to the first slot of a new instance"
    assert "or press 2 to add a secondary to #1" in pg.inner_text("#mm-editor .mm-mode")
    square(pg, rect, 250, 50, 100)  # object 2, no N pressed
    square(pg, rect, 400, 50, 100)  # object 3
    rec = wait_store(store, lambda r: len(r["instances"]) == 3)
    masks = [i["masks"] for i in rec["instances"]]
    assert [(len(m["primary"]), len(m["secondary"])) for m in masks] == [(1, 1), (1, 0), (1, 0)]
    # Picking instance 1 in the list: a further primary polygon is a second part of it.
    pg.locator("#mm-editor .mm-item").nth(0).click()
    assert state(pg)["target"] == 0
    square(pg, rect, 50, 300, 60)
    rec = wait_store(store, lambda r: len(r["instances"][0]["masks"]["primary"]) == 2)
    assert len(rec["instances"]) == 3
    # A secondary with no instance to go to: the status line says to draw the primary first.
    pg.keyboard.press("n")
    pg.keyboard.press("2")
    assert "press 1 to draw its primary first" in pg.inner_text("#mm-editor .mm-mode")


@pytest.mark.slow
def test_slow_saves_coalesce_and_errors_show(app, page):
    store, _ = app
    pg = page
    rect = image_rect(pg)
    # Edits made while a slow save is in flight go out as ONE follow-up save of the latest state.
    with store.lock:
        store.delay = 0.5
    for x, y in [(100, 100), (300, 100), (300, 300), (100, 300)]:
        click_at(pg, rect, x, y)
    pg.keyboard.press("Enter")
    pg.wait_for_function("() => window.mmEditor.state().save === 'saving'")
    pg.locator("#mm-editor .mm-item").nth(0).locator("select").select_option("dog")
    pg.click("#mm-editor button[data-act=done]")
    assert state(pg)["saving"]
    rec = wait_store(store, lambda r: r["status"] == "done")
    wait_saved(pg)
    assert [(base, status) for _, base, _, status in store.saves] == [(0, "in_progress"), (1, "done")]
    assert rec["instances"] == state(pg)["instances"] and rec["instances"][0]["class"] == "dog"
    # A secondary polygon outside the primary: the store's warning is shown.
    with store.lock:
        store.delay = 0.0
    pg.keyboard.press("2")
    for x, y in [(400, 150), (500, 150), (450, 250)]:
        click_at(pg, rect, x, y)
    pg.keyboard.press("Enter")
    pg.wait_for_function("() => window.mmEditor.state().warnings.length === 1")
    assert "lies outside its 'primary' mask" in pg.inner_text("#mm-editor .mm-warnings")
    # A failed save says why; clicking the indicator retries.
    with store.lock:
        store.fail = "disk full"
    pg.keyboard.press("Control+z")
    pg.wait_for_function("() => window.mmEditor.state().save === 'failed'")
    assert "save failed: disk full" in pg.inner_text("#mm-editor .mm-save")
    assert stored(store)["instances"][0]["masks"]["secondary"]
    with store.lock:
        store.fail = None
    pg.click("#mm-editor .mm-save")
    rec = wait_store(store, lambda r: not r["instances"][0]["masks"]["secondary"])
    wait_saved(pg)
    assert rec["revision"] == state(pg)["revision"] == 4
    # Python showing another image while a save is in flight and another edit waits: both edits are stored
    # (in order) before the other image is shown.
    with store.lock:
        store.delay = 0.4
    pg.locator("#mm-editor .mm-item").nth(0).locator("select").select_option("cat")
    pg.wait_for_function("() => window.mmEditor.state().save === 'saving'")
    pg.click("#mm-editor button[data-act=done]")
    pg.click("#show-img2")
    wait_image(pg, store, 2)
    rec = stored(store)
    assert rec["revision"] == 6 and rec["status"] == "in_progress" and rec["instances"][0]["class"] == "cat"
    assert state(pg)["save"] == "saved" and state(pg)["instances"] == []
    with store.lock:
        store.delay = 0.0
    pg.hover("#mm-editor .mm-stage")  # keys go to the editor only with focus or the pointer on it
    pg.keyboard.press("a")
    wait_image(pg, store, 1)
    pg.keyboard.press("a")
    wait_image(pg, store, 0)
    # A server function that raises: the editor shows the error and carries on.
    with store.lock:
        store.proposals = "model not found"
    with quiet_editor_log():
        pg.click("#mm-editor button[data-act=propose]")
        pg.wait_for_function("() => document.querySelector('#mm-editor .mm-toast').textContent.includes('failed')")
    assert "model not found" in pg.inner_text("#mm-editor .mm-toast")
    assert len(state(pg)["instances"]) == 1


# ---- assists ------------------------------------------------------------------------------------------------
def wait_assists(pg):
    pg.wait_for_function("() => window.mmEditor.state().assist.working === 0")


@pytest.mark.slow
def test_box_refine_and_part_in_object(app, page):
    """B, a box dragged around the object: its primary (IoU >= 0.85), one undoable edit; clicks refine it; I:
    its secondary inside it; every result an ordinary polygon saved with the image."""
    store, _ = app
    pg = page
    rect = image_rect(pg)
    pg.hover("#mm-editor .mm-stage")
    pg.keyboard.press("b")
    assert state(pg)["tool"] == "box"
    drag(pg, rect, (170, 110), (430, 370))
    rec = wait_store(store, lambda r: r["instances"])
    assert iou(rec["instances"][0]["masks"]["primary"], "primary") >= 0.85
    assert state(pg)["undo"] == 1 and state(pg)["session"]["kind"] == "grabcut"
    # An exclude click (Shift) on the object's body refines the same polygon: its part is left.
    pg.keyboard.down("Shift")
    click_at(pg, rect, 300, 160)
    pg.keyboard.up("Shift")
    rec = wait_store(store, lambda r: r["instances"] and iou(r["instances"][0]["masks"]["primary"], "secondary") > 0.85)
    assert len(rec["instances"]) == 1 and len(rec["instances"][0]["masks"]["primary"]) == 1
    assert state(pg)["undo"] == 2 and state(pg)["session"]["bg"] == 1
    pg.keyboard.press("Control+z")  # back to the box's result, one step
    rec = wait_store(store, lambda r: r["instances"] and iou(r["instances"][0]["masks"]["primary"], "primary") > 0.85)
    pg.keyboard.press("Escape")
    assert state(pg)["session"] is None
    # I: the part proposed inside the active instance's primary.
    pg.keyboard.press("i")
    rec = wait_store(store, lambda r: r["instances"][0]["masks"]["secondary"])
    assert iou(rec["instances"][0]["masks"]["secondary"], "secondary") >= 0.85
    assert [r["kind"] for r in store.assist_requests] == ["grabcut", "grabcut", "part"]
    pg.keyboard.press("Control+z")
    wait_store(store, lambda r: not r["instances"][0]["masks"]["secondary"])


@pytest.mark.slow
def test_lasso_wand_and_clip(app, page):
    """L: four clicks on the object's outline, closed on the first, trace it (a square through them would cover
    64 % of it); W: a click in the part fills it; C clips a part drawn across its object's outline."""
    store, _ = app
    pg = page
    rect = image_rect(pg)
    (cx, cy), radius = OBJECT_CIRCLE
    pg.hover("#mm-editor .mm-stage")
    pg.keyboard.press("l")
    for angle in (0, 90, 180, 270, 0):
        click_at(pg, rect, cx + radius * math.cos(math.radians(angle)), cy + radius * math.sin(math.radians(angle)))
        wait_assists(pg)
    rec = wait_store(store, lambda r: r["instances"])
    assert iou(rec["instances"][0]["masks"]["primary"], "primary") >= 0.85
    assert state(pg)["undo"] == 1 and state(pg)["drawing"] == 0
    # W in the secondary slot of the same instance: the part's colour region.
    pg.keyboard.press("w")
    pg.keyboard.press("2")
    click_at(pg, rect, 300, 245)
    rec = wait_store(store, lambda r: r["instances"][0]["masks"]["secondary"])
    assert len(rec["instances"]) == 1 and iou(rec["instances"][0]["masks"]["secondary"], "secondary") >= 0.85

    # A part across the object's outline, drawn by hand; C clips it to the object.
    def secondary_right(r):  # the rightmost x of the stored secondary's first part (0 without one)
        parts = r["instances"][0]["masks"]["secondary"]
        return max(x for x, _ in pairs(parts[0])) if parts else 0

    pg.keyboard.press("Control+z")
    wait_store(store, lambda r: not r["instances"][0]["masks"]["secondary"])
    pg.keyboard.press("p")
    pg.keyboard.press("2")
    for x, y in [(380, 220), (470, 220), (470, 260), (380, 260)]:
        click_at(pg, rect, x, y)
    pg.keyboard.press("Enter")
    wait_store(store, lambda r: secondary_right(r) >= 460)  # stored as drawn, across the outline
    pg.keyboard.press("c")
    rec = wait_store(store, lambda r: 0 < secondary_right(r) <= cx + radius + 1)
    xs = [x for x, _ in pairs(rec["instances"][0]["masks"]["secondary"][0])]
    assert 415 <= max(xs) <= 421, "clipped at the disc's outline"
    assert pg.locator("#mm-editor .mm-toast").inner_text().startswith("#1 clipped")


@pytest.mark.slow
def test_a_superseded_assist_is_dropped_and_the_editor_stays_responsive(app, page):
    store, _ = app
    pg = page
    rect = image_rect(pg)
    with store.lock:
        store.assist_delay = 0.6
    pg.hover("#mm-editor .mm-stage")
    pg.keyboard.press("b")
    drag(pg, rect, (170, 110), (430, 370))
    pg.wait_for_function("() => window.mmEditor.state().assist.working === 1")
    assert "working" in pg.inner_text("#mm-editor .mm-mode")
    pg.keyboard.down("Shift")
    click_at(pg, rect, 300, 160)  # queued behind the box's request ...
    click_at(pg, rect, 200, 240)  # ... and replaced by this one, which has both clicks
    pg.keyboard.up("Shift")
    pg.keyboard.press("Tab")  # keys still work meanwhile
    assert state(pg)["mask_name"] == "secondary"
    wait_assists(pg)
    s = state(pg)
    assert s["assist"]["dropped"] == 1, "the box's reply, superseded by the clicks, was dropped"
    assert [len(r.get("background", [])) for r in store.assist_requests] == [0, 2]
    assert s["undo"] == 1 and s["session"]["bg"] == 2
    rec = wait_store(store, lambda r: r["instances"])
    assert iou(rec["instances"][0]["masks"]["primary"], "secondary") >= 0.85


def test_then_its_second_mask_and_the_instance_kept_across_copies(app, page):
    """With "then draw its second mask" on, the polygon after a primary goes to the same instance's secondary,
    and the next one starts a new instance; Copy previous keeps the instance that was active selected."""
    store, _ = app
    pg = page
    rect = image_rect(pg)
    pg.check("#mm-editor .mm-part-next")

    square(pg, rect, 50, 50, 100)
    assert state(pg)["mask_name"] == "secondary" and state(pg)["target"] == 0
    square(pg, rect, 70, 70)
    assert state(pg)["mask_name"] == "primary" and state(pg)["target"] == -1
    square(pg, rect, 250, 50, 100)
    square(pg, rect, 270, 70)
    rec = wait_store(store, lambda r: len(r["instances"]) == 2 and r["instances"][1]["masks"]["secondary"])
    assert [(len(i["masks"]["primary"]), len(i["masks"]["secondary"])) for i in rec["instances"]] == [(1, 1)] * 2
    pg.locator("#mm-editor .mm-item").nth(1).click()  # the second object stays selected on the next image
    pg.keyboard.press("d")
    wait_image(pg, store, 1)
    pg.click("#mm-editor button[data-act=copy]")
    wait_store(store, lambda r: len(r["instances"]) == 2, 1)
    assert state(pg)["active"] == 1 and state(pg)["target"] == 1
    assert pg.evaluate("() => localStorage.getItem('mm-editor-part-next')") == "1"


@pytest.mark.slow
def test_snap_a_rough_outline_and_sam_without_a_checkpoint(app, page):
    """G snaps a roughly drawn polygon to the object around it, in place (one edit); S without a SAM checkpoint
    says what it needs."""
    store, _ = app
    pg = page
    rect = image_rect(pg)
    (cx, cy), radius = OBJECT_CIRCLE
    rough = [(cx + 0.8 * radius * math.cos(a), cy + 1.15 * radius * math.sin(a)) for a in np.linspace(0, 6, 8)]
    for x, y in rough:
        click_at(pg, rect, x, y)
    pg.keyboard.press("Enter")
    drawn = wait_store(store, lambda r: r["instances"])["instances"][0]["masks"]["primary"]
    assert iou(drawn, "primary") < 0.8
    pg.keyboard.press("g")
    rec = wait_store(store, lambda r: iou(r["instances"][0]["masks"]["primary"], "primary") >= 0.85)
    assert len(rec["instances"]) == 1 and len(rec["instances"][0]["masks"]["primary"]) == 1, "replaced in place"
    assert store.assist_requests[-1]["kind"] == "grabcut" and "outline" in store.assist_requests[-1]
    pg.keyboard.press("Control+z")
    wait_store(store, lambda r: r["instances"][0]["masks"]["primary"] == drawn)
    pg.keyboard.press("s")
    click_at(pg, rect, 300, 240)
    toast = pg.locator("#mm-editor .mm-toast")
    toast.get_by_text("pip install segment-anything").wait_for()
    assert "--sam-checkpoint" in toast.inner_text() and state(pg)["tool"] == "sam"
