"""Data mapper throughput: MultiMaskDatasetMapper (2 masks) vs detectron2's DatasetMapper (1 mask).

Same polygon-only synthetic images, same augmentations (the preset's resize and flip); rounds alternate
between the mappers and the median images/s of each is compared. Target: ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, multimask_cfg, polygon_only_dicts, stock_cfg, write_json  # noqa: E402


def main() -> None:
    from detectron2.data import DatasetMapper

    from multimask.data import MultiMaskDatasetMapper

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="scratch_mask_rcnn_R_50_FPN_gn")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()
    mm = multimask_cfg(args.preset, "cpu", 2)
    mappers = {"multimask": MultiMaskDatasetMapper(mm, True), "stock": DatasetMapper(stock_cfg(mm), True)}
    with tempfile.TemporaryDirectory() as tmp:
        dicts = polygon_only_dicts(Path(tmp), args.images)
        rates = {k: [] for k in mappers}
        for _ in range(args.rounds):
            for name, mapper in mappers.items():
                batch = copy.deepcopy(dicts)
                t = time.perf_counter()
                for d in batch:
                    mapper(d)
                rates[name].append(len(batch) / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["multimask"] / med["stock"]
    print(f"\nmachine: {machine()}\npreset {args.preset}, {len(dicts)} images, {args.rounds} rounds (median)\n")
    print("| mapper | images/s |\n|---|---|")
    print(f"| MultiMaskDatasetMapper (2 masks) | {med['multimask']:.1f} |")
    print(f"| DatasetMapper (1 mask) | {med['stock']:.1f} |")
    print(f"\nthroughput ratio {ratio:.3f}x (target >= 0.80x: {'ok' if ratio >= 0.8 else 'MISSED'})")
    write_json(args.json, {"machine": machine(), "images_per_s": med, "ratio": ratio, "target": 0.8})


if __name__ == "__main__":
    main()
