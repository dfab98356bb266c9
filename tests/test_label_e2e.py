"""The whole app in headless Chromium: create a dataset, upload an image, label it, reload, check the disk."""

import os
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest

from app import build_app
from app.core.datasets.storage import LabelStore
from tests.conftest import serve_app

W, H = 800, 600  # the image's size; the editor shows it smaller (about 0.5x)
STAGE_HEIGHT = 300
SCREENSHOT_DIR = Path(os.environ.get("MULTIMASK_SCREENSHOTS", "/nonexistent"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_app")
    image = root / "leaf.png"
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], axis=2).astype(np.uint8)
    cv2.ellipse(img, (300, 300), (200, 140), 20, 0, 360, (60, 170, 60), -1)
    cv2.circle(img, (330, 280), 50, (40, 60, 140), -1)
    cv2.rectangle(img, (560, 100), (720, 260), (30, 140, 200), -1)
    cv2.imwrite(str(image), img)
    demo = build_app(root / "data", root / "runs")
    server = serve_app(demo)
    yield demo, f"{server.local_url}/", image, root / "data"
    server.close()


def _rect(pg):
    return pg.evaluate("""() => { const r = document.querySelector('#mm-editor .mm-image').getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height}; }""")


def _click(pg, rect, x, y):
    """Click where image pixel (x, y) is shown; returns the image pixel under the (whole) screen pixel."""
    sx, sy = round(rect["left"] + x * rect["width"] / W), round(rect["top"] + y * rect["height"] / H)
    pg.mouse.click(sx, sy)
    return (sx - rect["left"]) * W / rect["width"], (sy - rect["top"]) * H / rect["height"]


def _stored(data_root):
    ds = LabelStore(data_root).open("leaves")
    (entry,) = ds.images()
    return ds.load(entry["id"])


def _close(points, expected, tol=1.0):
    got = [tuple(points[i : i + 2]) for i in range(0, len(points), 2)]
    assert len(got) == len(expected), (got, expected)
    return all(abs(a - c) <= tol and abs(b - d) <= tol for (a, b), (c, d) in zip(got, expected))


def _wait_saved(pg, revision):
    pg.wait_for_function(
        f"() => {{ const s = window.mmEditor.state(); return !s.saving && s.save === 'saved' "
        f"&& s.revision >= {revision}; }}"
    )


