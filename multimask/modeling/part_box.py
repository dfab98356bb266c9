"""Part boxes: a mask predicted a second time on its own grid, inside a box of its own.

A part that covers a few percent of its object's box is a few cells of the object's 28 x 28 grid
(bench/README.md, "Issue 14"). With `MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS`, the head finds one box per
such mask (`PART_BOX_FROM`: around its coarse prediction on the instance's grid, `boxes_of_masks`, or regressed
from the instance's pooled features, `PartBoxRegressor`), pools features again in that box (enlarged by
`PART_BOX_CONTEXT`) and predicts the mask there. In training the pooled box is the ground-truth part box,
jittered, as the proposals that train detectron2's mask head vary around their objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.box_regression import Box2BoxTransform
from fvcore.nn import giou_loss
from torch import nn

from ..structures import MultiMasks

PART_BOX_TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
PART_BOX_SOURCES = ("coarse_mask", "regression")  # where a part's box comes from at inference
MIN_PART_BOX_SIZE = 1.0  # pixels: the smallest box a part is given


class PartBoxRegressor(nn.Module):
    """Box deltas (R, P, 4) of P parts relative to each of R instance boxes, from the instance's features."""

    def __init__(self, input_shape: ShapeSpec, num_parts: int, conv_dim: int, norm: str = "", fc_dim: int = 256):
        super().__init__()
        self.num_parts = num_parts
        self.conv = Conv2d(
            input_shape.channels,
            conv_dim,
            3,
            stride=2,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, conv_dim),
            activation=nn.ReLU(),
        )
        weight_init.c2_msra_fill(self.conv)
        cells = ((input_shape.height + 1) // 2) * ((input_shape.width + 1) // 2)  # after the stride-2 conv
        self.fc = nn.Linear(conv_dim * cells, fc_dim)
        weight_init.c2_xavier_fill(self.fc)
        self.deltas = nn.Linear(fc_dim, 4 * num_parts)
        nn.init.normal_(self.deltas.weight, std=0.001)  # as detectron2's box predictor: start at the ROI box
        nn.init.constant_(self.deltas.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(self.conv(x).flatten(1)))
        return self.deltas(x).view(len(x), self.num_parts, 4)


def part_boxes_of(masks: MultiMasks, names: Sequence[str]) -> torch.Tensor:
    """(N, P, 4) boxes enclosing each instance's mask of each name in `names`; zeros where absent."""
    boxes = torch.stack([masks.masks[n].get_bounding_boxes().tensor.float() for n in names], dim=1)
    present = masks.present[:, [masks.names.index(n) for n in names]].unsqueeze(-1).to(boxes.device)
    return torch.where(present, boxes, torch.zeros_like(boxes))  # absent polygons have infinite boxes


def apply_part_deltas(deltas: torch.Tensor, instance_boxes: torch.Tensor) -> torch.Tensor:
    """(R, P, 4) part boxes from deltas (R, P, 4) relative to instance boxes (R, 4)."""
    r, p = deltas.shape[:2]
    return PART_BOX_TRANSFORM.apply_deltas(deltas.reshape(r, 4 * p), instance_boxes).view(r, p, 4)


def part_box_loss(
    deltas: torch.Tensor, instance_boxes: torch.Tensor, true_boxes: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """(P,) box losses: per part, L1 on the deltas (R, P, 4) to its true box, relative to the instance box
    (R, 4), plus 1 - GIoU of the regressed and true boxes, averaged over the instances that have the part.

    The L1 term moves a box that still covers the whole object quickly; the generalised-IoU term is
    scale-free, so a part a tenth of its object's width is placed to within its own size (as DETR pairs the
    two). An instance without the part (present False) adds nothing; a part no instance has gives a 0 that
    keeps the graph.
    """
    present = present.to(deltas.device)  # (R, P)
    r, p = deltas.shape[:2]
    inst = enlarge_boxes(instance_boxes, 1.0).repeat_interleave(p, dim=0)
    truth = enlarge_boxes(true_boxes.detach().reshape(r * p, 4), 1.0)
    l1 = (deltas.reshape(r * p, 4) - PART_BOX_TRANSFORM.get_deltas(inst, truth)).abs().sum(-1)
    giou = giou_loss(PART_BOX_TRANSFORM.apply_deltas(deltas.reshape(r * p, 4), inst), truth)
    per = (l1 + giou).view(r, p)
    per = torch.where(present, per, torch.zeros_like(per))
    return per.sum(0) / present.sum(0).clamp(min=1)


def boxes_of_masks(masks: torch.Tensor, instance_boxes: torch.Tensor) -> torch.Tensor:
    """(R, P, 4) boxes, in image coordinates, of the cells set in masks (R, P, M, M) drawn on the grids of
    instance boxes (R, 4); an empty mask gets its instance's box."""
    r, p, m = masks.shape[:3]
    cols, rows = masks.any(2), masks.any(3)  # (R, P, M): which columns / rows hold a cell
    cells = torch.arange(m, device=masks.device)
    big = torch.full_like(cells, m)

    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.where(hit, cells, big).min(-1).values
        last = torch.where(hit, cells, -1).max(-1).values + 1
        return first, last

    (x0, x1), (y0, y1) = span(cols), span(rows)
    grid = torch.stack([x0, y0, x1, y1], dim=-1).to(instance_boxes.dtype) / m  # (R, P, 4) in [0, 1]
    origin, size = instance_boxes[:, None, :2], (instance_boxes[:, 2:] - instance_boxes[:, :2])[:, None]
    out = torch.cat([origin + grid[..., :2] * size, origin + grid[..., 2:] * size], dim=-1)
    empty = ~cols.any(-1)
    return torch.where(empty[..., None], instance_boxes[:, None].expand(r, p, 4), out)


def jitter_boxes(boxes: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boxes (..., 4) whose centres move by up to `amount` of their size and whose sides scale by up to
    exp(+-amount), uniformly at random."""
    if amount <= 0:
        return boxes
    noise = (torch.rand(boxes.shape, generator=generator, device="cpu") * 2 - 1).to(boxes) * amount
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=MIN_PART_BOX_SIZE)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2 + noise[..., :2] * size
    half = size * noise[..., 2:].exp() / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def enlarge_boxes(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """Boxes (..., 4) scaled by `factor` about their centres, at least MIN_PART_BOX_SIZE wide and high."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]).clamp(min=MIN_PART_BOX_SIZE) * factor / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def sample_per_image(
    flags: torch.Tensor, image_of_row: torch.Tensor, limit: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A copy of the (R, P) bool `flags` (R ROIs, P parts) with at most `limit` True entries per image, kept
    uniformly at random; `image_of_row` (R,) holds each ROI's image. `limit` 0 keeps them all."""
    if limit <= 0:
        return flags
    rows, cols = flags.nonzero(as_tuple=True)
    images = image_of_row[rows]
    keep = torch.zeros(len(rows), dtype=torch.bool)
    for image in images.unique().tolist():
        idx = (images == image).nonzero().flatten()
        keep[idx[torch.randperm(len(idx), generator=generator)[:limit]]] = True
    out = torch.zeros_like(flags)
    out[rows[keep], cols[keep]] = True
    return out
