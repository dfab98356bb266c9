"""Crash soak of the Label store: acknowledged saves survive `kill -9`, and opening repairs what a kill left.

A worker subprocess saves annotations of random images of one labelling dataset (20 to 30 instances each, a
random status) and prints an ack line after each `save()` returns. The parent kills it with SIGKILL at random
moments (after a random ack, a random 0-15 ms into the next save) and starts a new one, until `--saves` saves
are acknowledged. Then, in this process with nothing cached, it opens the dataset and counts:

- lost: acknowledged saves whose revision (and content) is not on disk;
- corrupt: JSON files of the dataset that do not parse;
- drifted: images whose status in index.json differs from their annotations file's, after opening;
- leftover: temporary files (`.*.tmp`) left in the dataset after opening.

All four must be 0 (exit status 1 otherwise). What the kills left before opening is printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAME = "soak"
STATUSES = (None, None, "in_progress", "done", "unlabelled")


def _instances(rng: random.Random, marker: str) -> list[dict]:
    """20 to 30 instances of 20-point polygons; the first one's id is `marker`."""
    out = []
    for k in range(rng.randint(20, 30)):
        cx, cy = rng.uniform(20, 236), rng.uniform(20, 236)
        ring = [
            round(v, 2)
            for j in range(20)
            for v in (
                cx + 15 * rng.uniform(0.6, 1) * math.cos(j * math.pi / 10),
                cy + 15 * rng.uniform(0.6, 1) * math.sin(j * math.pi / 10),
            )
        ]
        out.append(
            {"id": marker if k == 0 else f"i{k}", "class": "leaf", "masks": {"primary": [ring], "secondary": []}}
        )
    return out


def worker(root: str, saves: int, seed: int) -> None:
    """Save `saves` times, printing `ack <image id> <revision> <marker>` after each save returns; first
    `found <temp files> <drifted statuses>`: what the last kill left, before opening repairs it."""
    from app.core.datasets.storage import LabelStore

    temps, _, drifted = _disk_state(Path(root) / NAME)
    print(f"found {temps} {drifted}", flush=True)
    ds = LabelStore(root).open(NAME)
    rng = random.Random(seed)
    ids = [e["id"] for e in ds.images()]
    print("ready", flush=True)
    for _ in range(saves):
        image_id = rng.choice(ids)
        revision = ds.load(image_id)["revision"] + 1
        marker = f"s{revision}x{rng.randrange(10**6)}"
        ds.save(image_id, revision - 1, _instances(rng, marker), status=rng.choice(STATUSES))
        print(f"ack {image_id} {revision} {marker}", flush=True)


def _build(root: Path, images: int) -> None:
    import cv2
    import numpy as np

    from app.core.datasets.storage import LabelStore

    ds = LabelStore(root).create(NAME, ["leaf"])
    rng = np.random.default_rng(0)
    for k in range(images):
        img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        ds.add_image_bytes(f"im{k}.png", cv2.imencode(".png", img)[1].tobytes())


def _run_workers(root: Path, saves: int, kills: int, rng: random.Random) -> tuple[dict, int, list[int]]:
    """Run workers until `saves` acks, killing `kills` of them; returns ({image id: (revision, marker)}, starts,
    [temp files, drifted statuses] the workers found left by the kills)."""
    kill_after = sorted(rng.sample(range(1, saves), kills))
    acked: dict[str, tuple[int, str]] = {}
    count, starts, found = 0, 0, [0, 0]
    while count < saves:
        starts += 1
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(root),
                "--saves",
                str(saves - count),
                "--seed",
                str(rng.randrange(10**9)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        killed = False
        for line in proc.stdout:
            if line.startswith("found "):
                found = [a + int(b) for a, b in zip(found, line.split()[1:])]
            if not line.startswith("ack "):
                continue
            _, image_id, revision, marker = line.split()
            acked[image_id] = (int(revision), marker)
            count += 1
            if kill_after and count == kill_after[0]:
                kill_after.pop(0)
                threading.Event().wait(rng.uniform(0, 0.015))  # somewhere inside the next save
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        proc.stdout.close()
        proc.wait(timeout=120)
        if not killed and proc.returncode != 0:
            raise SystemExit(f"worker failed with exit status {proc.returncode}")
    return acked, starts, found


def _disk_state(folder: Path) -> tuple[int, int, int]:
    """(temp files, JSON files that do not parse, images whose index status differs from their annotations')."""
    temps = sum(1 for p in folder.rglob(".*.tmp"))
    corrupt, docs = 0, {}
    for path in [folder / "dataset.json", folder / "index.json", *sorted((folder / "annotations").glob("*.json"))]:
        try:
            docs[path.name] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            corrupt += 1
    index = docs.get("index.json", {"images": []})["images"]
    drifted = sum(
        1
        for e in index
        if f"{e['id']}.json" in docs and docs[f"{e['id']}.json"].get("status", e["status"]) != e["status"]
    )
    return temps, corrupt, drifted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--saves", type=int, default=1000)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", metavar="DATA_ROOT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.saves, args.seed)
    from app.core.datasets import storage as store_module
    from app.core.datasets.storage import LabelStore

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-saves-") as tmp:
        root = Path(tmp)
        _build(root, args.images)
        t = time.perf_counter()
        acked, starts, found = _run_workers(root, args.saves, args.kills, rng)
        elapsed = time.perf_counter() - t
        folder = root / NAME
        temps_before, _, drifted_before = _disk_state(folder)
        store_module._STATES.clear()  # forget the dataset as built: open it as a new process would
        ds = LabelStore(root).open(NAME)
        lost = 0
        for image_id, (revision, marker) in acked.items():
            doc = ds.load(image_id)
            if doc["revision"] < revision or (doc["revision"] == revision and doc["instances"][0]["id"] != marker):
                lost += 1
        leftover, corrupt, drifted = _disk_state(folder)
        print(f"{args.saves} acknowledged saves, {args.kills} kill -9, {starts} worker starts, {elapsed:.1f} s")
        print(
            f"left by the kills, found by the next worker before it opened the dataset: {found[0]} temp files, "
            f"{found[1]} index statuses behind their annotations; before the final open: {temps_before} and "
            f"{drifted_before}"
        )
        print(f"lost {lost}  corrupt {corrupt}  drifted {drifted}  leftover {leftover}")
        if lost or corrupt or drifted or leftover:
            sys.exit(1)


if __name__ == "__main__":
    main()