@pytest.mark.slow
def test_label_an_image_end_to_end(served, browser, tmp_path):
    demo, url, image, data_root = served
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    # create a dataset
    pg.get_by_label("Name", exact=True).fill("leaves")
    pg.get_by_label("Classes (comma separated)").fill("leaf, fruit")
    pg.get_by_role("button", name="Create dataset").click()
    pg.locator("#mm-label-side").get_by_text("Created leaves").wait_for()
    # upload an image, open it from the gallery
    pg.set_input_files("#mm-upload input[type=file]", str(image))
    pg.locator("#mm-label-images-message").get_by_text("Added 1 image(s).").wait_for()
    pg.locator("#mm-gallery img").first.click()
    pg.wait_for_function("() => window.mmEditor && window.mmEditor.state().image_id")
    pg.add_style_tag(
        content=f"#mm-editor .mm-stage {{ height: {STAGE_HEIGHT}px !important; min-height: 0 !important; }}"
    )
    pg.wait_for_function(
        f"() => document.querySelector('#mm-editor .mm-image').getBoundingClientRect().height <= {STAGE_HEIGHT}"
    )
    pg.locator("#mm-editor .mm-stage").scroll_into_view_if_needed()
    rect = _rect(pg)
    scale = rect["width"] / W
    assert 0.3 < scale < 0.7, scale  # displayed smaller than the image: clicks must be mapped back

    # draw instance 1: a primary quadrilateral, closed by clicking its first point, and a secondary triangle
    pg.mouse.move(rect["left"] + 5, rect["top"] + 5)
    pg.keyboard.press("n")
    primary = [_click(pg, rect, x, y) for x, y in [(120, 180), (480, 160), (500, 430), (130, 450)]]
    _click(pg, rect, 120, 180)
    pg.keyboard.press("2")
    secondary = [_click(pg, rect, x, y) for x, y in [(290, 240), (380, 250), (330, 330)]]
    pg.keyboard.press("Enter")
    _wait_saved(pg, 2)
    inst = _stored(data_root)["instances"][0]
    assert _close(inst["masks"]["primary"][0], primary) and _close(inst["masks"]["secondary"][0], secondary)
    assert inst["class"] == "leaf"

    # drag a vertex (the primary's third point), then undo and redo; the disk follows
    sx, sy = round(rect["left"] + primary[2][0] * scale), round(rect["top"] + primary[2][1] * scale)
    pg.keyboard.press("1")
    pg.mouse.move(sx, sy)
    pg.mouse.down()
    pg.mouse.move(sx + 40, sy - 30, steps=5)
    pg.mouse.up()
    moved = ((sx + 40 - rect["left"]) / scale, (sy - 30 - rect["top"]) / scale)
    rev = pg.evaluate("() => window.mmEditor.state().revision")
    _wait_saved(pg, rev)
    pg.wait_for_function("() => !window.mmEditor.state().saving")
    assert _close(_stored(data_root)["instances"][0]["masks"]["primary"][0], primary[:2] + [moved] + primary[3:])
    pg.keyboard.press("Control+z")
    pg.wait_for_function(f"() => window.mmEditor.state().revision > {rev} && !window.mmEditor.state().saving")
    assert _close(_stored(data_root)["instances"][0]["masks"]["primary"][0], primary)
    rev = pg.evaluate("() => window.mmEditor.state().revision")
    pg.keyboard.press("Control+Shift+z")
    pg.wait_for_function(f"() => window.mmEditor.state().revision > {rev} && !window.mmEditor.state().saving")
    assert _close(_stored(data_root)["instances"][0]["masks"]["primary"][0], primary[:2] + [moved] + primary[3:])

    # a second instance of another class, for the screenshot
    pg.locator("#mm-editor select.mm-class").select_option("fruit")
    pg.keyboard.press("n")
    for x, y in [(560, 100), (720, 100), (720, 260), (560, 260)]:
        _click(pg, rect, x, y)
    pg.keyboard.press("Enter")
    rev = pg.evaluate("() => window.mmEditor.state().revision")
    _wait_saved(pg, rev)
    pg.wait_for_function("() => !window.mmEditor.state().saving")
    latencies = pg.evaluate("() => window.mmEditor.lastLatencies")
    pg.keyboard.press("f")
    pg.wait_for_timeout(300)
    pg.locator("#mm-editor").screenshot(path=str(tmp_path / "label_view.png"))
    if SCREENSHOT_DIR.is_dir():  # `MULTIMASK_SCREENSHOTS=docs pytest ...` refreshes the README's picture
        pg.screenshot(path=str(SCREENSHOT_DIR / "label_view.png"))
    stored = _stored(data_root)
    assert [i["class"] for i in stored["instances"]] == ["leaf", "fruit"]

    # reload: the dataset opens again with the stored instances in the editor, in image pixels
    pg.reload()
    pg.wait_for_function("() => window.mmEditor && window.mmEditor.state().image_id")
    pg.wait_for_function("() => window.mmEditor.state().instances.length === 2")
    shown = pg.evaluate("() => window.mmEditor.state()")
    assert shown["instances"] == stored["instances"] and shown["revision"] == stored["revision"]
    assert not errors, errors

    print(
        f"\nclick-to-vertex latency over {len(latencies)} clicks: median {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms (Chromium {browser.version})"
    )
    assert len(latencies) >= 11  # one per clicked vertex; the 16 ms target is read here, not asserted
    pg.close()
