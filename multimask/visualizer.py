"""Drawing predictions or ground truth: one colour per instance, one style per mask name, and a legend.

Label text and line widths follow the image's size (LABEL_FRACTION of its shorter side, at least LABEL_MIN_PX
pixels of the drawn canvas); labels sit at their box's top-left corner, or the nearest free spot around the box,
inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.patches import Polygon as MplPolygon

# Per mask index: (fill alpha, hatch, line style). The first mask is filled, the second hatched,
# further ones dashed or dotted outlines.
MASK_STYLES = [(0.45, None, "-"), (0.0, "////", "-"), (0.0, None, "--"), (0.0, None, ":")]
LABEL_FRACTION = 0.025  # label text height (em) over the image's shorter side
LABEL_MIN_PX = 12  # ... and at least this many pixels of the drawn canvas
FADED = 0.3  # how much of its colour and fill an instance keeps when another one is highlighted

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def mask_style(k: int) -> tuple[float, str | None, str]:
    """(fill alpha, hatch, line style) of the k-th mask name."""
    return MASK_STYLES[min(k, len(MASK_STYLES) - 1)]


def _palette() -> np.ndarray:
    """detectron2's colormap without its greys, black and white (they read as "no colour" on photos)."""
    colors = colormap(rgb=True, maximum=1)
    return colors[np.ptp(colors, axis=1) >= 0.05]


PALETTE = _palette()


def instance_color(i: int) -> np.ndarray:
    """RGB colour in [0, 1] of the i-th instance (stable across calls; a stride of 7 keeps neighbours apart
    and, 7 being prime to the palette's size, cycles through every colour)."""
    return PALETTE[(i * 7) % len(PALETTE)]


def label_position(
    box: Rect, size: tuple[float, float], taken: Sequence[Rect], bounds: tuple[float, float]
) -> tuple[float, float]:
    """Top-left corner for a label of `size` (w, h) of `box`, inside `bounds` (W, H).

    The first spot that overlaps no rectangle of `taken`, of: inside the box's top-left corner, above it, its
    bottom-left corner inside, below it, the top-right corner, then line by line down the box's left side;
    when all overlap, the one that overlaps least.
    """
    x0, y0, x1, y1 = box
    w, h = size
    spots = [(x0, y0), (x0, y0 - h), (x0, y1 - h), (x0, y1), (x1 - w, y0), (x1 - w, y0 - h)]
    spots += [(x0, y) for y in np.arange(y0 + h, y1 - h, h)[:20]]
    best, least = None, np.inf
    for x, y in spots:
        x, y = min(max(x, 0.0), max(bounds[0] - w, 0.0)), min(max(y, 0.0), max(bounds[1] - h, 0.0))
        overlap = sum(_overlap((x, y, x + w, y + h), r) for r in taken)
        if overlap < least:
            best, least = (float(x), float(y)), overlap
            if overlap == 0:
                break
    return best


def _overlap(a: Rect, b: Rect) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


