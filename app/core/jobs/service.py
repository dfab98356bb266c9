"""What the Train tab does, without Gradio: start runs from a Label dataset, act on them, read their state.

Jobs live in `<runs_root>/.jobs` (see `JobManager`). `start_poller` starts queued jobs and records ended ones
even when no browser is open; every read goes back to disk, so a reload, a closed tab or a restarted app finds
running jobs again. Run folders trained elsewhere (`python -m multimask train --output-dir <runs_root>/NAME`)
are listed too, read-only ("external" runs: no job to stop or resume). Run names from a browser are only ever
looked up among the listed runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from multimask import run_folder

from ..datasets import LabelStore
from ..models.runs import find_runs, run_folders
from ..roots import inside, scrub, shown
from . import form, monitor
from .manager import ACTIVE, FINISHED, NO_GPU_MESSAGE, JobError, JobManager, offline_weights_message, tail_lines

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
LOG_LINES = 40
JOBS_FOLDER = ".jobs"
WEIGHTS_FOLDER = ".weights"  # where to put local weights files (the runs root is always allowed)
EXTERNAL = "external"  # the state of a run trained outside the app that has not written summary.json


def gpu_count() -> int:
    """CUDA devices visible to this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class TrainingService:
    """Training runs of the Label datasets in `data_root`, in `runs_root`; arguments are untrusted input.

    Every file a request reads or writes resolves (links followed) inside `roots`: the runs root, the data root
    and the further weights roots; messages, records and logs name paths from those folders (see `roots.scrub`).
    """

    def __init__(
        self,
        data_root: str | Path,
        runs_root: str | Path,
        gpus: int | None = None,
        weights_roots: Sequence[str | Path] = (),
    ):
        """`weights_roots`: server folders a local weights file may come from, besides `runs_root` and
        `data_root` (e.g. the app's import folders). ValueError when `runs_root/.jobs` links outside it."""
        self.store = LabelStore(data_root)
        self.runs_root = Path(runs_root).resolve()
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.roots = [self.runs_root, self.store.root, *(Path(p).resolve() for p in weights_roots)]
        self.gpus = gpu_count() if gpus is None else gpus
        jobs_root = self.runs_root / JOBS_FOLDER
        if jobs_root.exists() and inside(jobs_root, [self.runs_root]) is None:
            raise ValueError(f"{jobs_root} links to {jobs_root.resolve()}, outside the runs folder; remove the link")
        self.jobs = JobManager(jobs_root, self.runs_root, gpus=self.gpus)
        self._start_lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()

    def start_poller(self, interval: float = POLL_SECONDS) -> None:
        """Start queued jobs and record ended ones every `interval` s, browser or not (a daemon thread), until
        `stop_poller`. Jobs run on without it: they are processes of their own."""
        if self._poller is not None:
            return
        stop = self._stop_polling = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.jobs.start_next()  # updates the states of running jobs first
                except Exception:  # a broken record must not stop the queue
                    logger.exception("polling training jobs failed")
                stop.wait(interval)

        self._poller = threading.Thread(target=loop, name="multimask-train-poller", daemon=True)
        self._poller.start()

    def stop_poller(self, timeout: float = 60.0) -> None:
        """Stop the poller started by `start_poller` (waiting up to `timeout` s for a check in progress)."""
        poller, self._poller = self._poller, None
        if poller is not None:
            self._stop_polling.set()
            poller.join(timeout)

    # -- lookups -----------------------------------------------------------------------------------------------

    def weight_runs(self) -> dict[str, Path]:
        """Runs with weights (any, not only this app's), by name: possible starting points."""
        return {r.name: r.path for r in find_runs(self.runs_root)}

    def datasets(self) -> list[str]:
        """The labelling datasets a run can be trained on."""
        return self.store.list_datasets()

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

    def _runs(self) -> dict[str, list[dict]]:
        """Every run, newest first: {name: its jobs, oldest first}; a run folder trained outside the app has one
        read-only stand-in job (state "external", or "completed" once it wrote summary.json)."""
        groups = self._by_run()
        taken = {str(Path(jobs[-1]["run_dir"])) for jobs in groups.values()}
        runs = [(_iso_time(jobs[-1].get("created")), name, jobs) for name, jobs in groups.items()]
        for name, path in external_folders(self.runs_root).items():
            if str(path) not in taken and name not in groups:
                job = external_job(name, path)
                runs.append((_iso_time(job["created"]), name, [job]))
        runs.sort(key=lambda r: r[0], reverse=True)
        return {name: jobs for _, name, jobs in runs}

    def run_names(self) -> list[str]:
        """Every run under the runs root (started here or not), newest first."""
        return list(self._runs())

    def run_jobs(self, run_name: Any) -> list[dict]:
        """The jobs of a run, oldest first; [] for anything that is not a listed run."""
        return self._runs().get(run_name, []) if isinstance(run_name, str) else []

    def latest(self, run_name: Any) -> dict:
        """The latest job of a run started here; JobError for anything else (a run trained elsewhere too)."""
        jobs = self.run_jobs(run_name)
        if not jobs:
            raise JobError(f"no run called {run_name!r}; pick one from the list")
        if jobs[-1].get("external"):
            raise JobError(
                f"run {run_name} was trained outside this app (e.g. `python -m multimask train`): it is "
                "shown read-only; Stop, Resume and Delete act on runs started with this form"
            )
        return jobs[-1]

    def default_run(self) -> str | None:
        """The run to show first: a running one, else the newest."""
        for job in self.jobs.jobs():
            if job["state"] in ACTIVE and job.get("run_name"):
                return job["run_name"]
        names = self.run_names()
        return names[0] if names else None

    def settings(self, run_name: Any) -> dict | None:
        """The form settings a run was started with (its latest job's), or None (e.g. a run trained elsewhere); a
        weights file is named from its root, as the form takes it."""
        jobs = self.run_jobs(run_name)
        settings = jobs[-1].get("settings") if jobs else None
        if not isinstance(settings, dict):
            return None
        return {**settings, "weights_file": self.for_browser(settings.get("weights_file") or "")}

    def split(self, dataset: Any, val_fraction: float) -> tuple[int, int]:
        """(training, validation) images the Train form's split of a Label dataset gives now: its labelled
        images (with instances or marked done; counted from the labelling status), the first
        round(n * val_fraction) to validation, as `LabelDataset.export` splits them."""
        if not isinstance(dataset, str) or dataset not in self.store.list_datasets():
            return 0, 0
        n = sum(1 for e in self.store.open(dataset).images() if e["status"] != "unlabelled")
        n_val = round(n * val_fraction)
        return n - n_val, n_val

    def model_kind(self, start: Any) -> str:
        """The model a starting point trains ("tiny", "r50" or "r50-gn", see form.SPEED); "r50" if unknown."""
        if isinstance(start, str) and start.startswith(form.RUN_PREFIX):
            path = self.weight_runs().get(start[len(form.RUN_PREFIX) :])
            return form.model_kind(start, run_config(path) if path else {})
        return form.model_kind(start if isinstance(start, str) else "coco")

    # -- starting ----------------------------------------------------------------------------------------------

    def start(self, values: dict) -> tuple[dict, list[str]]:
        """Check the form, freeze the dataset's annotations into a new run folder, queue the job.

        Returns the job record and notes for the user; raises FormError, JobError or OSError with a message.
        """
        with self._start_lock:
            return self._start(values)

    def _start(self, values: dict) -> tuple[dict, list[str]]:
        weight_runs = self.weight_runs()
        s = form.parse_settings(values, list(weight_runs), self.roots)
        if s.dataset not in self.store.list_datasets():  # (it leaves out datasets linking outside the data root)
            raise form.FormError(f"dataset {s.dataset!r} does not exist (any more); refresh the list")
        ds = self.store.open(s.dataset)
        model_device, job_device, notes = form.resolve_device(s, self.gpus)
        notes = [*s.notes, *notes]
        if s.weights_file.endswith(".pkl"):
            notes.append(f"{s.weights_file} is loaded with pickle, which can run code: only use files you trust")
        if model_device == "cpu" and s.start != "tiny":
            notes.append(
                "training an R50-FPN model on the CPU is slow (seconds per iteration); the tiny model is "
                "meant for trying the pipeline on a CPU"
            )
        name = s.run_name or f"{s.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_dir = self.runs_root / name
        if run_dir.exists() or name in self.run_names():
            raise form.FormError(f"a run called {name!r} exists already; choose another name")
        if s.best_metric.startswith("segm/") and s.best_metric.split("/")[1] not in ds.mask_names:
            raise form.FormError(
                f"best metric: {s.best_metric} names a mask this dataset does not have ({', '.join(ds.mask_names)})"
            )
        from multimask.config import get_multimask_cfg
        from multimask.engine import WeightsUnavailableError

        try:
            config_file, weights = form.preset_for(s, weight_runs)
            base = get_multimask_cfg(config_file)
        except (WeightsUnavailableError, ValueError) as e:
            raise form.FormError(f"starting point {s.start}: {e}") from None
        self._check_download(weights or base.MODEL.WEIGHTS)
        run_dir.mkdir(parents=True)
        try:
            paths = ds.export(run_dir / run_folder.DATA_DIR, val_fraction=s.val_fraction, seed=s.seed)
            n_train, n_val = (len(json.loads(paths[k].read_text())["images"]) for k in ("train", "val"))
            if not n_train:
                raise form.FormError(
                    f"dataset {s.dataset!r} has no labelled images for training yet (images "
                    "with instances, or marked done)"
                )
            has_val = n_val > 0
            notes += form.split_warnings(n_train, n_val)
            opts = form.training_options(s, base, model_device, ds.mask_names, weights, has_val)
            form.check_options(config_file, opts)
            argv = form.build_command(
                config_file, paths["train"], paths["val"] if has_val else None, run_dir, s.num_gpus, opts
            )
            job = self.jobs.submit(
                argv,
                run_dir,
                job_device,
                cwd=Path.cwd(),
                dataset=s.dataset,
                run_name=name,
                settings=s.to_dict(),
                max_iter=s.iterations,
                ims_per_batch=s.batch_size,
                images={"train": n_train, "val": n_val},
            )
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # created just above: nothing of the user's is in it
            raise
        if job["state"] == "queued":
            notes.append("queued: it starts when the job before it on this device has ended")
        return job, notes

    def _check_download(self, weights: str) -> None:
        """A FormError naming the form's options when model-zoo weights are neither cached nor reachable."""
        from multimask.engine.weights import downloadable, is_remote

        if weights and is_remote(weights) and not downloadable(weights):
            folder = shown(self.runs_root / WEIGHTS_FOLDER, self.roots)
            raise form.FormError("starting point: " + offline_weights_message(weights.rsplit("/", 1)[-1], f"{folder}/"))

    # -- actions -----------------------------------------------------------------------------------------------

    def stop(self, run_name: Any) -> str:
        job = self.latest(run_name)
        if job["state"] not in ("queued", *ACTIVE):
            raise JobError(f"run {run_name} is not running ({job['state']})")
        if self.jobs.stop(job["id"])["state"] == "cancelled":
            return f"Run {run_name}: removed from the queue."
        return (
            f"Run {run_name}: stopping after the current iteration, or evaluation if one is under way (a "
            "checkpoint is saved; then Resume)."
        )

    def resume(self, run_name: Any) -> str:
        job = self.latest(run_name)
        if job["state"] == "completed":
            raise JobError(f"run {run_name} has completed its schedule; start a new run from it to train more")
        if job["state"] in FINISHED and not run_folder.has_checkpoint(job["run_dir"]):
            raise JobError(
                f"run {run_name} saved no checkpoint before it ended, so there is nothing to resume; "
                "start it again as a new run"
            )
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
        job = self.latest(run_name)  # a run started here: not a folder trained elsewhere
        if confirm is not True:
            return f"Tick 'confirm' to delete run {run_name} and all its checkpoints."
        self.jobs.delete_run(job["run_dir"])  # refused while a job of the run is queued or running
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
        rows = run_folder.read_metrics(run_dir)
        record = {
            k: job.get(k)
            for k in (
                "id",
                "state",
                "error",
                "dataset",
                "device",
                "pid",
                "created",
                "started",
                "ended",
                "returncode",
                "run_dir",
                "images",
                "settings",
                "command",
            )
        }
        record.update(
            progress=monitor.progress(rows, int(job.get("max_iter") or 0), int(job.get("ims_per_batch") or 1)),
            final_ap=monitor.final_ap(run_dir),
            jobs=[j["id"] for j in jobs if j["id"]],
            seconds=sum(job_seconds(j) for j in jobs),
            external=bool(job.get("external")),
            can_resume=job["state"] in FINISHED
            and job["state"] != "completed"
            and not job.get("external")
            and run_folder.has_checkpoint(run_dir),
        )
        snap = {
            "job": self.for_browser(job),
            "rows": rows,
            "record": self.for_browser(record),
            "signature": _signature(run_name, job),
            "details": None,
        }
        if snap["signature"] != last_signature:
            caption, results = monitor.evaluation(run_dir, record["progress"]["max_iter"])
            log = tail_lines(Path(job["log"]), LOG_LINES) if inside(job["log"], [self.runs_root]) else ""
            snap["details"] = {"eval_caption": caption, "results": results, "log": self.for_browser(log)}
        return snap

    def for_browser(self, value: Any) -> Any:
        """A message, log or record (any JSON value) with every server path named from its root (`runs/x`) or,
        outside the roots, by its file name (see `roots.scrub`)."""
        if isinstance(value, str):
            return scrub(value, self.roots)
        if isinstance(value, dict):
            return {k: self.for_browser(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.for_browser(v) for v in value]
        return value

    def runs_overview(self) -> list[dict]:
        """One dict per run: run, state, dataset, iterations, started, seconds, final AP per task."""
        out = []
        for name, jobs in self._runs().items():
            job = jobs[-1]
            started = jobs[0].get("started") or jobs[0]["created"] or ""
            out.append(
                {
                    "run": name,
                    "state": job["state"],
                    "dataset": job.get("dataset"),
                    "iterations": f"{run_folder.iterations_done(job['run_dir'])}/{job.get('max_iter') or 0}",
                    "started": started[:16].replace("T", " "),
                    "seconds": sum(job_seconds(j) for j in jobs),
                    "ap": monitor.final_ap(job["run_dir"]),
                }
            )
        return out

    def estimate(self, values: dict) -> str:
        """Markdown next to the Train button: the split, the expected duration and warnings, or the form error
        that Train would give."""
        try:
            s = form.parse_settings(
                {k: v for k, v in values.items() if k in form.FIELDS}, list(self.weight_runs()), self.roots
            )
            model_device, _, _ = form.resolve_device(s, self.gpus)
        except form.FormError as e:
            return f"⚠️ {self.for_browser(str(e))}"
        n_train, n_val = self.split(s.dataset, s.val_fraction)
        return form.estimate_text(s, self.model_kind(s.start), model_device == "cuda", n_train, n_val)


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


def external_folders(runs_root: Path) -> dict[str, Path]:
    """Run folders under `runs_root` (as `find_runs` looks) that hold a config.yaml or metrics.json, by
    "/"-separated name."""
    root = Path(runs_root).resolve()
    return {folder.relative_to(root).as_posix(): folder.resolve() for folder in run_folders(root, _is_run)}


def _is_run(folder: Path) -> bool:
    return run_folder.is_run(folder) or (folder / run_folder.METRICS_FILE).is_file()


_config_cache: dict[str, tuple[tuple[int, int], dict]] = {}


def run_config(run_dir: Path) -> dict:
    """What the monitor needs from a run's config.yaml (plain YAML): max_iter, ims_per_batch, device, depth,
    norm; {} without a readable one. Cached per file version."""
    import yaml

    path = Path(run_dir) / run_folder.CONFIG_FILE
    try:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        if _config_cache.get(str(path), (None,))[0] == key:
            return _config_cache[str(path)][1]
        cfg = yaml.safe_load(path.read_text())
        model, solver = cfg.get("MODEL", {}), cfg.get("SOLVER", {})
        out = {
            "max_iter": solver.get("MAX_ITER"),
            "ims_per_batch": solver.get("IMS_PER_BATCH"),
            "device": model.get("DEVICE"),
            "depth": model.get("RESNETS", {}).get("DEPTH"),
            "norm": model.get("RESNETS", {}).get("NORM"),
        }
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return {}
    if len(_config_cache) > 256:
        _config_cache.clear()
    _config_cache[str(path)] = (key, out)
    return out


def external_job(name: str, run_dir: Path) -> dict:
    """A read-only stand-in job record for a run folder trained outside the app (from its files)."""
    cfg = run_config(run_dir)
    info = run_folder.read_json_or_none(run_dir / run_folder.RUN_INFO_FILE)
    starts = info.get("starts") if isinstance(info, dict) else None
    started = starts[0].get("time") if isinstance(starts, list) and starts and isinstance(starts[0], dict) else None
    train = info.get("data", {}).get("train", {}).get("path") if isinstance(info, dict) else None
    done = (run_dir / run_folder.SUMMARY_FILE).is_file()
    mtimes = [
        p.stat().st_mtime
        for name in (run_folder.METRICS_FILE, run_folder.SUMMARY_FILE, run_folder.CONFIG_FILE)
        if (p := run_dir / name).is_file()
    ]
    last = datetime.fromtimestamp(max(mtimes), timezone.utc).isoformat() if mtimes else None
    return {
        "id": None,
        "external": True,
        "run_name": name,
        "state": "completed" if done else EXTERNAL,
        "error": None,
        "dataset": "/".join(Path(train).parts[-2:]) if isinstance(train, str) else "–",
        "device": str(cfg.get("device") or "–"),
        "run_dir": str(run_dir),
        "log": str(run_dir / run_folder.LOG_FILE),
        "max_iter": cfg.get("max_iter"),
        "ims_per_batch": cfg.get("ims_per_batch"),
        "created": started or last or "",
        "started": started,
        "ended": last,
    }


def _iso_time(value: Any) -> float:
    """Seconds since the epoch of an ISO time (0 when missing or unreadable), to sort runs by."""
    try:
        t = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return 0.0
    return (t if t.tzinfo else t.astimezone()).timestamp()


def _signature(run_name: str, job: dict) -> list:
    """What a run's monitor shows changes only when this changes: its latest job and state, and the size and
    time of its metrics, evaluation, summary and log files."""
    run_dir = Path(job["run_dir"])
    stats = []
    files = (run_folder.METRICS_FILE, run_folder.EVAL_RESULTS_FILE, run_folder.SUMMARY_FILE)
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
