"""A newcomer's first day in the Label tab, in headless Chromium at 1440 x 900: what they see after a restart,
which image Remove takes, how much of the window the editor gets, and where messages appear."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from app import build_app
from app.core.datasets.storage import LabelStore
from tests.conftest import free_port, serve_app

VIEWPORT = {"width": 1440, "height": 900}
PHOTO_W, PHOTO_H = 1920, 1080


def _photo(seed: int) -> bytes:
    img = np.full((PHOTO_H, PHOTO_W, 3), 30 + 50 * seed, np.uint8)
    cv2.circle(img, (500 + 300 * seed, 540), 250, (40, 180, 60), -1)
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture()
def roots(tmp_path):
    """A data root with one dataset of three 1920 x 1080 photos, and an empty runs root."""
    ds = LabelStore(tmp_path / "data").create("photos", ["leaf"])
    for i in range(3):
        ds.add_image_bytes(f"photo{i}.png", _photo(i))
    return tmp_path / "data", tmp_path / "runs"


def _serve(roots, port: int):
    return serve_app(build_app(*roots), port)


@pytest.fixture()
def page(roots, browser):
    """The app on `roots`, opened at 1440 x 900 with an image in the editor."""
    port = free_port()
    server = _serve(roots, port)
    pg = browser.new_page(viewport=VIEWPORT)
    try:
        _open(pg, f"http://127.0.0.1:{port}/")
        yield pg
    finally:
        pg.close()
        server.close()


def _names(data_root: Path) -> list[str]:
    return [e["file_name"] for e in LabelStore(data_root).open("photos").images()]


def _open(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_function("() => window.mmEditor && window.mmEditor.state().image_id", timeout=60_000)


def _shown(pg) -> str:
    """The file name the editor shows."""
    return pg.inner_text("#mm-editor .mm-file")


def _in_viewport(box: dict) -> bool:
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= VIEWPORT["width"]
        and box["y"] + box["height"] <= VIEWPORT["height"]
    )


@pytest.mark.slow
def test_after_a_restart_the_gallery_and_the_last_image_are_back(roots, browser):
    port = free_port()
    server = _serve(roots, port)
    ctx = browser.new_context(viewport=VIEWPORT)
    pg = ctx.new_page()
    try:
        _open(pg, f"http://127.0.0.1:{port}/")
        assert pg.locator("#mm-gallery .mm-card").count() == 3
        pg.locator("#mm-gallery .mm-card").nth(1).click()
        # The page remembers the image once the editor's change reached the server (the line under the gallery).
        pg.wait_for_function("() => document.querySelector('#mm-label-current').innerText.includes('photo1.png')")
        server.close()
        server = _serve(roots, port)  # the same address: the browser keeps what it remembered for it
        pg.reload()
        pg.wait_for_function("() => window.mmEditor && window.mmEditor.state().image_id", timeout=60_000)
        assert pg.locator("#mm-gallery .mm-card").count() == 3, "the gallery is filled without any click"
        assert _shown(pg) == "photo1.png", "the editor reopens the image this tab showed"
        assert pg.locator("#mm-gallery .mm-card.mm-current .mm-name").inner_text() == "photo1.png"
        assert "3 images (3 unlabelled" in pg.inner_text("#mm-label-summary")
        # A browser that never opened the app gets the first image.
        other = browser.new_context(viewport=VIEWPORT).new_page()
        _open(other, f"http://127.0.0.1:{port}/")
        assert _shown(other) == "photo0.png" and other.locator("#mm-gallery .mm-card").count() == 3
        other.context.close()
    finally:
        ctx.close()
        server.close()


@pytest.mark.slow
def test_remove_takes_the_image_shown_after_navigation(roots, page):
    pg = page
    pg.locator("#mm-gallery .mm-card").nth(0).click()
    pg.wait_for_function("() => document.querySelector('#mm-editor .mm-file').textContent === 'photo0.png'")
    pg.locator("#mm-editor button[data-act=next]").click()
    pg.wait_for_function("() => document.querySelector('#mm-label-current').innerText.includes('photo1.png')")
    pg.locator("#mm-label-side").get_by_label("confirm").check()
    pg.locator("#mm-label-remove").click()
    pg.locator("#mm-label-images-message").get_by_text("Removed photo1.png").wait_for()
    assert _names(roots[0]) == ["photo0.png", "photo2.png"]
    pg.wait_for_function("() => document.querySelectorAll('#mm-gallery .mm-card').length === 2")
    pg.wait_for_function("() => document.querySelector('#mm-editor .mm-file').textContent === 'photo2.png'")


@pytest.mark.slow
def test_the_editor_uses_the_window_and_stays_in_view(roots, page):
    pg = page
    stage = pg.locator("#mm-editor .mm-stage").bounding_box()
    assert stage["width"] >= 0.5 * VIEWPORT["width"] and stage["height"] >= 0.6 * VIEWPORT["height"], stage
    assert _in_viewport(stage), f"the canvas fits the window: {stage}"
    image = pg.locator("#mm-editor .mm-image").bounding_box()
    assert image["width"] / PHOTO_W >= 0.4, f"a 1920 x 1080 photo shows at {image['width'] / PHOTO_W:.0%}"
    assert pg.inner_text("#mm-editor .mm-zoom") == f"{round(pg.evaluate('window.mmEditor.state().view.s') * 100)}%"
    # Scrolling the column of panels leaves the editor where it is.
    pg.locator("#mm-upload").scroll_into_view_if_needed()
    pg.mouse.wheel(0, 800)
    pg.wait_for_function("() => window.scrollY > 100")
    assert _in_viewport(pg.locator("#mm-editor .mm-stage").bounding_box())


@pytest.mark.slow
def test_messages_appear_in_the_viewport(roots, page, tmp_path):
    pg = page
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("shopping list")
    pg.set_input_files("#mm-upload input[type=file]", str(not_an_image))
    toast = pg.locator(".toast-body").filter(has_text="notes.png")
    toast.wait_for()
    assert _in_viewport(toast.bounding_box()), toast.bounding_box()
    assert toast.inner_text().count("notes.png") == 1
    pg.locator("#mm-label-side").get_by_text("New dataset").click()
    pg.get_by_label("Name", exact=True).fill("leaves")
    pg.get_by_role("button", name="Create dataset").click()
    created = pg.locator(".toast-body").filter(has_text="Created leaves")
    created.wait_for()
    assert _in_viewport(created.bounding_box()), created.bounding_box()
