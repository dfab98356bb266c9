"""What the Train tab does, without Gradio: start runs from a Label dataset, act on them, read their state.

Jobs live in `<runs_root>/.jobs` (see `JobManager`). `start_poller` starts queued jobs and records ended ones
even when no browser is open; every read goes back to disk, so a reload, a closed tab or a restarted app finds
running jobs again. Run names from a browser are only ever looked up among the recorded jobs.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..labeling.store import LabelStore
from ..runs import find_runs
from . import form, monitor
from .jobs import ACTIVE, NO_GPU_MESSAGE, JobError, JobManager

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
LOG_LINES = 40
JOBS_FOLDER = ".jobs"


def gpu_count() -> int:
    """CUDA devices visible to this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class TrainingService:
    """Training runs of the Label datasets in `data_root`, in `runs_root`; arguments are untrusted input."""

    def __init__(self, data_root: str | Path, runs_root: str | Path, gpus: int | None = None):
        self.store = LabelStore(data_root)
        self.runs_root = Path(runs_root).resolve()
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.gpus = gpu_count() if gpus is None else gpus
        self.jobs = JobManager(self.runs_root / JOBS_FOLDER, self.runs_root, gpus=self.gpus)
        self._start_lock = threading.Lock()
        self._poller: threading.Thread | None = None

    def start_poller(self, interval: float = POLL_SECONDS) -> None:
        """Start queued jobs and record ended ones every `interval` s, browser or not (a daemon thread)."""
        if self._poller is not None:
            return

        def loop() -> None:
            while True:
                try:
                    self.jobs.start_next()  # updates the states of running jobs first
                except Exception:  # a broken record must not stop the queue
                    logger.exception("polling training jobs failed")
                time.sleep(interval)

        self._poller = threading.Thread(target=loop, name="multimask-train-poller", daemon=True)
        self._poller.start()

    # -- lookups -----------------------------------------------------------------------------------------------

    def weight_runs(self) -> dict[str, Path]:
        """Runs with weights (any, not only this app's), by name: possible starting points."""
        return {r.name: r.path for r in find_runs(self.runs_root)}

    def mask_names(self, dataset: Any) -> list[str]:
        if not isinstance(dataset, str) or dataset not in self.store.list_datasets():
            return []
        return self.store.open(dataset).mask_names

    def _by_run(self) -> dict[str, list[dict]]:
        """{run name: its jobs, oldest first}, runs with the newest job first; one read of the job records."""
        groups: dict[str, list[dict]] = {}
        for job in self.jobs.jobs():  # newest first
            if isinstance(job.get("run_name"), str):
                groups.setdefault(job["run_name"], []).insert(0, job)
        return groups

    def run_names(self) -> list[str]:
        """Runs started from this app, newest first."""
        return list(self._by_run())

    def run_jobs(self, run_name: Any) -> list[dict]:
        """The jobs of a run, oldest first; [] for anything that is not a run of this app."""
        return self._by_run().get(run_name, []) if isinstance(run_name, str) else []

    def latest(self, run_name: Any) -> dict:
        jobs = self.run_jobs(run_name)
        if not jobs:
            raise JobError(f"no run called {run_name!r}; pick one from the list")
        return jobs[-1]

    def default_run(self) -> str | None:
        """The run to show first: a running one, else the newest."""
        for job in self.jobs.jobs():
            if job["state"] in ACTIVE and job.get("run_name"):
                return job["run_name"]
        names = self.run_names()
        return names[0] if names else None

    # -- starting ----------------------------------------------------------------------------------------------

    def start(self, values: dict) -> tuple[dict, list[str]]:
        """Check the form, freeze the dataset's annotations into a new run folder, queue the job.

        Returns the job record and notes for the user; raises FormError, JobError or OSError with a message.
        """
        with self._start_lock:
            return self._start(values)

    def _start(self, values: dict) -> tuple[dict, list[str]]:
        weight_runs = self.weight_runs()
        s = form.parse_settings(values, list(weight_runs))
        if s.dataset not in self.store.list_datasets():
            raise form.FormError(f"dataset {s.dataset!r} does not exist (any more); refresh the list")
        ds = self.store.open(s.dataset)
        model_device, job_device, notes = form.resolve_device(s, self.gpus)
        if model_device == "cpu" and s.start != "tiny":
            notes.append("training an R50-FPN model on the CPU is slow (seconds per iteration); the tiny model is "
                         "meant for trying the pipeline on a CPU")
        name = s.run_name or f"{s.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_dir = self.runs_root / name
        if run_dir.exists() or name in self.run_names():
            raise form.FormError(f"a run called {name!r} exists already; choose another name")
        if s.best_metric.startswith("segm/") and s.best_metric.split("/")[1] not in ds.mask_names:
            raise form.FormError(f"best metric: {s.best_metric} names a mask this dataset does not have "
                                 f"({', '.join(ds.mask_names)})")
        from multimask.config import get_multimask_cfg
        from multimask.engine import WeightsUnavailableError

        try:
            config_file, weights = form.preset_for(s, weight_runs)
            base = get_multimask_cfg(config_file)
        except (WeightsUnavailableError, ValueError) as e:
            raise form.FormError(f"starting point {s.start}: {e}") from None
        run_dir.mkdir(parents=True)
        try:
            paths = ds.export(run_dir / "data", val_fraction=s.val_fraction, seed=s.seed)
            n_train, n_val = (len(json.loads(paths[k].read_text())["images"]) for k in ("train", "val"))
            if not n_train:
                raise form.FormError(f"dataset {s.dataset!r} has no labelled images for training yet (images "
                                     "with instances, or marked done)")
            has_val = n_val > 0
            if not has_val:
                notes.append("no validation images (raise the validation fraction): no evaluation, no AP")
            opts = form.training_options(s, base, model_device, ds.mask_names, weights, has_val)
            form.check_options(config_file, opts)
            argv = form.build_command(config_file, paths["train"], paths["val"] if has_val else None, run_dir,
                                      s.num_gpus, opts)
            job = self.jobs.submit(argv, run_dir, job_device, cwd=Path.cwd(), dataset=s.dataset, run_name=name,
                                   settings=s.to_dict(), max_iter=s.iterations, ims_per_batch=s.batch_size,
                                   images={"train": n_train, "val": n_val})
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # created just above: nothing of the user's is in it
            raise
        if job["state"] == "queued":
            notes.append("queued: it starts when the job before it on this device has ended")
        return job, notes

    # -- actions -----------------------------------------------------------------------------------------------

    def stop(self, run_name: Any) -> str:
        job = self.latest(run_name)
        if job["state"] not in ("queued", *ACTIVE):
            raise JobError(f"run {run_name} is not running ({job['state']})")
        if self.jobs.stop(job["id"])["state"] == "cancelled":
            return f"Run {run_name}: removed from the queue."
        return (f"Run {run_name}: stopping after the current iteration, or evaluation if one is under way (a "
                "checkpoint is saved; then Resume).")

    def resume(self, run_name: Any) -> str:
        job = self.latest(run_name)
        if job["state"] == "completed":
            raise JobError(f"run {run_name} has completed its schedule; start a new run from it to train more")
        new = self.jobs.resume(job["id"])
        return f"Run {run_name}: resuming from its last checkpoint (job {new['id']}, {new['state']})."

    def retry_on_cpu(self, run_name: Any) -> str:
        """Run a job that found no GPU again on the CPU (mixed precision off, one process)."""
        job = self.latest(run_name)
        if job["state"] != "failed" or job.get("error") != NO_GPU_MESSAGE:
            raise JobError(f"run {run_name} did not fail for want of a GPU")
        new = self.jobs.resume(job["id"], argv=on_cpu(job["command"]), device="cpu")
        return f"Run {run_name}: running on the CPU (job {new['id']}, {new['state']})."

    def delete(self, run_name: Any, confirm: Any) -> str:
        """Delete a run folder and its job records; `confirm` must be True."""
        jobs = self.run_jobs(run_name)
        if not jobs:
            raise JobError(f"no run called {run_name!r}")
        if confirm is not True:
            return f"Tick 'confirm' to delete run {run_name} and all its checkpoints."
        self.jobs.delete_run(jobs[-1]["run_dir"])  # refused while a job of the run is queued or running
        return f"Deleted run {run_name}."

    # -- reading -----------------------------------------------------------------------------------------------

    def snapshot(self, run_name: Any, last_signature: list | None = None) -> dict:
        """A run's latest job, metrics, progress and record, and a `signature` of its files; unless that equals
        `last_signature` (nothing changed since), also its evaluation and log tail (`details`).

        For an unknown run: {"job": None, "signature": [run_name]}.
        """
        jobs = self.run_jobs(run_name)
        if not jobs:
            return {"job": None, "signature": [run_name]}
        job = jobs[-1]
        run_dir = Path(job["run_dir"])
        rows = monitor.read_metrics(run_dir)
        record = {k: job.get(k) for k in ("id", "state", "error", "dataset", "device", "pid", "created", "started",
                                          "ended", "returncode", "run_dir", "images", "settings", "command")}
        record.update(progress=monitor.progress(rows, int(job.get("max_iter") or 0), int(job.get("ims_per_batch")
                                                                                           or 1)),
                      final_ap=monitor.final_ap(run_dir), jobs=[j["id"] for j in jobs],
                      seconds=sum(job_seconds(j) for j in jobs))
        snap = {"job": job, "rows": rows, "record": record, "signature": _signature(run_name, job),
                "details": None}
        if snap["signature"] != last_signature:
            caption, results = monitor.evaluation(run_dir)
            snap["details"] = {"eval_caption": caption, "results": results,
                               "log": self.jobs.log_tail(job["id"], LOG_LINES)}
        return snap

    def runs_overview(self) -> list[dict]:
        """One dict per run of this app: run, state, dataset, iterations, started, seconds, final AP per task."""
        out = []
        for name, jobs in self._by_run().items():
            job = jobs[-1]
            out.append({"run": name, "state": job["state"], "dataset": job.get("dataset"),
                        "iterations": f"{monitor.iterations_done(job['run_dir'])}/{job.get('max_iter') or 0}",
                        "started": (jobs[0].get("started") or jobs[0]["created"])[:19].replace("T", " "),
                        "seconds": sum(job_seconds(j) for j in jobs), "ap": monitor.final_ap(job["run_dir"])})
        return out