class MultiMaskVisualizer(Visualizer):
    """detectron2's Visualizer with `draw_multimask`, drawing every mask name of every instance.

    `scale` (detectron2's) draws on a canvas that many times the image's size (nearest-neighbour pixels, crisp
    outlines and text): a small image becomes legible.
    """

    def __init__(self, img_rgb: np.ndarray, metadata=None, scale: float = 1.0, **kwargs):
        super().__init__(img_rgb, metadata, scale, **kwargs)
        em_px = max(LABEL_FRACTION * min(self.output.height, self.output.width) * scale, LABEL_MIN_PX)
        # detectron2 sizes text and lines in points per image pixel: drawn at font_size * scale points
        self._default_font_size = em_px / scale * 72 / self.output.dpi
        self._labels: list[Rect] = []  # label rectangles drawn so far, image coordinates

    def draw_multimask(
        self,
        masks: np.ndarray,
        mask_names: Sequence[str],
        *,
        boxes: np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        visible: Sequence[str] | None = None,
        highlight: int | None = None,
    ):
        """Draw (N, K, H, W) bool masks; `visible` limits the drawn mask names; returns the VisImage.

        `highlight`: an instance drawn with its box and label, the others faded and unlabelled.
        """
        visible = set(mask_names if visible is None else visible)
        lw = max(self._default_font_size / 6, 1.0)
        if highlight is not None and not 0 <= highlight < len(masks):
            raise IndexError(f"highlight {highlight} is not one of the {len(masks)} instances")
        for i in range(len(masks)):
            color, fade = instance_color(i), 1.0 if highlight in (None, i) else FADED
            for k, name in enumerate(mask_names):
                if name in visible and masks[i, k].any():
                    self._draw_styled_mask(masks[i, k], color * fade + 0.5 * (1 - fade), k, lw, fade)
        if highlight is not None and boxes is not None:
            self.draw_box(boxes[highlight], alpha=1.0, edge_color=instance_color(highlight))
        if labels is not None and boxes is not None:
            for i in range(len(masks)) if highlight is None else [highlight]:
                self.draw_label(labels[i], boxes[i], instance_color(i))
        self._draw_legend([n for n in mask_names if n in visible], mask_names, lw)
        return self.output

    def draw_label(self, text: str, box: Sequence[float], color: np.ndarray) -> None:
        """A label with detectron2's `draw_text`, at `label_position` clear of the labels drawn before."""
        self.draw_text(
            text, (0, 0), color=self._change_color_brightness(color, brightness_factor=0.7), horizontal_alignment="left"
        )
        artist = self.output.ax.texts[-1]
        renderer = self.output.canvas.get_renderer()
        artist.update_bbox_position_size(renderer)
        (px0, py1), (px1, py0) = self.output.ax.transData.inverted().transform(
            artist.get_bbox_patch().get_window_extent(renderer).get_points()
        )  # y grows downwards in the image
        x, y = label_position(
            tuple(map(float, box)), (px1 - px0, py1 - py0), self._labels, (self.output.width, self.output.height)
        )
        artist.set_position((x - px0, y - py0))
        self._labels.append((x, y, x + px1 - px0, y + py1 - py0))

    def draw_instance_predictions_multimask(
        self, instances, mask_names: Sequence[str], class_names: Sequence[str], visible: Sequence[str] | None = None
    ):
        """Draw a model's output Instances with class and score labels."""
        instances = instances.to("cpu")
        labels = [
            f"{class_names[c] if c < len(class_names) else c} {s:.0%}"
            for c, s in zip(instances.pred_classes.tolist(), instances.scores.tolist())
        ]
        return self.draw_multimask(
            instances.pred_multimask.numpy(),
            mask_names,
            boxes=instances.pred_boxes.tensor.numpy(),
            labels=labels,
            visible=visible,
        )

    def _draw_styled_mask(self, mask: np.ndarray, color: np.ndarray, k: int, lw: float, fade: float) -> None:
        alpha, hatch, linestyle = mask_style(k)
        if alpha > 0:
            self.draw_binary_mask(mask, color=color, edge_color=color, alpha=alpha * fade)
            return
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            if len(c) < 3:
                continue
            self.output.ax.add_patch(
                MplPolygon(
                    c.reshape(-1, 2),
                    closed=True,
                    fill=False,
                    hatch=hatch,
                    edgecolor=color,
                    linewidth=lw * 1.5 * self.output.scale,
                    linestyle=linestyle,
                )
            )

    def _draw_legend(self, shown: Sequence[str], mask_names: Sequence[str], lw: float) -> None:
        if not shown:
            return
        handles = []
        for name in shown:
            alpha, hatch, linestyle = mask_style(list(mask_names).index(name))
            if alpha > 0 or hatch:
                handles.append(Patch(facecolor=(0.5, 0.5, 0.5, alpha), edgecolor="black", hatch=hatch, label=name))
            else:
                handles.append(
                    Line2D(
                        [0], [0], color="black", linestyle=linestyle, linewidth=lw * 1.5 * self.output.scale, label=name
                    )
                )
        self.output.ax.legend(
            handles=handles, loc="lower right", fontsize=self._default_font_size * self.output.scale, framealpha=0.7
        )
