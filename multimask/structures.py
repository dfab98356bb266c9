"""`MultiMasks`: the ground truth of `Instances.gt_multimask`, several named masks per instance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import BitMasks, Boxes, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask

Segmentation = Any  # list of flat polygons, a decoded HxW mask array, or an empty list (absent)


class MultiMasks:
    """NUM_MASK named masks for each of N instances, plus which of them were labelled.

    `masks[name]` is a detectron2 `PolygonMasks` when every mask of that name is a polygon list, else
    a `BitMasks` (RLE with holes, or a mix). An absent mask is an empty polygon list / an all-zero
    bitmap, and `present[i, k]` is False for it, so losses and metrics can ignore it.
    """

    def __init__(self, names: Sequence[str], masks: Sequence[PolygonMasks | BitMasks], present: torch.Tensor):
        if len(names) != len(masks):
            raise ValueError(f"{len(names)} mask names but {len(masks)} mask sets")
        n = len(present)
        if present.dim() != 2 or present.shape[1] != len(names) or any(len(m) != n for m in masks):
            raise ValueError("present must be (N, NUM_MASK) and every mask set must hold N masks")
        self.names = tuple(names)
        self.masks = dict(zip(self.names, masks))
        # Kept on the CPU whatever the masks' device: it steers Python-side work, so no GPU syncs.
        self.present = present.to(device="cpu", dtype=torch.bool)

    @classmethod
    def from_segmentations(
        cls, names: Sequence[str], segms: Sequence[dict[str, Segmentation]], image_size: tuple[int, int]
    ) -> MultiMasks:
        """Build from one `{name: segmentation}` dict per instance; a missing or empty entry is absent."""
        h, w = image_size
        sets, present = [], []
        for name in names:
            per_inst = [s.get(name, []) for s in segms]
            present.append([_is_present(x) for x in per_inst])
            if all(isinstance(x, list) for x in per_inst):
                sets.append(PolygonMasks([[np.asarray(p, dtype=np.float64) for p in x] for x in per_inst]))
            else:
                sets.append(
                    BitMasks(
                        torch.stack([_to_bitmap(x, h, w) for x in per_inst])
                        if per_inst
                        else torch.zeros((0, h, w), dtype=torch.bool)
                    )
                )
        pres = torch.tensor(present, dtype=torch.bool).T.reshape(len(segms), len(names))
        return cls(names, sets, pres)

    def __len__(self) -> int:
        return len(self.present)

    def __getitem__(self, item: int | slice | torch.Tensor | Iterable) -> MultiMasks:
        if isinstance(item, int):
            item = [item]
        if isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            item = item.nonzero().flatten()
        if not isinstance(item, (slice, torch.Tensor)):
            item = torch.as_tensor(list(item), dtype=torch.long)
        if isinstance(item, torch.Tensor):
            item = item.cpu()
        return MultiMasks(self.names, [self.masks[n][item] for n in self.names], self.present[item])

    def to(self, *args: Any, **kwargs: Any) -> MultiMasks:
        """Move the masks (bitmaps; polygons stay on the CPU, as in detectron2)."""
        return MultiMasks(self.names, [self.masks[n].to(*args, **kwargs) for n in self.names], self.present)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int, names: Sequence[str] | None = None) -> torch.Tensor:
        """(N, NUM_MASK, mask_size, mask_size) float targets inside `boxes`; zeros where absent.

        `boxes` is (N, 4), one box per instance, or (N, NUM_MASK, 4), one box per mask. Only `names` (default:
        all) are rasterised; the other names' targets stay zero. Polygons are
        rasterised as detectron2's PolygonMasks.crop_and_resize does (same pixels), but in one pycocotools
        call for every present mask of every name, instead of one call per ROI.
        """
        n, k = len(self), len(self.names)
        if boxes.dim() == 2:
            boxes = boxes.unsqueeze(1).expand(n, k, 4)
        out = torch.zeros((n, k, mask_size, mask_size), device=boxes.device)
        poly_jobs = []
        for j, name in enumerate(self.names):
            idx = self.present[:, j].nonzero().flatten()
            if not len(idx) or (names is not None and name not in names):
                continue
            masks = self.masks[name]
            if isinstance(masks, PolygonMasks):
                poly_jobs += [(int(i), j, masks.polygons[i]) for i in idx]
            else:
                crops = masks[idx].crop_and_resize(boxes[idx.to(boxes.device), j].to(masks.device), mask_size)
                out[idx.to(boxes.device), j] = crops.to(device=boxes.device, dtype=out.dtype)
        if poly_jobs:
            rows = torch.tensor([r for r, _, _ in poly_jobs])
            cols = torch.tensor([c for _, c, _ in poly_jobs])
            bitmaps = rasterize_polygons_in_boxes(
                [p for _, _, p in poly_jobs], boxes[rows.to(boxes.device), cols.to(boxes.device)], mask_size
            )
            out[rows.to(boxes.device), cols.to(boxes.device)] = bitmaps.to(device=boxes.device, dtype=out.dtype)
        return out

    def get_bounding_boxes(self) -> Boxes:
        """Boxes enclosing every present mask of each instance (zero boxes where none is present)."""
        return Boxes(_union_boxes(self))

    @classmethod
    def cat(cls, items: list[MultiMasks]) -> MultiMasks:
        """Concatenate (as `Instances.cat` does); a name held as polygons in some items and bitmaps in others
        becomes bitmaps, of the bitmaps' image size."""
        names = items[0].names
        if any(m.names != names for m in items):
            raise ValueError("cannot concatenate MultiMasks with different mask names")
        sets = []
        for name in names:
            parts = [m.masks[name] for m in items]
            bitmaps = [p for p in parts if isinstance(p, BitMasks)]
            if bitmaps and len(bitmaps) < len(parts):
                h, w = bitmaps[0].image_size
                parts = [p if isinstance(p, BitMasks) else BitMasks.from_polygon_masks(p, h, w) for p in parts]
            sets.append(type(parts[0]).cat(parts))
        return cls(names, sets, torch.cat([m.present for m in items]))

    def __repr__(self) -> str:
        return f"MultiMasks(num_instances={len(self)}, names={list(self.names)})"


