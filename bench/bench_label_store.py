"""Label tab storage: save latency and open-and-list time of a 10,000-image labelling dataset.

Builds the dataset through the public API (`add_images_from_folder` on tiny 8x8 PNGs), then measures
the median of `save()` of one image's annotations (5 instances x 2 masks) over random images (first
saves, which change the image's status and so rewrite index.json, then saves again), and the median time of
`LabelStore(root).open(name).images()` with fresh objects: cold (the process-wide cache cleared, so
index.json is read and parsed as in a new process) and warm. Targets: save < 50 ms, open and list < 1 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAVE_TARGET_S, OPEN_TARGET_S = 0.050, 1.0


def _instances(rng: random.Random, width: int, height: int, names: list[str]) -> list[dict]:
    """5 instances, each a 12-point primary polygon and a 6-point secondary inside it."""
    out = []
    for k in range(5):
        cx, cy, r = rng.uniform(2, width - 2), rng.uniform(2, height - 2), rng.uniform(1, 2)
        ring = [
            (cx + r * c, cy + r * s)
            for c, s in (
                (1, 0),
                (0.87, 0.5),
                (0.5, 0.87),
                (0, 1),
                (-0.5, 0.87),
                (-0.87, 0.5),
                (-1, 0),
                (-0.87, -0.5),
                (-0.5, -0.87),
                (0, -1),
                (0.5, -0.87),
                (0.87, -0.5),
            )
        ]
        primary = [round(v, 2) for p in ring for v in p]
        secondary = [
            round(cx + (x - cx) * 0.4, 2) if i % 2 == 0 else round(cy + (x - cy) * 0.4, 2)
            for i, x in enumerate(primary[:12])
        ]
        out.append({"id": f"b{k}", "class": "leaf", "masks": {names[0]: [primary], names[1]: [secondary]}})
    return out


def main() -> None:
    import cv2
    import numpy as np

    from app.core.datasets import storage as store_module
    from app.core.datasets.storage import LabelStore
    from app.views.label import GALLERY_PAGE, LabelView
    from bench.common import machine, write_json

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--saves", type=int, default=200)
    p.add_argument("--opens", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-label-") as tmp:
        tmp = Path(tmp)
        src = tmp / "uploads"
        src.mkdir()
        t = time.perf_counter()
        for i in range(args.images):
            img = np.full((8, 8, 3), i % 256, np.uint8)
            (src / f"img_{i:05d}.png").write_bytes(cv2.imencode(".png", img)[1].tobytes())
        ds = LabelStore(tmp / "data").create("bench", ["leaf", "fruit"])
        added, errors = ds.add_images_from_folder(src, tmp)
        build_s = time.perf_counter() - t
        assert len(added) == args.images and not errors, errors[:3]
        ids, names = [e["id"] for e in added], ds.mask_names

        save_times, resave_times = [], []
        chosen = [rng.choice(ids) for _ in range(args.saves)]
        for times in (save_times, resave_times):  # first saves rewrite index.json (status changes), then not
            for image_id in chosen:
                instances = _instances(rng, 8, 8, names)
                base = ds.load(image_id)["revision"]
                t = time.perf_counter()
                ds.save(image_id, base, instances)
                times.append(time.perf_counter() - t)

        open_times, warm_times = [], []
        for times in (open_times, warm_times):
            for _ in range(args.opens):
                if times is open_times:
                    store_module._STATES.clear()  # cold: as in a fresh process, index.json read and parsed
                t = time.perf_counter()
                listed = LabelStore(tmp / "data").open("bench").images()
                times.append(time.perf_counter() - t)
                assert len(listed) == args.images
        index_kib = (ds.folder / "index.json").stat().st_size / 1024
        view_times = []  # the Label tab's handler: index, first gallery page (thumbnails), first document
        for _ in range(args.opens):
            store_module._STATES.clear()
            t = time.perf_counter()
            gallery = LabelView(tmp / "data", tmp / "runs").open_dataset("bench", "all", 1)[0]
            view_times.append(time.perf_counter() - t)
            assert len(gallery) == GALLERY_PAGE

    save_s, open_s = statistics.median(save_times), statistics.median(open_times)
    resave_s, warm_s = statistics.median(resave_times), statistics.median(warm_times)
    save_p95 = sorted(save_times)[int(0.95 * (len(save_times) - 1))]
    print(
        f"\nmachine: {machine()}\n{args.images} images (8x8 PNG, index.json {index_kib:.0f} KiB), "
        f"built in {build_s:.1f} s; {args.saves} saves (5 instances x 2 masks) on random images, "
        f"{args.opens} opens\n"
    )
    print("| operation | median | target |\n|---|---|---|")
    print(
        f"| save() first time, status changes (p95 {save_p95 * 1000:.1f} ms) | {save_s * 1000:.1f} ms | "
        f"< {SAVE_TARGET_S * 1000:.0f} ms {'ok' if save_s < SAVE_TARGET_S else 'MISSED'} |"
    )
    print(
        f"| save() again, status unchanged (index.json not rewritten) | {resave_s * 1000:.1f} ms | "
        f"< {SAVE_TARGET_S * 1000:.0f} ms {'ok' if resave_s < SAVE_TARGET_S else 'MISSED'} |"
    )
    print(
        f"| open() + images(), cold (index.json parsed) | {open_s * 1000:.1f} ms | "
        f"< {OPEN_TARGET_S * 1000:.0f} ms {'ok' if open_s < OPEN_TARGET_S else 'MISSED'} |"
    )
    print(
        f"| open() + images(), already open in the process | {warm_s * 1000:.1f} ms | "
        f"< {OPEN_TARGET_S * 1000:.0f} ms {'ok' if warm_s < OPEN_TARGET_S else 'MISSED'} |"
    )
    view_s = statistics.median(view_times)
    print(
        f"| Label tab: open the dataset (gallery page of {GALLERY_PAGE} thumbnails, first image), cold | "
        f"{view_s * 1000:.1f} ms | < {OPEN_TARGET_S * 1000:.0f} ms {'ok' if view_s < OPEN_TARGET_S else 'MISSED'} |"
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "images": args.images,
            "build_s": build_s,
            "save_median_s": save_s,
            "save_p95_s": save_p95,
            "resave_median_s": resave_s,
            "open_list_median_s": open_s,
            "open_list_warm_median_s": warm_s,
            "view_open_median_s": view_s,
            "targets": {"save_s": SAVE_TARGET_S, "open_list_s": OPEN_TARGET_S},
        },
    )


if __name__ == "__main__":
    main()