def on_cpu(argv: list[str]) -> list[str]:
    """The command with MODEL.DEVICE cpu, mixed precision off and one process."""
    out = list(argv)
    for key, value in (("MODEL.DEVICE", "cpu"), ("SOLVER.AMP.ENABLED", "False")):
        if key in out:
            out[out.index(key) + 1] = value
        else:
            out += [key, value]
    if "--num-gpus" in out:
        out[out.index("--num-gpus") + 1] = "1"
    return out


def _signature(run_name: str, job: dict) -> list:
    """What a run's monitor shows changes only when this changes: its latest job and state, and the size and
    time of its metrics, evaluation, summary and log files."""
    run_dir = Path(job["run_dir"])
    stats = []
    files = (monitor.METRICS_FILE, monitor.EVAL_RESULTS_FILE, monitor.SUMMARY_FILE)
    for path in (*(run_dir / f for f in files), Path(job["log"])):
        try:
            st = path.stat()
            stats.append([st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append(None)
    return [run_name, job["id"], job["state"], *stats]


def job_seconds(job: dict) -> float:
    """How long a job has run (until now when it still runs)."""
    def ts(v: str | None) -> float | None:
        return datetime.fromisoformat(v).timestamp() if v else None

    start = ts(job.get("started"))
    if start is None:
        return 0.0
    end = ts(job.get("ended")) or datetime.now(timezone.utc).timestamp()
    return max(0.0, end - start)
