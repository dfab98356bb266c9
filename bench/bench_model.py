"""Training step time, inference time and peak memory: multimask (NUM_MASK 2) vs stock Mask R-CNN.

Both models share the backbone, box head, mask-head sizes, data and device; timings are interleaved
(A, B, A, B, ...) in one process so that machine noise hits both alike, and printed as ratios.
Peak memory is measured in a fresh child process per model (CUDA: max_memory_allocated; CPU: the
process's peak resident set, libraries included, so CPU ratios are diluted towards 1).
Targets: training <= 1.10x, inference <= 1.05x, memory <= 1.10x.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, multimask_cfg, polygon_only_dicts, stock_cfg, write_json  # noqa: E402


def _batches(cfg, dicts, is_multimask: bool, batch: int, n: int):
    from detectron2.data import DatasetMapper

    from multimask.data import MultiMaskDatasetMapper

    mapper = MultiMaskDatasetMapper(cfg, True) if is_multimask else DatasetMapper(cfg, True)
    return [[mapper(copy.deepcopy(dicts[(i * batch + j) % len(dicts)])) for j in range(batch)] for i in range(n)]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _models(args, dicts):
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    mm = multimask_cfg(args.preset, args.device, args.batch, **dict(zip(args.opts[::2], args.opts[1::2])))
    st = stock_cfg(mm)
    out = {}
    for name, cfg, is_mm in (("multimask", mm, True), ("stock", st, False)):
        torch.manual_seed(0)
        model = build_model(cfg)
        out[name] = (cfg, model, build_optimizer(cfg, model), _batches(cfg, dicts, is_mm, args.batch, 4))
    return out


def _train_step(model, opt, batch, amp: bool, device: str):
    from detectron2.utils.events import EventStorage

    with EventStorage(), torch.autocast(device, enabled=amp):
        losses = model(batch)
    loss = sum(losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def time_models(args, dicts) -> dict:
    models = _models(args, dicts)
    train, infer = {k: [] for k in models}, {k: [] for k in models}
    for i in range(args.warmup + args.iters):
        for name, (_, model, opt, batches) in models.items():
            model.train()
            _sync(args.device)
            t = time.perf_counter()
            _train_step(model, opt, batches[i % len(batches)], args.amp, args.device)
            _sync(args.device)
            if i >= args.warmup:
                train[name].append(time.perf_counter() - t)
    for i in range(args.warmup + args.iters):
        for name, (_, model, _, batches) in models.items():
            model.eval()
            inputs = [
                {"image": b["image"], "height": b["image"].shape[1], "width": b["image"].shape[2]}
                for b in batches[i % len(batches)][:1]
            ]
            _sync(args.device)
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast(args.device, enabled=args.amp):
                model(inputs)
            _sync(args.device)
            if i >= args.warmup:
                infer[name].append(time.perf_counter() - t)
    return {
        "train_s": {k: statistics.median(v) for k, v in train.items()},
        "infer_s": {k: statistics.median(v) for k, v in infer.items()},
    }


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_memory_child(args, which: str) -> float:
    """Peak memory (MiB) of `iters` training steps of one model, measured in this (fresh) process."""
    dicts = polygon_only_dicts(Path(args.data), args.images)
    cfg, model, opt, batches = _models(args, dicts)[which]
    model.train()
    _train_step(model, opt, batches[0], args.amp, args.device)  # allocator warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.iters):
        _train_step(model, opt, batches[i % len(batches)], args.amp, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_kb("VmHWM") / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", help="default: scratch_mask_rcnn_R_50_FPN_gn on CUDA, tiny_cpu on CPU")
    p.add_argument("--batch", type=int, help="images per step (default 4 on CUDA, 2 on CPU)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--amp", action="store_true", help="autocast (mixed precision)")
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config options of the multimask model, e.g. MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS \"['secondary']\"",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--memory-child", choices=["multimask", "stock"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if len(args.opts) % 2:
        p.error("--opts takes KEY VALUE pairs")
    args.preset = args.preset or ("scratch_mask_rcnn_R_50_FPN_gn" if args.device == "cuda" else "tiny_cpu")
    args.batch = args.batch or (4 if args.device == "cuda" else 2)
    if args.memory_child:
        print(peak_memory_child(args, args.memory_child))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.data = tmp
        dicts = polygon_only_dicts(Path(tmp), args.images)
        times = time_models(args, dicts)
        mem = {}
        for which in ("multimask", "stock"):
            cmd = (
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    which,
                    "--data",
                    tmp,
                    "--device",
                    args.device,
                    "--preset",
                    args.preset,
                    "--batch",
                    str(args.batch),
                    "--iters",
                    str(args.iters),
                    "--images",
                    str(args.images),
                ]
                + (["--amp"] if args.amp else [])
                + (["--opts", *args.opts] if args.opts else [])
            )
            mem[which] = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
    rows = [
        ("training step (s)", times["train_s"], 1.10),
        ("inference (s/img)", times["infer_s"], 1.05),
        ("peak memory (MiB)", mem, 1.10),
    ]
    print(
        f"\nmachine: {machine()}\npreset {args.preset}, batch {args.batch}, device {args.device}, "
        f"amp {args.amp}, {args.iters} timed iterations (median), options {args.opts}\n"
    )
    print("| metric | multimask (2 masks) | stock Mask R-CNN | ratio | target |")
    print("|---|---|---|---|---|")
    result = {
        "machine": machine(),
        "preset": args.preset,
        "batch": args.batch,
        "device": args.device,
        "amp": args.amp,
        "opts": args.opts,
        "rows": {},
    }
    for label, vals, target in rows:
        ratio = vals["multimask"] / vals["stock"]
        ok = "ok" if ratio <= target else "MISSED"
        print(f"| {label} | {vals['multimask']:.4f} | {vals['stock']:.4f} | {ratio:.3f}x | <= {target:.2f}x {ok} |")
        result["rows"][label] = {**vals, "ratio": ratio, "target": target}
    write_json(args.json, result)


if __name__ == "__main__":
    main()
