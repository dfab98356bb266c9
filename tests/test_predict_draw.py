"""The overlay: label size and placement, highlighting, drawing small images larger, instance numbers."""

import gradio as gr
import numpy as np
import pytest

from multimask.visualizer import LABEL_FRACTION, LABEL_MIN_PX, MultiMaskVisualizer, label_position

NAMES = ["primary", "secondary"]


def _masks(h, w, boxes):
    masks = np.zeros((len(boxes), 2, h, w), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, :, y0:y1, x0:x1] = True
        masks[i, 1, y0 : (y0 + y1) // 2] = False
    return masks


def _label_rects(vis):
    """The drawn labels' text boxes in canvas pixels, y downwards: (x0, y0, x1, y1)."""
    renderer = vis.output.canvas.get_renderer()
    height = vis.output.canvas.get_width_height()[1]
    rects = []
    for t in vis.output.ax.texts:
        e = t.get_window_extent(renderer)
        rects.append((e.x0, height - e.y1, e.x1, height - e.y0))
    return rects


def _draw(h, w, boxes, scale=1, **kw):
    vis = MultiMaskVisualizer(np.full((h, w, 3), 90, np.uint8), None, scale=scale)
    labels = [f"#{i + 1} class {90 - i}%" for i in range(len(boxes))]
    vis.draw_multimask(_masks(h, w, boxes), NAMES, boxes=np.array(boxes, float), labels=labels, **kw)
    return vis


def test_labels_on_a_full_hd_photo_are_a_readable_fraction_of_its_height():
    """detectron2's default made them ~1.3% of 1080 (16 pt at 0.8); the app then shows the image ~0.5x."""
    vis = _draw(1080, 1920, [(100, 100, 400, 300), (1500, 700, 1800, 1000)])
    heights = [y1 - y0 for _, y0, _, y1 in _label_rects(vis)]
    assert len(heights) == 2
    assert min(heights) >= LABEL_FRACTION * 1080 >= 0.02 * 1080, heights


def test_labels_of_a_tiny_image_keep_a_minimum_size_and_grow_with_the_drawing_scale():
    heights = [y1 - y0 for _, y0, _, y1 in _label_rects(_draw(60, 80, [(10, 10, 40, 40)]))]
    assert heights[0] >= LABEL_MIN_PX
    ((x0, y0, x1, y1),) = _label_rects(_draw(120, 160, [(10, 10, 60, 60)], scale=6))
    assert y1 - y0 >= LABEL_FRACTION * 720  # 720: the canvas's shorter side


def test_labels_of_overlapping_instances_do_not_overlap_and_stay_in_the_image():
    boxes = [(1700 + i, 50 + 3 * i, 1910, 300 + 3 * i) for i in range(8)]  # stacked, at the right edge
    vis = _draw(1080, 1920, boxes)
    rects = _label_rects(vis)
    assert len(rects) == 8
    for i, a in enumerate(rects):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= 1920 and a[3] <= 1080, a
        for b in rects[:i]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)


def test_label_position_prefers_the_box_corner_then_the_nearest_free_spot():
    bounds = (200, 100)
    assert label_position((50, 40, 150, 90), (30, 10), [], bounds) == (50, 40)
    assert label_position((50, 40, 150, 90), (30, 10), [(50, 40, 80, 50)], bounds) == (50, 30)  # above
    assert label_position((180, 0, 199, 20), (30, 10), [], bounds) == (170, 0)  # kept inside on the right
    # every spot taken: the least overlapping one, still inside
    x, y = label_position((0, 0, 10, 10), (30, 10), [(0, 0, 200, 100)], bounds)
    assert 0 <= x <= 170 and 0 <= y <= 90


def test_a_highlighted_instance_has_its_box_and_label_and_the_others_fade():
    boxes = [(20, 20, 80, 80), (100, 30, 180, 90)]
    plain = _draw(120, 200, boxes).output.get_image()
    vis = _draw(120, 200, boxes, highlight=1)
    assert [t.get_text() for t in vis.output.ax.texts] == ["#2 class 89%"]
    shown = vis.output.get_image()
    inside_first = (slice(50, 70), slice(30, 70))
    grey = np.full(3, 90)
    assert np.abs(shown[inside_first] - grey).mean() < np.abs(plain[inside_first] - grey).mean() / 2
    assert not np.array_equal(shown[30:90, 100:180], plain[30:90, 100:180])  # the box outline
    with pytest.raises(IndexError):
        _draw(120, 200, boxes, highlight=2)


