"""How well can an M x M mask grid in an instance's box represent each mask name of a dataset?

Each present mask is turned into the training target the head learns (rasterised on an M x M grid inside the
instance's box, which encloses all of its masks) and pasted back at image resolution as inference does; its
IoU with the true mask is the best a perfectly trained head could reach. A part much smaller than its object
gets few grid cells: if its ceiling is low, raise MODEL.ROI_MULTI_MASK_HEAD.POOLER_RESOLUTION (M is twice it),
or predict it in a box of its own (`--part-box NAME`: the grid of the mask's true box enlarged by
PART_BOX_CONTEXT, as MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS does with a perfectly regressed box).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_json  # noqa: E402


def grid_ceiling(json_file: str, sizes: list[int], part_box: list[str] = (), context: float = 1.25) -> dict:
    """{f"{name}@{M}": {"masks", "mean_iou", "iou>=0.75", "iou>=0.9"}} over the dataset's present masks.

    Masks named in `part_box` are drawn on the grid of their own box enlarged by `context` ("(own box)" keys).
    """
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import BoxMode

    from multimask.data import load_multimask_json
    from multimask.modeling.part_box import enlarge_boxes, part_boxes_of
    from multimask.structures import MultiMasks

    dicts, meta = load_multimask_json(json_file, check_images=False)
    names = meta["mask_names"]
    label = {n: f"{n}@{{}} (own box)" if n in part_box else f"{n}@{{}}" for n in names}
    ious: dict[str, list[float]] = {label[n].format(m): [] for n in names for m in sizes}
    for d in dicts:
        anns, hw = d["annotations"], (d["height"], d["width"])
        if not anns:
            continue
        mm = MultiMasks.from_segmentations(names, [a["multimask"] for a in anns], hw)
        boxes = torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns], dtype=torch.float32
        )
        per_mask = boxes.unsqueeze(1).repeat(1, len(names), 1)
        for n in part_box:
            per_mask[:, names.index(n)] = enlarge_boxes(part_boxes_of(mm, [n])[:, 0], context)
        for m in sizes:
            grid = mm.crop_and_resize(per_mask, m)
            for k, name in enumerate(names):
                idx = mm.present[:, k].nonzero().flatten()
                if not len(idx):
                    continue
                pasted = paste_masks_in_image(grid[idx, k], per_mask[idx, k], hw)
                truth = _full_resolution(mm.masks[name][idx], hw)
                inter = (pasted & truth).flatten(1).sum(1)
                union = (pasted | truth).flatten(1).sum(1).clamp(min=1)
                ious[label[name].format(m)] += (inter / union).tolist()
    out = {}
    for key, values in ious.items():
        v = np.asarray(values)
        out[key] = {
            "masks": len(v),
            "mean_iou": float(v.mean()) if len(v) else None,
            "iou>=0.75": float((v >= 0.75).mean()) if len(v) else None,
            "iou>=0.9": float((v >= 0.9).mean()) if len(v) else None,
        }
    return out


def _full_resolution(masks, hw: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool bitmaps of a PolygonMasks or BitMasks."""
    from detectron2.structures import BitMasks

    if not isinstance(masks, BitMasks):
        masks = BitMasks.from_polygon_masks(masks, *hw)
    return masks.tensor.to(torch.bool)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json_file", help="a multimask dataset JSON")
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[28, 56],
        help="mask grid sizes M (2 x POOLER_RESOLUTION); 28 is the default head's",
    )
    p.add_argument(
        "--part-box",
        nargs="+",
        default=[],
        metavar="NAME",
        help="mask names drawn on their own box's grid (MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS)",
    )
    p.add_argument("--context", type=float, default=1.25, help="PART_BOX_CONTEXT: the own box's enlargement")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    res = grid_ceiling(args.json_file, args.sizes, args.part_box, args.context)
    print("| mask @ grid | masks | mean IoU | share IoU >= 0.75 | share IoU >= 0.9 |\n|---|---|---|---|---|")
    for key, r in res.items():
        if r["masks"]:
            print(f"| {key} | {r['masks']} | {r['mean_iou']:.3f} | {r['iou>=0.75']:.2f} | {r['iou>=0.9']:.2f} |")
    write_json(
        args.json, {"json_file": args.json_file, "part_box": args.part_box, "context": args.context, "results": res}
    )


if __name__ == "__main__":
    main()
