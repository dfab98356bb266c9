"""How much mask AP do a model's detections allow, and how much does the head's mask grid?

Each saved prediction (`multimask_predictions.json`, written by evaluation) is matched to the true instance of
its image and class whose box overlaps it most (box IoU >= `--match-iou`). The dataset is read with the
predictions' mask names, so a single-mask model's instances are boxed by that mask, as it was trained. The
prediction's mask is replaced by that instance's true mask (none where the instance lacks it) and AP is
computed again; unmatched predictions keep their own masks. What stays below 100 is the detector's (missed,
badly placed or badly scored objects), not the mask head's. With `--grids M`, the true mask is also drawn on
M x M cells of the predicted box and pasted back, as the head's output is: the AP a perfectly trained head with
that grid would reach. A model whose AP is near that ceiling is limited by its grid, not by its training.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_json  # noqa: E402


def with_true_masks(
    dicts: list[dict], records: list[dict], names: list[str], match_iou: float, grid: int | None = None
) -> list[dict]:
    """`records` with each matched prediction's masks `names` replaced by its true instance's (as RLE); with
    `grid`, the true mask as the head would draw it: on a grid x grid cells in the predicted box, pasted back."""
    from detectron2.structures import BoxMode

    from multimask.data.geometry import is_empty, to_rle

    by_image = {d["image_id"]: d for d in dicts}
    out = []
    for rec in records:
        rec = copy.deepcopy(rec)
        d = by_image[rec["image_id"]]
        anns = [a for a in d["annotations"] if a["category_id"] == rec["category_id"]]
        if anns:
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS) for a in anns]
            ious = mask_util.iou([rec["bbox"]], boxes, [0] * len(boxes))[0]
            best = int(np.argmax(ious))
            if ious[best] >= match_iou:
                h, w = d["height"], d["width"]
                for name in names:
                    segm = anns[best]["multimask"].get(name) or []
                    rle = (
                        to_rle(segm, h, w)
                        if not is_empty(segm)
                        else mask_util.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
                    )
                    if grid and not is_empty(segm):
                        rle = mask_util.encode(_through_grid(mask_util.decode(rle), rec["bbox"], grid))
                    counts = rle["counts"]
                    rec["multimask"][name] = {
                        "size": [h, w],
                        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                    }
        out.append(rec)
    return out


def _through_grid(mask: np.ndarray, box_xywh: list[float], grid: int) -> np.ndarray:
    """`mask` sampled on grid x grid cells of the box and pasted back at full size, as the mask head's output is."""
    import torch
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import BitMasks

    x, y, w, h = box_xywh
    box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
    cells = BitMasks(torch.from_numpy(mask).bool()[None]).crop_and_resize(box, grid).float()
    pasted = paste_masks_in_image(cells, box, mask.shape)
    return np.asfortranarray(pasted[0].numpy().astype(np.uint8))


def main() -> None:
    from multimask.data import load_multimask_json
    from multimask.evaluation import evaluate_records
    from multimask.io import read_json

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json_file", help="the multimask dataset JSON the predictions were made on")
    p.add_argument("predictions", help="a multimask_predictions.json written by evaluation")
    p.add_argument("--masks", nargs="+", default=None, help="mask names made perfect (default: each in turn)")
    p.add_argument("--match-iou", type=float, default=0.5, help="least box IoU of a prediction and its instance")
    p.add_argument(
        "--grids",
        type=int,
        nargs="*",
        default=[28, 56],
        help="also the true masks seen through the head's M x M output in the predicted box, for each M "
        "(2 x POOLER_RESOLUTION; 28 is the default head's)",
    )
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    records = read_json(args.predictions)
    predicted = next((list(r["multimask"]) for r in records if "multimask" in r), None)
    dicts, meta = load_multimask_json(args.json_file, check_images=False, mask_names=predicted)
    names, classes = meta["mask_names"], meta["thing_classes"]
    res = {"as predicted": evaluate_records(dicts, records, names, classes)}
    for name in args.masks or names:
        res[f"{name} perfect"] = evaluate_records(
            dicts, with_true_masks(dicts, records, [name], args.match_iou), names, classes
        )
        for m in args.grids:
            res[f"{name} perfect on a {m} x {m} grid"] = evaluate_records(
                dicts, with_true_masks(dicts, records, [name], args.match_iou, m), names, classes
            )
    print("| masks | box AP | " + " | ".join(f"{n} AP (AP50 / AP75)" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, r in res.items():
        cells = [
            f"{r[f'segm/{n}']['AP']:.1f} ({r[f'segm/{n}']['AP50']:.1f} / {r[f'segm/{n}']['AP75']:.1f})" for n in names
        ]
        print(f"| {label} | {r['bbox']['AP']:.1f} | " + " | ".join(cells) + " |")
    write_json(
        args.json,
        {"json_file": args.json_file, "predictions": args.predictions, "match_iou": args.match_iou, "results": res},
    )


if __name__ == "__main__":
    main()
