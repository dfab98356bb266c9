"""Fairness of the Label editor's saves: annotators' save latency while clients send maximal payloads.

Starts the real app (`launch.py` on loopback, a fresh data root) and calls the editor's server function
`save_annotations` over HTTP as the browser does (`POST /gradio_api/component_server`). Eight annotators each
save their own image at a human pace (every 1 to 2 s, 20 to 50 instances of a 40-point primary and a 15-point
secondary); first alone (the baseline), then while two clients save maximal legal payloads (MAX_INSTANCES
instances, MAX_TOTAL_POINTS vertices in all) back to back on their own images. Prints the annotators' p50/p95
save latency in both phases, their ratio, and the big saves' count and latency. Target: p95 < 500 ms with the
big payloads. `--switch-interval S` starts the app with `sys.setswitchinterval(S)` (CPython's default is
0.005 s): an annotator's save waits for the GIL at each of its many I/O calls while the big saves compute.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDE = 2048  # px, the images' width and height
P95_TARGET_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ring(rng: random.Random, cx: float, cy: float, r: float, n: int) -> list[float]:
    return [
        round(min(max(v, 0.0), SIDE), 2)
        for j in range(n)
        for v in (
            cx + r * rng.uniform(0.8, 1) * math.cos(2 * math.pi * j / n),
            cy + r * rng.uniform(0.8, 1) * math.sin(2 * math.pi * j / n),
        )
    ]


def annotator_instances(rng: random.Random) -> list[dict]:
    """20 to 50 instances: a 40-point primary with a 15-point secondary inside it."""
    out = []
    for k in range(rng.randint(20, 50)):
        cx, cy = rng.uniform(60, SIDE - 60), rng.uniform(60, SIDE - 60)
        out.append(
            {
                "id": f"a{k}",
                "class": "leaf",
                "masks": {"primary": [_ring(rng, cx, cy, 50, 40)], "secondary": [_ring(rng, cx, cy, 20, 15)]},
            }
        )
    return out


def maximal_instances(rng: random.Random) -> list[dict]:
    """A maximal legal payload: MAX_INSTANCES instances sharing MAX_TOTAL_POINTS vertices."""
    from app.core.datasets.payload import MAX_INSTANCES, MAX_TOTAL_POINTS

    per = MAX_TOTAL_POINTS // MAX_INSTANCES
    return [
        {
            "id": f"h{k}",
            "class": "leaf",
            "masks": {
                "primary": [_ring(rng, rng.uniform(60, SIDE - 60), rng.uniform(60, SIDE - 60), 50, per)],
                "secondary": [],
            },
        }
        for k in range(MAX_INSTANCES)
    ]


class Client:
    """Calls the editor's `save_annotations` over HTTP, as the browser's editor does."""

    def __init__(self, url: str, component_id: int, dataset: str, image_id: str):
        self.url, self.component_id, self.dataset, self.image_id = url, component_id, dataset, image_id
        self.revision = 0

    def save(self, instances_json: str) -> float:
        """One save from the current revision; returns its latency in seconds (RuntimeError if refused)."""
        head = json.dumps(
            {"component_id": self.component_id, "fn_name": "save_annotations", "session_hash": f"bench{self.image_id}"}
        )[:-1]
        body = (
            f'{head},"data":[{json.dumps(self.dataset)},{json.dumps(self.image_id)},{self.revision},'
            f"{instances_json},null]}}"
        ).encode()
        req = urllib.request.Request(
            self.url + "gradio_api/component_server", body, {"Content-Type": "application/json"}
        )
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=300) as r:
            result = json.loads(r.read())
        elapsed = time.perf_counter() - t
        if not result.get("ok"):
            raise RuntimeError(f"save refused: {str(result)[:300]}")
        self.revision = result["revision"]
        return elapsed


def _start_app(data_root: Path, runs_root: Path, switch_interval: float | None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    argv = ["launch.py", "--data-root", str(data_root), "--runs-root", str(runs_root), "--port", str(port)]
    if switch_interval is not None:
        argv = [
            "-c",
            f"import runpy, sys; sys.setswitchinterval({switch_interval}); sys.argv = {argv!r}; "
            "runpy.run_path('launch.py', run_name='__main__')",
        ]
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            threading.Event().wait(0.5)
    proc.kill()
    raise SystemExit("the app did not answer /config within 300 s")


def _editor_id(url: str) -> int:
    with urllib.request.urlopen(url + "config", timeout=30) as r:
        config = json.loads(r.read())
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "mm-editor")


def _phase(annotators: list[Client], hostiles: list[Client], seconds: float, seed: int) -> tuple[list, list]:
    """Run the annotators (and the hostile clients) for `seconds`; returns (annotator latencies, big ones)."""
    stop = threading.Event()
    small: list[float] = []
    big: list[float] = []
    errors: list[str] = []

    def annotate(client: Client, k: int) -> None:
        rng = random.Random(seed * 100 + k)
        while not stop.wait(rng.uniform(1.0, 2.0)):
            try:
                small.append(client.save(json.dumps(annotator_instances(rng), separators=(",", ":"))))
            except (RuntimeError, OSError) as e:
                errors.append(str(e))

    def flood(client: Client, k: int) -> None:
        payload = json.dumps(maximal_instances(random.Random(k)), separators=(",", ":"))
        while not stop.is_set():
            try:
                big.append(client.save(payload))
            except (RuntimeError, OSError) as e:
                errors.append(str(e))

    threads = [threading.Thread(target=annotate, args=(c, k)) for k, c in enumerate(annotators)]
    threads += [threading.Thread(target=flood, args=(c, k)) for k, c in enumerate(hostiles)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=600)
    if errors:
        raise SystemExit(f"{len(errors)} saves failed, e.g. {errors[0]}")
    return small, big


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    import cv2
    import numpy as np

    from app.core.datasets.storage import LabelStore
    from bench.common import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", type=int, default=8)
    p.add_argument("--hostile", type=int, default=2)
    p.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--switch-interval", type=float, help="the app's sys.setswitchinterval (default: CPython's)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fair-") as tmp:
        data_root = Path(tmp) / "data"
        ds = LabelStore(data_root).create("fair", ["leaf"])
        ids = []
        for k in range(2 * args.annotators + args.hostile):
            img = np.full((SIDE, SIDE, 3), k, np.uint8)
            ids.append(ds.add_image_bytes(f"im{k}.png", cv2.imencode(".png", img)[1].tobytes())["id"])
        proc, url = _start_app(data_root, Path(tmp) / "runs", args.switch_interval)
        try:
            editor = _editor_id(url)
            clients = [Client(url, editor, "fair", i) for i in ids]
            n = args.annotators
            base, _ = _phase(clients[:n], [], args.seconds, args.seed)
            loaded, big = _phase(clients[n : 2 * n], clients[2 * n :], args.seconds, args.seed + 1)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"machine: {machine()}")
    print(
        f"{n} annotators, one save every 1-2 s each, {args.seconds:.0f} s per phase, over HTTP to launch.py "
        f"(switch interval {args.switch_interval or 'default'})"
    )
    for label, values in (("alone", base), (f"with {args.hostile} clients of maximal payloads", loaded)):
        print(
            f"  {label:44s} saves {len(values):4d}  p50 {_pct(values, 50) * 1000:6.0f} ms  "
            f"p95 {_pct(values, 95) * 1000:6.0f} ms"
        )
    print(
        f"  p95 ratio (with / alone): {_pct(loaded, 95) / _pct(base, 95):.2f}; target p95 < "
        f"{P95_TARGET_S * 1000:.0f} ms: {'met' if _pct(loaded, 95) < P95_TARGET_S else 'NOT met'}"
    )
    if big:
        print(f"  maximal payloads: {len(big)} saves, median {statistics.median(big) * 1000:.0f} ms each")


if __name__ == "__main__":
    main()