# The Predict tab's overlay and table (app.views.predict_draw), from detections made by hand.


def _raw(h=120, w=160, boxes=((10, 10, 60, 50), (70, 20, 150, 100), (20, 60, 60, 110)), scores=(0.9, 0.8, 0.4)):
    import torch
    from detectron2.structures import Boxes, Instances

    from app.core.models.predictors import RawPrediction

    masks = _masks(h, w, boxes)
    inst = Instances(
        (h, w),
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
        scores=torch.tensor(scores),
        pred_classes=torch.zeros(len(boxes), dtype=torch.int64),
        pred_multimask=torch.from_numpy(masks),
    )
    rng = np.random.RandomState(0)
    image = rng.randint(0, 255, (h, w, 3)).astype(np.uint8)
    return RawPrediction.from_instances(inst, image, "run", ("run",), NAMES, ["leaf"])


def test_a_small_image_is_drawn_larger_with_sharp_pixels():
    from app.views.predict_draw import DISPLAY_SIDE, render

    raw = _raw(30, 40, boxes=np.zeros((0, 4)), scores=())
    overlay, table = render(raw, 0.5, [])
    k = DISPLAY_SIDE // 40
    assert k > 1 and overlay.shape == (30 * k, 40 * k, 3) and table.empty
    assert np.array_equal(overlay, np.kron(raw.image, np.ones((k, k, 1), np.uint8)))
    big = _raw(900, 1600, boxes=np.zeros((0, 4)), scores=())
    assert render(big, 0.5, [])[0].shape == (900, 1600, 3)


def test_instances_are_numbered_from_one_in_the_table_and_on_the_overlay(monkeypatch):
    from app.views.predict_draw import render

    drawn = []
    original = MultiMaskVisualizer.draw_label
    monkeypatch.setattr(
        MultiMaskVisualizer,
        "draw_label",
        lambda self, text, box, color: drawn.append(text) or original(self, text, box, color),
    )
    _, table = render(_raw(), 0.5, None)
    assert table["#"].tolist() == [1, 2]  # the Label tab's instance list counts from 1 too
    assert drawn == ["#1 leaf 90%", "#2 leaf 80%"]


def test_clicking_a_row_highlights_its_instance_and_a_second_click_shows_all_again(tmp_path):
    from app.views.predict import PredictView

    view, raw = PredictView(tmp_path), _raw()
    plain, _, _ = view.redraw(raw, 0.3, None)
    click = gr.SelectData(None, {"index": [1, 3], "value": 70, "row_value": [2, "leaf", 0.8, 70, 20, 150, 100]})
    highlighted, status = view.highlight_row(raw, 0.3, None, click)
    assert "#2 highlighted" in status and raw.highlight == 1
    assert highlighted.shape == plain.shape and not np.array_equal(highlighted, plain)
    assert view.redraw(raw, 0.3, None) == (gr.skip(),) * 3, "the overlay shows the highlight already"
    moved, _, _ = view.redraw(raw, 0.35, None)  # the highlight stays while the slider moves
    assert np.array_equal(moved, highlighted)
    again, status = view.highlight_row(raw, 0.35, None, click)
    assert raw.highlight is None and np.array_equal(again, plain) and "3 of 3 detections" in status


@pytest.mark.parametrize("number", [0, 4, 3, -1, "2; drop", None, 1.5, "x", float("inf"), float("nan")])
def test_a_row_number_that_is_not_shown_gives_a_message(tmp_path, number):
    from app.views.predict import PredictView

    raw = _raw()
    overlay, status = PredictView(tmp_path).highlight(raw, 0.5, None, number)  # rows #1 and #2 are shown
    assert overlay == gr.skip() and status.startswith("⚠️") and raw.highlight is None


def test_highlighting_before_any_prediction_says_what_to_do(tmp_path):
    from app.views.predict import PredictView

    overlay, status = PredictView(tmp_path).highlight(None, 0.5, None, 1)
    assert overlay == gr.skip() and "Detect first" in status
