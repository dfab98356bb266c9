"""Clicks and seconds per mask for a simulated annotator: manual polygons against each labelling assist.

On synthetic images with known masks (`multimask synth`, 2 megapixels by default), each present mask of each
instance is drawn until it reaches IoU >= `--target` with the truth, by:
- manual: vertices placed on the true boundary, as few as reach the target (the truth's outline simplified with
  a growing tolerance), plus one click to close the polygon;
- box (GrabCut): a box (two clicks) around the true mask, then one corrective click at a time (include on the
  largest missed region, exclude on the largest wrong one);
- lasso: n clicks spread evenly on the true outline, the magnetic lasso tracing between them, plus the closing
  click on the first; n grows until the target is reached;
- wand: one click in the middle of the mask, at the editor's default tolerance (no corrections);
- part (the second mask only): the I key, the part proposed inside the instance's true first mask, then
  corrective clicks as for the box.
Each method may spend at most `--max-clicks`. Every request goes through the app's `AssistService` (checks, the
cached image), and its seconds are the server's time per request. The targets of issue 16: at least 3x fewer
clicks than manual for the primary (an assist) and for the secondary with the part assist; < 300 ms a request.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_json  # noqa: E402

WAND_TOLERANCE = 12  # the editor's default


def _mask_of(parts: list, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for p in parts:
        cv2.fillPoly(mask, [np.round(np.asarray(p, dtype=float).reshape(-1, 2) - 0.5).astype(np.int32)], 1)
    return mask.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _contours(truth: np.ndarray) -> list[np.ndarray]:
    contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


class Annotator:
    """One mask to draw: the truth, the image, and the service that answers assist requests (timed)."""

    def __init__(self, service, image_path: Path, truth: np.ndarray, obj: list | None, target: float, limit: int):
        self.service, self.path, self.truth, self.obj = service, image_path, truth, obj
        self.target, self.limit = target, limit
        self.seconds: list[float] = []

    def ask(self, request: dict) -> dict:
        t = time.perf_counter()
        reply = self.service.run(self.path, request)
        self.seconds.append(time.perf_counter() - t)
        return reply

    def reached(self, parts: list) -> tuple[bool, np.ndarray]:
        got = _mask_of(parts, *self.truth.shape)
        return _iou(got, self.truth) >= self.target, got

    def correct(self, got: np.ndarray, fg: list, bg: list) -> None:
        """One corrective click in the middle of the largest error: include what is missed, exclude what is wrong."""
        missed, wrong = self.truth & ~got, got & ~self.truth
        error, points = (missed, fg) if missed.sum() >= wrong.sum() else (wrong, bg)
        dist = cv2.distanceTransform(error.astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        points.append([float(x), float(y)])

    def manual(self) -> int | None:
        clicks = 0
        for contour in _contours(self.truth):
            part = self.truth & _mask_of([contour.reshape(-1).astype(float) + 0.5], *self.truth.shape)
            best = None
            for eps in (8.0, 5.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5):
                pts = cv2.approxPolyDP(contour.reshape(-1, 1, 2), eps, True).reshape(-1, 2)
                if len(pts) >= 3 and _iou(_mask_of([pts.reshape(-1) + 0.5], *self.truth.shape), part) >= self.target:
                    best = len(pts) + 1
                    break
            if best is None:
                return None
            clicks += best
        return clicks if clicks <= 10 * self.limit else None

    def box(self) -> int | None:
        ys, xs = np.nonzero(self.truth)
        h, w = self.truth.shape
        box = [
            float(max(xs.min() - 3, 0)),
            float(max(ys.min() - 3, 0)),
            float(min(xs.max() + 4, w)),
            float(min(ys.max() + 4, h)),
        ]
        return self._refined({"kind": "grabcut", "box": box}, first_clicks=2)

    def part(self) -> int | None:
        return self._refined({"kind": "part", "object": self.obj}, first_clicks=1)

    def _refined(self, request: dict, first_clicks: int) -> int | None:
        fg, bg = [], []
        for clicks in range(first_clicks, self.limit + 1):
            ok, got = self.reached(self.ask({**request, "foreground": fg, "background": bg})["parts"])
            if ok:
                return clicks
            self.correct(got, fg, bg)
        return None

    def lasso(self) -> int | None:
        contours = _contours(self.truth)
        if len(contours) != 1:  # one polygon per lasso
            return None
        ring = contours[0].astype(float) + 0.5
        for n in range(3, self.limit):
            anchors = [ring[int(k * len(ring) / n)].tolist() for k in range(n)]
            points = [anchors[0]]
            for a, b in zip(anchors, anchors[1:] + anchors[:1]):
                points += self.ask({"kind": "lasso", "start": a, "end": b})["points"]
            if self.reached([np.asarray(points[:-1]).reshape(-1).tolist()])[0]:
                return n + 1  # the closing click on the first
        return None

    def wand(self) -> int | None:
        dist = cv2.distanceTransform(self.truth.astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        reply = self.ask({"kind": "flood", "point": [float(x), float(y)], "tolerance": WAND_TOLERANCE})
        return 1 if self.reached(reply["parts"])[0] else None


METHODS: dict[str, Callable[[Annotator], int | None]] = {
    "manual": Annotator.manual,
    "box": Annotator.box,
    "lasso": Annotator.lasso,
    "wand": Annotator.wand,
    "part": Annotator.part,
}


def main() -> None:
    from app.core.assists import AssistService
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
    service = AssistService()
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_synthetic_dataset(tmp, args.images, 0, seed=3, height=args.height, width=args.width)
        dicts, meta = load_multimask_json(paths["train"])
        names = meta["mask_names"]
        records: list[dict] = []  # one per mask drawn: {"name", method: clicks or None}
        seconds: dict[tuple[str, str], list[float]] = {(n, m): [] for n in names for m in METHODS}
        for d in dicts:
            path = Path(d["file_name"])
            for ann in d["annotations"]:
                masks = ann["multimask"]
                obj = masks.get(names[0])
                for name, segm in masks.items():
                    if not segm or isinstance(segm, dict):
                        continue
                    truth = _mask_of(segm, d["height"], d["width"])
                    if truth.sum() < 50:
                        continue
                    record: dict = {"name": name}
                    for method, run in METHODS.items():
                        if method == "part" and (name == names[0] or not obj or isinstance(obj, dict)):
                            continue
                        a = Annotator(service, path, truth, obj, args.target, args.max_clicks)
                        record[method] = run(a)
                        seconds[name, method] += a.seconds
                    records.append(record)
    print(f"machine: {machine()}; {args.images} images of {args.width} x {args.height}, target IoU {args.target}")
    print(
        "| mask | method | masks | reached | clicks (mean, where reached) | fewer than manual (same masks) | "
        "s per request (median / max) |"
    )
    print("|---|---|---|---|---|---|---|")
    out: dict[str, dict] = {}
    for name in names:
        mine = [r for r in records if r["name"] == name]
        for method in METHODS:
            tried = [r for r in mine if method in r]
            if not tried:
                continue
            reached = [r[method] for r in tried if r[method] is not None]
            both = [r for r in tried if r[method] is not None and r["manual"] is not None]
            ratio = float(np.mean([r["manual"] for r in both]) / np.mean([r[method] for r in both])) if both else None
            s = np.asarray(seconds[name, method]) if seconds[name, method] else np.asarray([np.nan])
            mean = float(np.mean(reached)) if reached else None
            out.setdefault(name, {})[method] = {
                "masks": len(tried),
                "reached": len(reached),
                "clicks": mean,
                "ratio": ratio,
                "median_s": float(np.median(s)),
                "max_s": float(np.max(s)),
            }
            timing = f"{np.median(s):.3f} / {np.max(s):.3f}" if method != "manual" else "-"
            text = (f"{mean:.1f}", f"{ratio:.2f}x") if mean is not None else ("-", "-")
            print(f"| {name} | {method} | {len(tried)} | {len(reached)} | {text[0]} | {text[1]} | {timing} |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "results": out})


if __name__ == "__main__":
    main()
