"""Drawing predictions or ground truth: one colour per instance, one style per mask name, and a legend."""

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


class MultiMaskVisualizer(Visualizer):
    """detectron2's Visualizer with `draw_multimask`, drawing every mask name of every instance."""

    def draw_multimask(self, masks: np.ndarray, mask_names: Sequence[str], *, boxes: np.ndarray | None = None,
                       labels: Sequence[str] | None = None, visible: Sequence[str] | None = None):
        """Draw (N, K, H, W) bool masks; `visible` limits the drawn mask names; returns the VisImage."""
        visible = set(mask_names if visible is None else visible)
        lw = max(self._default_font_size / 6, 1.0)
        for i in range(len(masks)):
            color = instance_color(i)
            for k, name in enumerate(mask_names):
                if name in visible and masks[i, k].any():
                    self._draw_styled_mask(masks[i, k], color, k, lw)
            if labels is not None and boxes is not None:
                x0, y0 = boxes[i][:2]
                self.draw_text(labels[i], (x0, y0), color=np.clip(color * 0.6, 0, 1),
                               horizontal_alignment="left", font_size=self._default_font_size * 0.8)
        self._draw_legend([n for n in mask_names if n in visible], mask_names, lw)
        return self.output

    def draw_instance_predictions_multimask(self, instances, mask_names: Sequence[str],
                                            class_names: Sequence[str], visible: Sequence[str] | None = None):
        """Draw a model's output Instances with class and score labels."""
        instances = instances.to("cpu")
        labels = [f"{class_names[c] if c < len(class_names) else c} {s:.0%}"
                  for c, s in zip(instances.pred_classes.tolist(), instances.scores.tolist())]
        return self.draw_multimask(instances.pred_multimask.numpy(), mask_names,
                                   boxes=instances.pred_boxes.tensor.numpy(), labels=labels, visible=visible)

    def _draw_styled_mask(self, mask: np.ndarray, color: np.ndarray, k: int, lw: float) -> None:
        alpha, hatch, linestyle = mask_style(k)
        if alpha > 0:
            self.draw_binary_mask(mask, color=color, edge_color=color, alpha=alpha)
            return
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            if len(c) < 3:
                continue
            self.output.ax.add_patch(MplPolygon(c.reshape(-1, 2), closed=True, fill=False, hatch=hatch,
                                                edgecolor=color, linewidth=lw * 1.5, linestyle=linestyle))

    def _draw_legend(self, shown: Sequence[str], mask_names: Sequence[str], lw: float) -> None:
        if not shown:
            return
        handles = []
        for name in shown:
            alpha, hatch, linestyle = mask_style(list(mask_names).index(name))
            if alpha > 0 or hatch:
                handles.append(Patch(facecolor=(0.5, 0.5, 0.5, alpha), edgecolor="black", hatch=hatch, label=name))
            else:
                handles.append(Line2D([0], [0], color="black", linestyle=linestyle, linewidth=lw * 1.5, label=name))
        self.output.ax.legend(handles=handles, loc="upper right", fontsize=self._default_font_size * 0.8,
                              framealpha=0.7)
