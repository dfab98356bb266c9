"""One two-mask model against two single-mask models, trained from scratch on the synthetic set.

Same data, schedule and device for all three: the multimask model (primary + secondary), a primary-only
model and a secondary-only model (whose boxes are the secondary masks' boxes, as a stock single-mask
Mask R-CNN would be trained for that part). Prints per-mask COCO AP and training time of each, and the median
training step once the model has learned enough to send many foreground ROIs to the mask head (after the first
fifth of the schedule; `bench_model.py` times untrained models, which send few).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, multimask_cfg, write_json  # noqa: E402

VARIANTS = {"two-mask": ("primary", "secondary"), "primary-only": ("primary",), "secondary-only": ("secondary",)}


def train_variant(name: str, names, args, paths, extra: dict) -> dict:
    from detectron2.utils.logger import setup_logger

    from multimask.data import register_multimask_dataset
    from multimask.engine import MultiMaskTrainer

    register_multimask_dataset(f"cmp_train_{name}", paths["train"], mask_names=list(names))
    register_multimask_dataset(f"cmp_val_{name}", paths["val"], mask_names=list(names))
    out = Path(args.out) / name
    it = args.max_iter
    cfg = multimask_cfg(
        args.preset,
        args.device,
        args.batch,
        names,
        **{
            "DATASETS.TRAIN": (f"cmp_train_{name}",),
            "DATASETS.TEST": (f"cmp_val_{name}",),
            "OUTPUT_DIR": str(out),
            "SOLVER.MAX_ITER": it,
            "SOLVER.BASE_LR": args.lr,
            "SOLVER.STEPS": (int(it * 0.7), int(it * 0.9)),
            "SOLVER.WARMUP_ITERS": min(200, it // 5),
            "SOLVER.CHECKPOINT_PERIOD": it,
            "TEST.EVAL_PERIOD": 0,
            "SEED": 1,
            "DATALOADER.NUM_WORKERS": args.workers,
            "SOLVER.AMP.ENABLED": args.amp,
            "INPUT.MIN_SIZE_TRAIN": tuple(args.train_sizes),
            "INPUT.MAX_SIZE_TRAIN": 533,
            "INPUT.MIN_SIZE_TEST": args.test_size,
            "INPUT.MAX_SIZE_TEST": 533,
            **dict(zip(args.opts[::2], args.opts[1::2])),
            **extra,
        },
    )
    setup_logger(str(out), name="detectron2")
    trainer = MultiMaskTrainer(cfg)
    trainer.resume_or_load(resume=False)
    if args.device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    results = json.loads((out / "eval_results.json").read_text())
    print(
        f"RESULT {name}: {total:.0f} s, " + ", ".join(f"{k} AP {v['AP']:.1f}" for k, v in results.items()), flush=True
    )
    return {"masks": list(names), "train_and_eval_s": total, "step_s": median_step_s(out, it), "results": results}


def median_step_s(out: Path, max_iter: int) -> float:
    """The median of the seconds per iteration that detectron2's writer logged after the first fifth."""
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return statistics.median(r["time"] for r in rows if "time" in r and r["iteration"] >= max_iter // 5)


def _cell(results: dict, task: str, metric: str) -> str:
    return f"{results[task][metric]:.1f}" if task in results else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="scratch_mask_rcnn_R_50_FPN_gn")
    p.add_argument("--max-iter", type=int, default=1200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=60)
    p.add_argument(
        "--train-sizes",
        type=int,
        nargs="+",
        default=[256, 288, 320],
        help="shorter side of training images, one picked per image",
    )
    p.add_argument("--test-size", type=int, default=288, help="shorter side of validation images")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--out", default="bench/out/compare")
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="train only these variants (e.g. to finish a comparison within one device session)",
    )
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config options for every model, e.g. MODEL.ROI_MULTI_MASK_HEAD.DICE_WEIGHT 0.0",
    )
    p.add_argument(
        "--two-mask-opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config options for the two-mask model only, e.g. "
        "MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS \"['secondary']\"",
    )
    p.add_argument("--label", default="two-mask", help="the two-mask model's name in the table and output folder")
    p.add_argument(
        "--regime",
        choices=["default", "small-part", "large-part"],
        default="default",
        help="the synthetic data (multimask synth --regime): parts small in their object's box, or covering most of it",
    )
    p.add_argument("--height", type=int, default=256, help="synthetic image height (px)")
    p.add_argument("--width", type=int, default=320, help="synthetic image width (px)")
    p.add_argument("--json")
    args = p.parse_args()
    if len(args.opts) % 2 or len(args.two_mask_opts) % 2:
        p.error("--opts and --two-mask-opts take KEY VALUE pairs")

    from multimask.data.synth import generate_synthetic_dataset

    paths = generate_synthetic_dataset(
        Path(args.out) / f"data-{args.regime}-{args.height}x{args.width}",
        args.train_images,
        args.val_images,
        seed=7,
        regime=args.regime,
        height=args.height,
        width=args.width,
    )
    runs = {}
    for name, names in VARIANTS.items():
        if name in args.only:
            two = name == "two-mask"
            extra = dict(zip(args.two_mask_opts[::2], args.two_mask_opts[1::2])) if two else {}
            runs[args.label if two else name] = train_variant(args.label if two else name, names, args, paths, extra)
            # after each model, so that a device session that runs out of time keeps what finished
            write_json(args.json, {"machine": machine(), "args": vars(args), "runs": runs})
    print(
        f"\nmachine: {machine()}\npreset {args.preset}, {args.max_iter} iterations x batch {args.batch}, "
        f"{args.train_images} train / {args.val_images} val images, amp {args.amp}, regime {args.regime}\n"
    )
    columns = [("bbox", "AP")] + [(f"segm/{n}", m) for n in ("primary", "secondary") for m in ("AP", "AP50", "AP75")]
    print(
        "| model | "
        + " | ".join(f"{t.partition('/')[2] or 'box'} {m}" for t, m in columns)
        + " | train+eval time (s) | step (s) |"
    )
    print("|---|" + "---|" * (len(columns) + 2))
    for name, r in runs.items():
        cells = [_cell(r["results"], task, m) for task, m in columns]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['train_and_eval_s']:.0f} | {r['step_s']:.3f} |")
    if len(runs) == len(VARIANTS):
        two = runs["primary-only"]["train_and_eval_s"] + runs["secondary-only"]["train_and_eval_s"]
        one = runs[args.label]["train_and_eval_s"]
        print(f"\ntwo single-mask models: {two:.0f} s; one two-mask model: {one:.0f} s ({one / two:.2f}x)")


if __name__ == "__main__":
    main()
