"""A real training run through the app's Train worker: a Label dataset, the form, the job, the monitor.

On the GPU machine: `python bench/train_job.py --device cuda --amp` (from scratch: the device machine is
offline, so no model-zoo weights). Prints throughput, peak GPU memory, wall time and the final AP per mask
name as the Train tab reads them, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from app.core.datasets.storage import LabelStore
from app.core.jobs import monitor
from app.core.jobs.form import FormError
from app.core.jobs.manager import FINISHED, JobError
from app.core.jobs.service import TrainingService
from multimask import run_folder
from multimask.data.synth import CLASSES, generate_synthetic_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--start", default="scratch", choices=["scratch", "tiny"])
    p.add_argument("--amp", action="store_true", help="mixed precision (GPU only)")
    p.add_argument("--iterations", type=int, default=900)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--images", type=int, default=400, help="synthetic images in the Label dataset")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--eval-period", type=int, default=300)
    p.add_argument("--timeout", type=float, default=540)
    p.add_argument("--work", help="folder for the dataset and the run (default: a temporary one)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="train_job_"))
    synth = generate_synthetic_dataset(work / "synth", num_train=args.images, num_val=0, seed=0)
    store = LabelStore(work / "datasets")
    store.create("synth", CLASSES).import_multimask(synth["train"])
    service = TrainingService(work / "datasets", work / "runs")
    t0 = time.time()
    try:
        job, notes = service.start(
            {
                "dataset": "synth",
                "run_name": "bench",
                "start": args.start,
                "iterations": args.iterations,
                "batch_size": args.batch,
                "lr": args.lr,
                "image_size": args.image_size,
                "device": args.device,
                "amp": args.amp,
                "eval_period": args.eval_period,
                "best_metric": "segm/primary/AP",
                "advanced": "DATALOADER.NUM_WORKERS 8" if args.device == "cuda" else "",
            }
        )
    except (FormError, JobError) as e:
        raise SystemExit(f"cannot start: {e}") from None
    print(f"job {job['id']}: {job['state']}", *notes, sep="\n", flush=True)
    job = service.jobs.wait(job["id"], timeout=args.timeout, interval=2.0)
    if job["state"] not in FINISHED:  # out of time: free the GPU for what runs next (the job has its own session)
        service.jobs.stop(job["id"], timeout=20)
        job = service.jobs.wait(job["id"], timeout=60)
    wall = time.time() - t0
    run_dir = Path(job["run_dir"])
    rows = run_folder.read_metrics(run_dir)
    times = [r["time"] for r in rows if "time" in r and "total_loss" in r]
    sec = sorted(times)[len(times) // 2] if times else None
    mem = [r["max_mem_mb"] for r in rows if "max_mem_mb" in r]
    result = {
        "machine": platform.node(),
        "device": args.device,
        "amp": args.amp,
        "start": args.start,
        "state": job["state"],
        "error": job.get("error"),
        "iterations": args.iterations,
        "batch": args.batch,
        "wall_seconds": round(wall, 1),
        "median_sec_per_iter": sec,
        "images_per_sec": round(args.batch / sec, 2) if sec else None,
        "peak_gpu_mem_mb": round(max(mem)) if mem else None,
        "final_ap": monitor.final_ap(run_dir),
    }
    if args.device == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(json.dumps(result, indent=1))
    if job["state"] != "completed":
        print(service.jobs.log_tail(job["id"], 40))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