def rasterize_polygons_in_boxes(polygons: list[list[np.ndarray]], boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """(R, M, M) bool masks: polygons[i] rasterised inside boxes[i] at M x M.

    Same coordinate transform and rasteriser (pycocotools) as detectron2's `rasterize_polygons_within_box`,
    batched: one frPyObjects and one decode call for all R masks.
    """
    parts = [np.asarray(p, dtype=np.float64) for polys in polygons for p in polys]
    if not parts:
        return torch.zeros((len(polygons), mask_size, mask_size), dtype=torch.bool)
    boxes = boxes.detach().cpu().double().numpy()
    owner = np.repeat(np.arange(len(polygons)), [len(polys) for polys in polygons])
    lengths = np.array([len(p) for p in parts])
    # every vertex of every polygon moved into its box's M x M frame at once
    per_vertex = np.repeat(owner, lengths // 2)
    scale = mask_size / np.maximum(boxes[:, 2:] - boxes[:, :2], 0.1)
    xy = (np.concatenate(parts).reshape(-1, 2) - boxes[per_vertex, :2]) * scale[per_vertex]
    rles = mask_util.frPyObjects(np.split(xy.ravel(), np.cumsum(lengths)[:-1]), mask_size, mask_size)
    per_mask: list[list] = [[] for _ in polygons]
    for i, rle in zip(owner, rles):
        per_mask[i].append(rle)
    empty = mask_util.encode(np.zeros((mask_size, mask_size), np.uint8, order="F"))
    merged = [mask_util.merge(r) if len(r) > 1 else (r[0] if r else empty) for r in per_mask]
    return torch.from_numpy(mask_util.decode(merged)).permute(2, 0, 1).to(torch.bool)


def _is_present(segm: Segmentation) -> bool:
    if isinstance(segm, list):
        return len(segm) > 0
    if isinstance(segm, dict):
        return bool(mask_util.area(segm) > 0)
    return bool(np.asarray(segm).any())


def _to_bitmap(segm: Segmentation, h: int, w: int) -> torch.Tensor:
    if isinstance(segm, list):
        return torch.from_numpy(polygons_to_bitmask(segm, h, w))
    if isinstance(segm, dict):
        segm = mask_util.decode(segm)
    arr = np.asarray(segm)
    if arr.shape != (h, w):
        raise ValueError(f"mask of shape {arr.shape} does not match the image size {(h, w)}")
    return torch.from_numpy(arr.astype(bool))


def _union_boxes(mm: MultiMasks) -> torch.Tensor:
    """(N, 4) XYXY boxes enclosing each instance's present masks; zeros where none is present."""
    lo = torch.full((len(mm), 2), float("inf"))
    hi = torch.full((len(mm), 2), float("-inf"))
    for k, name in enumerate(mm.names):
        idx = mm.present[:, k].nonzero().flatten().cpu()
        if len(idx):
            b = mm.masks[name][idx].get_bounding_boxes().tensor.cpu().float()
            lo[idx] = torch.minimum(lo[idx], b[:, :2])
            hi[idx] = torch.maximum(hi[idx], b[:, 2:])
    out = torch.cat([lo, hi], dim=1)
    out[~torch.isfinite(out).all(dim=1)] = 0
    return out
