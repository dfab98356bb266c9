"""What the Train tab shows of a run: progress, loss / learning-rate / AP curves and evaluation tables, from the
records `multimask.run_folder` reads (`read_metrics`: one merged record per iteration of metrics.json)."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median
from typing import Any

from multimask.evaluation import METRICS
from multimask.run_folder import BEST_CHECKPOINT, EVAL_RESULTS_FILE, SUMMARY_FILE, read_json_or_none, read_metrics


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def progress(rows: list[dict], max_iter: int, ims_per_batch: int) -> dict:
    """Iterations done, seconds per iteration (median of the last 20), throughput, ETA and peak GPU memory."""
    train = [r for r in rows if "total_loss" in r]
    done = train[-1]["iteration"] + 1 if train else 0
    times = [r["time"] for r in train[-20:] if _finite(r.get("time"))]
    sec = median(times) if times else None
    mem = [r["max_mem_mb"] for r in train if _finite(r.get("max_mem_mb"))]
    return {
        "iteration": done,
        "max_iter": max_iter,
        "fraction": min(1.0, done / max_iter) if max_iter else 0.0,
        "sec_per_iter": sec,
        "iters_per_sec": 1 / sec if sec else None,
        "images_per_sec": ims_per_batch / sec if sec else None,
        "eta_seconds": sec * max(0, max_iter - done) if sec else None,
        "max_mem_mb": max(mem) if mem else None,
        "total_loss": train[-1]["total_loss"] if train else None,
    }


def loss_points(rows: list[dict]) -> list[tuple[int, float, str]]:
    """(iterations done, value, series) of total_loss and every loss_*."""
    return [
        (r["iteration"] + 1, v, k)
        for r in rows
        for k, v in r.items()
        if (k == "total_loss" or k.startswith("loss_")) and _finite(v)
    ]


def lr_points(rows: list[dict]) -> list[tuple[int, float]]:
    return [(r["iteration"] + 1, r["lr"]) for r in rows if _finite(r.get("lr"))]


def evaluated_after(iteration: int, max_iter: int | None) -> int:
    """Iterations done when an evaluation was written at `iteration`: a periodic one runs after that (0-based)
    iteration, the final one after training, when detectron2's counter is already at max_iter."""
    return min(iteration + 1, max_iter) if max_iter else iteration + 1


def ap_points(rows: list[dict], max_iter: int | None = None) -> list[tuple[int, float, str]]:
    """(iterations done, AP, series) after each evaluation; series: bbox, segm/<mask name>."""
    return [
        (evaluated_after(r["iteration"], max_iter), v, k[: -len("/AP")])
        for r in rows
        for k, v in r.items()
        if k.endswith("/AP") and _finite(v)
    ]


def latest_evaluation(rows: list[dict], max_iter: int | None = None) -> tuple[int | None, dict]:
    """(iterations done, {task: {metric: value}}) of the last evaluation written to metrics.json."""
    for r in reversed(rows):
        tasks: dict[str, dict] = {}
        for k, v in r.items():
            task, sep, metric = k.rpartition("/")
            if sep and (metric in METRICS or metric.startswith("AP-")) and task.split("/")[0] in ("bbox", "segm"):
                tasks.setdefault(task, {})[metric] = v
        if tasks:
            return evaluated_after(r["iteration"], max_iter), tasks
    return None, {}


def evaluation(run_dir: str | Path, max_iter: int | None = None) -> tuple[str, dict]:
    """(caption, results) of the run's final evaluation, else its latest periodic one, else ("", {}); iterations
    are counted as done (see `evaluated_after`; `max_iter` of the run)."""
    run_dir = Path(run_dir)
    final = read_json_or_none(run_dir / EVAL_RESULTS_FILE)
    if isinstance(final, dict) and final:
        summary = read_json_or_none(run_dir / SUMMARY_FILE)
        summary = summary if isinstance(summary, dict) else {}
        notes = []
        if summary.get("early_stopped"):
            notes.append(
                f"stopped early after {summary.get('iterations')} iterations, the results are the best evaluation's"
            )
        best = summary.get("best")
        if isinstance(best, dict) and isinstance(best.get("iteration"), int) and _finite(best.get("value")):
            done = evaluated_after(best["iteration"], summary.get("max_iter") or max_iter)
            notes.append(
                f"best {best['metric']} {best['value']:.2f} after {done} iterations: {BEST_CHECKPOINT}, used "
                "by Predict and Propose"
            )
        return "final evaluation" + "".join(f"; {n}" for n in notes), final
    it, tasks = latest_evaluation(read_metrics(run_dir), max_iter)
    return (f"evaluation after {it} iterations", tasks) if tasks else ("", {})


def eval_rows(results: dict) -> tuple[list[str], list[list]]:
    """(columns, rows): a column per task (bbox, segm/<mask name>), a row per metric (AP, AP50, AP75, APs, APm,
    APl, then AP per class): the few tasks fit side by side, however many classes there are."""
    tasks = {task: res for task, res in results.items() if isinstance(res, dict)}
    classes: list[str] = []
    for res in tasks.values():
        classes += [k for k in res if k.startswith("AP-") and k not in classes]
    rows = [[metric, *(_round(res.get(metric)) for res in tasks.values())] for metric in (*METRICS, *classes)]
    return ["metric", *tasks], rows if tasks else []


def final_ap(run_dir: str | Path) -> dict[str, float | None]:
    """{task: AP} from the run's eval_results.json ({} before the run has one)."""
    final = read_json_or_none(Path(run_dir) / EVAL_RESULTS_FILE)
    if not isinstance(final, dict):
        return {}
    return {task: _round(res.get("AP")) for task, res in final.items() if isinstance(res, dict)}


def _round(v: Any) -> float | None:
    return round(float(v), 2) if _finite(v) else None
