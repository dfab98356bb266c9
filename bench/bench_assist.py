"""Clicks and seconds per mask for a simulated annotator: manual polygons against the GrabCut assist.

On synthetic images with known masks (`multimask synth`, 2 megapixels by default), each present mask of each
instance is drawn until it reaches IoU >= `--target` with the truth:
- manual: vertices placed on the true boundary, as few as reach the target (the truth's outline simplified with
  a growing tolerance), plus one click to close the polygon;
- GrabCut (`app/core/assists.grabcut_object`): a box (two clicks) around the true mask, then one corrective click
  at a time (foreground on the largest missed region, background on the largest wrong one), up to `--max-clicks`.
Seconds are the server's time per assist request. The target of issue 16: at least 3x fewer clicks than manual.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_json  # noqa: E402


def _mask_of(parts: list, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for p in parts:
        cv2.fillPoly(mask, [np.round(np.asarray(p, dtype=float).reshape(-1, 2) - 0.5).astype(np.int32)], 1)
    return mask.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def manual_clicks(truth: np.ndarray, target: float) -> int | None:
    """Fewest boundary vertices (plus the closing click) whose polygon reaches `target` IoU; None if none does."""
    contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    clicks = 0
    for contour in contours:
        part = truth & _mask_of([contour.reshape(-1).astype(float) + 0.5], *truth.shape)
        best = None
        for eps in (8.0, 5.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5):
            pts = cv2.approxPolyDP(contour, eps, True).reshape(-1, 2)
            if len(pts) >= 3 and _iou(_mask_of([pts.reshape(-1) + 0.5], *truth.shape), part) >= target:
                best = len(pts) + 1
                break
        if best is None:
            return None
        clicks += best
    return clicks


def grabcut_clicks(image: np.ndarray, truth: np.ndarray, target: float, max_clicks: int) -> tuple[int | None, list]:
    """Clicks (box corners, then corrections) until the assist reaches `target` IoU, and each request's seconds."""
    from app.core.assists import grabcut_object

    ys, xs = np.nonzero(truth)
    box = (xs.min() - 3, ys.min() - 3, xs.max() + 4, ys.max() + 4)
    fg, bg, seconds = [], [], []
    for clicks in range(2, max_clicks + 1):
        t = time.perf_counter()
        parts = grabcut_object(image, box, fg, bg)
        seconds.append(time.perf_counter() - t)
        got = _mask_of(parts, *truth.shape)
        if _iou(got, truth) >= target:
            return clicks, seconds
        missed, wrong = truth & ~got, got & ~truth
        error, points = (missed, fg) if missed.sum() >= wrong.sum() else (wrong, bg)
        dist = cv2.distanceTransform(error.astype(np.uint8), cv2.DIST_L2, 3)  # the middle of the largest error
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        points.append((float(x), float(y)))
    return None, seconds


def main() -> None:
    from multimask.data import load_multimask_json
    from multimask.data.synth import generate_synthetic_dataset

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--target", type=float, default=0.85)
    p.add_argument("--max-clicks", type=int, default=8)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_synthetic_dataset(tmp, args.images, 0, seed=3, height=args.height, width=args.width)
        dicts, meta = load_multimask_json(paths["train"])
        results = {n: {"manual": [], "grabcut": [], "seconds": [], "failed": 0} for n in meta["mask_names"]}
        for d in dicts:
            image = cv2.imread(d["file_name"])
            for ann in d["annotations"]:
                for name, segm in ann["multimask"].items():
                    if not segm or isinstance(segm, dict):
                        continue
                    truth = _mask_of(segm, d["height"], d["width"])
                    if truth.sum() < 50:
                        continue
                    manual = manual_clicks(truth, args.target)
                    assisted, seconds = grabcut_clicks(image, truth, args.target, args.max_clicks)
                    r = results[name]
                    r["seconds"] += seconds
                    if manual is None or assisted is None:
                        r["failed"] += 1
                        continue
                    r["manual"].append(manual)
                    r["grabcut"].append(assisted)
    print(f"machine: {machine()}; {args.images} images of {args.width} x {args.height}, target IoU {args.target}")
    columns = ["mask", "instances", "manual clicks (mean)", "GrabCut clicks (mean)", "ratio", "not reached"]
    print("| " + " | ".join([*columns, "s per request (median / max)"]) + " |")
    print("|---|---|---|---|---|---|---|")
    out = {}
    for name, r in results.items():
        m, g = (
            np.mean(r["manual"]) if r["manual"] else float("nan"),
            np.mean(r["grabcut"]) if r["grabcut"] else float("nan"),
        )
        s = np.asarray(r["seconds"]) if r["seconds"] else np.asarray([np.nan])
        out[name] = {
            "instances": len(r["manual"]),
            "manual": m,
            "grabcut": g,
            "ratio": m / g,
            "failed": r["failed"],
            "median_s": float(np.median(s)),
            "max_s": float(np.max(s)),
        }
        print(
            f"| {name} | {len(r['manual'])} | {m:.1f} | {g:.1f} | {m / g:.2f}x | {r['failed']} | "
            f"{np.median(s):.3f} / {np.max(s):.3f} |"
        )
    write_json(args.json, {"machine": machine(), "args": vars(args), "results": out})


if __name__ == "__main__":
    main()
