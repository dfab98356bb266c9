"""Training jobs as separate processes, with their records and queue on disk.

`JobManager(jobs_root, runs_root)` keeps one JSON record per job in `jobs_root/<id>.json` and the job's output
in `jobs_root/<id>.log`. A job runs in its own process session (`start_new_session=True`), so restarting the
app does not touch it; a new manager on the same folder re-attaches to it. One job runs at a time per device;
the others wait, queued on disk, until `start_next()` starts them in order (it also updates the states of running jobs).

Each job's command runs under a small supervisor process (the session and process-group leader) that waits
for it and writes its exit status to `jobs_root/<id>.exit.json`; so the outcome is known even when the app
was not running when the job ended. `stop()` sends SIGTERM to the supervisor, which passes it to the command
alone (the trainer saves a checkpoint and exits, see `multimask.engine.hooks.GracefulStop`; its data-loading
worker processes must not get it: PyTorch's workers die of a SIGTERM that does not come from their parent, and
the trainer then fails instead of stopping); after the timeout `refresh()` kills the whole group.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from multimask.engine.hooks import STOPPED_EXIT_CODE  # `train`'s exit status after a graceful stop
from multimask.io import atomic_write_json
from multimask.run_folder import FINAL_CHECKPOINT

from ..roots import inside, shown
from . import supervisor

ACTIVE = ("running", "stopping")  # a job is queued, then active, then finished
FINISHED = ("completed", "failed", "cancelled")
STATES = ("queued", *ACTIVE, *FINISHED)
DEFAULT_STOP_TIMEOUT = 60.0
# A stopping job whose log still grows (e.g. it finishes an evaluation before its checkpoint) is killed only once
# its log has been silent for the stop timeout, or at this many stop timeouts after the request.
MAX_STOP_TIMEOUTS = 10
_DEVICE_RE = re.compile(r"^(cpu|cuda:\d+(,\d+)*|cuda\*[1-9]\d*)$")
_ID_RE = re.compile(r"^[0-9A-Za-z_-]+$")

# The job's session leader (see its docstring), run by its path: `-m` would look for `app` in the job's working
# directory first, where a user's own `app` folder could stand in for it.
SUPERVISOR = Path(supervisor.__file__)

OOM_MESSAGE = "CUDA ran out of memory: lower SOLVER.IMS_PER_BATCH or the image size (INPUT.MIN_SIZE_TRAIN)"
NAN_MESSAGE = "the loss became NaN: lower SOLVER.BASE_LR (e.g. halve it) or raise SOLVER.WARMUP_ITERS"
NO_GPU_MESSAGE = "no usable GPU: run on the CPU (device cpu)"
STOPPED_RE = re.compile(r"stopped at iteration (\d+); resume with --resume")  # hooks.TrainingStopped's message
UNEXPECTED_MESSAGE = "the process ended unexpectedly"

logger = logging.getLogger(__name__)


_RECORD_KEYS = (
    "id",
    "command",
    "run_dir",
    "device",
    "device_request",
    "state",
    "cwd",
    "pid",
    "pgid",
    "proc_start",
    "created",
    "started",
    "ended",
    "returncode",
    "error",
    "log",
    "log_tail",
    "stop_requested",
    "stop_deadline",
    "stop_timeout",
    "resumed_from",
)


class JobError(ValueError):
    """A request the job manager refuses (bad command, unknown job, wrong state)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def offline_weights_message(file_name: str, folder: str = "the runs folder") -> str:
    """What to do when model-zoo weights cannot be downloaded, naming the Train form's options."""
    return (
        f"the model-zoo weights {file_name} cannot be downloaded (no internet access?): download {file_name} "
        f"on another machine, copy it into {folder}, then choose 'Local weights file' under Starting point "
        "and give its path; or start from the tiny model or from scratch"
    )


def stopped_message(log_text: str) -> str | None:
    """The Train tab's words for a graceful stop in a job's log: completed iterations and the Resume button."""
    found = STOPPED_RE.findall(log_text or "")
    if not found:
        return None
    return f"stopped after {int(found[-1]) + 1} iterations (checkpoint saved); press Resume to continue"


def classify_failure(log_text: str) -> str:
    """A one-line explanation of a failed job's log, with what to do about it where known."""
    text = log_text or ""
    offline = re.search(r"cannot download model weights '([^']+)'", text)
    if offline:
        return offline_weights_message(offline.group(1).rsplit("/", 1)[-1])
    if re.search(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory", text):
        return OOM_MESSAGE
    if re.search(r"Loss became infinite or NaN|FloatingPointError", text):
        return NAN_MESSAGE
    if re.search(r"Found no NVIDIA driver|CUDA is not available|no CUDA GPUs|Torch not compiled with CUDA", text):
        return NO_GPU_MESSAGE
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cli_errors = [ln for ln in lines if ln.startswith("error: ")]  # multimask's CLI: names the file and entry
    if cli_errors:
        return cli_errors[-1]
    errors = [ln for ln in lines if re.match(r"^([\w.]+(Error|Exception|Interrupt)\b|SystemExit\b)", ln)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else ""


def tail_lines(path: Path, n: int = 50) -> str:
    """The last `n` lines of a text file (from its last 256 KiB); "" when it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = data.replace("\r", "\n").splitlines()
    return "\n".join(lines[-n:]) if n > 0 else ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) from /proc/<pid>/stat (fields 3 and 22), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _alive(pid: int | None, start_time: str | None) -> bool:
    """Whether `pid` is still the process that was started (not a zombie, not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: a reused pid unless the start time matches
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        if stat is None or (start_time is not None and stat[1] != start_time):
            return False
        return stat[0] not in ("Z", "X")
    return True


def _units(device: str) -> set[str]:
    """The devices a job occupies: {"cpu"} or {"cuda:0", "cuda:1", ...}."""
    kind, _, ids = device.partition(":")
    return {f"{kind}:{i}" for i in ids.split(",")} if ids else {kind}


def _is_record(job: Any, job_id: str) -> bool:
    """Whether a parsed file is a job record this manager can act on (the fields that scheduling reads)."""
    return (
        isinstance(job, dict)
        and job.get("id") == job_id
        and job.get("state") in STATES
        and isinstance(job.get("device"), str)
        and bool(_DEVICE_RE.match(job["device"]))
        and isinstance(job.get("command"), list)
        and all(isinstance(a, str) for a in job["command"])
        and all(isinstance(job.get(k), str) for k in ("run_dir", "log", "created"))
    )


def visible_devices(device: str, inherited: str | None = None) -> str:
    """CUDA_VISIBLE_DEVICES for a job on `device` ("cpu": "", no GPU at all; "cuda:0,1": GPUs 0 and 1 as the
    app sees them, i.e. entries of the app's own CUDA_VISIBLE_DEVICES when it has one)."""
    ids = device.partition(":")[2]
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES") if inherited is None else inherited
    if not ids or not inherited or not inherited.strip():
        return ids
    mask = [v.strip() for v in inherited.split(",")]
    try:
        return ",".join(mask[int(i)] for i in ids.split(","))
    except IndexError:
        raise JobError(f"{device}: CUDA_VISIBLE_DEVICES={inherited} has only {len(mask)} GPUs") from None


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


class JobManager:
    """Training jobs in `jobs_root`; run folders must lie in `runs_root` (when given).

    Commands must start with one of `allowed_programs` (default: this Python) followed by `-m <module>` for
    `module` = `require_module` (default "multimask"; None allows any arguments, for tests). A job's device is
    "cpu", given GPUs ("cuda:0,1"), or "cuda*K": any K of the `gpus` GPUs that are free when it starts.
    """

    def __init__(
        self,
        jobs_root: str | Path,
        runs_root: str | Path | None = None,
        *,
        allowed_programs: tuple[str, ...] | None = None,
        require_module: str | None = "multimask",
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        gpus: int = 0,
    ):
        self.jobs_root = Path(jobs_root)
        self.gpus = gpus  # GPUs that "cuda*K" jobs may be given
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        self.runs_root = Path(runs_root).resolve() if runs_root is not None else None
        self.allowed_programs = tuple(allowed_programs or (sys.executable,))
        self.require_module = require_module
        self.stop_timeout = stop_timeout
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_file = None
        self._procs: dict[str, subprocess.Popen] = {}  # this manager's children, only to reap them
        self._not_records: set[str] = set()  # files in jobs_root already reported as not job records

    # -- locking and records -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self):
        """A thread lock plus an exclusive file lock on jobs_root/.lock (other processes, other managers)."""
        with self._lock:
            if self._depth == 0:
                self._lock_file = open(self.jobs_root / ".lock", "a")  # noqa: SIM115 (closed on the way out)
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                    self._lock_file.close()
                    self._lock_file = None

    def _path(self, job_id: str) -> Path:
        if not _ID_RE.match(job_id or ""):
            raise JobError(f"not a job id: {job_id!r}")
        return self.jobs_root / f"{job_id}.json"

    def _save(self, job: dict) -> None:
        atomic_write_json(self._path(job["id"]), job, indent=1)

    def _load(self, job_id: str) -> dict:
        path = self._path(job_id)
        try:
            job = json.loads(path.read_text())
        except FileNotFoundError:
            raise JobError(f"no job {job_id!r}") from None
        except ValueError:
            raise JobError(f"the record of job {job_id!r} is damaged ({self._shown(path)})") from None
        if not _is_record(job, job_id):
            raise JobError(f"the record of job {job_id!r} is damaged ({self._shown(path)})")
        if not self._confined(job):
            raise JobError(f"the record of job {job_id!r} names files outside the runs folder; not acting on it")
        return job

    def _confined(self, job: dict) -> bool:
        """Whether a record's run folder resolves (links followed) inside `runs_root` (when given) and its log is
        the job's own file in `jobs_root`: a record edited to point elsewhere is not read or acted on."""
        log = Path(job["log"])
        return (
            log.name == f"{job['id']}.log"
            and inside(log, [self.jobs_root]) is not None
            and (self.runs_root is None or inside(job["run_dir"], [self.runs_root]) is not None)
        )

    def _shown(self, path: str | Path) -> str:
        """A path as messages name it: from the runs folder (or the jobs folder)."""
        return shown(path, [r for r in (self.runs_root, self.jobs_root) if r is not None])

    def _all(self) -> list[dict]:
        """Every job record; a file that is not one (half-written, foreign, edited by hand) is left out."""
        out = []
        for p in self.jobs_root.glob("*.json"):
            if p.name.endswith(".exit.json"):
                continue
            try:
                job = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if _is_record(job, p.stem) and self._confined(job):
                out.append(job)
            elif p.name not in self._not_records:  # once per file: this runs every poll
                self._not_records.add(p.name)
                logger.warning("%s is not a job record of this runs folder; left out", p)
        return out

    def _run_jobs(self, run_dir: Path) -> list[dict]:
        """The job records of a (resolved) run folder."""
        return [j for j in self._all() if j["run_dir"] == str(run_dir)]

    # -- queries ---------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict:
        return self._load(job_id)

    def jobs(self) -> list[dict]:
        """All jobs, newest first."""
        return sorted(self._all(), key=lambda j: (j.get("created", ""), j["id"]), reverse=True)

    def log_tail(self, job_id: str, n: int = 50) -> str:
        return tail_lines(Path(self._load(job_id)["log"]), n)

    # -- submitting ------------------------------------------------------------------------------------------

    def validate_argv(self, argv) -> list[str]:
        if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
            raise JobError("the command must be a non-empty list of strings")
        if any("\0" in a for a in argv):
            raise JobError("the command contains a NUL character")
        if argv[0] not in self.allowed_programs:
            raise JobError(f"the command must start with {' or '.join(self.allowed_programs)}, not {argv[0]!r}")
        if self.require_module is not None and list(argv[1:3]) != ["-m", self.require_module]:
            raise JobError(f"the command must run `-m {self.require_module}`")
        return list(argv)

    def _validate_run_dir(self, run_dir) -> Path:
        run_dir = Path(run_dir).resolve()
        if self.runs_root is not None and not run_dir.is_relative_to(self.runs_root):
            raise JobError(f"the run folder {run_dir.name!r} must be inside the runs folder `{self.runs_root.name}`")
        return run_dir

    def submit(
        self,
        argv: list[str],
        run_dir: str | Path,
        device: str = "cpu",
        *,
        cwd: str | Path | None = None,
        start: bool = True,
        **extra,
    ) -> dict:
        """Queue a job (and start it now when its device is free and `start`); return its record."""
        argv = self.validate_argv(argv)
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            raise JobError(f"device must be 'cpu', 'cuda:N[,M...]' or 'cuda*K', not {device!r}")
        run_dir = self._validate_run_dir(run_dir)
        job_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        job = {
            "id": job_id,
            "command": argv,
            "run_dir": str(run_dir),
            "device": device,
            "device_request": device,
            "state": "queued",
            "cwd": str(Path(cwd or os.getcwd()).resolve()),
            "pid": None,
            "pgid": None,
            "proc_start": None,
            "created": _now(),
            "started": None,
            "ended": None,
            "returncode": None,
            "error": None,
            "log": str(self.jobs_root / f"{job_id}.log"),
            "log_tail": None,
            "stop_requested": None,
            "stop_deadline": None,
            **extra,
        }
        with self._locked():
            other = [j for j in self._run_jobs(run_dir) if j["state"] in ("queued", *ACTIVE)]
            if other:
                raise JobError(f"{self._shown(run_dir)} has a job {other[0]['state']} already ({other[0]['id']})")
            self._save(job)
        if start:
            try:
                self.start_next()
            except Exception:  # noqa: BLE001 (the job is queued; the next poll starts it)
                logger.exception("could not start queued jobs")
            job = self._load(job_id)
        return job

    def resume(self, job_id: str, argv: list[str] | None = None, device: str | None = None, **kw) -> dict:
        """Queue a new job continuing `job_id`'s run from its last checkpoint: its command (or `argv`) plus
        `--resume`, on its device (or `device`), with the fields its caller added (dataset, ...)."""
        old = self._load(job_id)
        if old["state"] not in FINISHED:
            raise JobError(f"job {job_id} is {old['state']}; stop it or wait for it to end first")
        # (submit refuses a second queued or active job for the run, so two resumes at once cannot both run)
        argv = list(old["command"] if argv is None else argv)
        if "--resume" not in argv:
            # after the subcommand: trailing KEY VALUE config options swallow everything that follows them
            at = argv.index("train") + 1 if "train" in argv else len(argv)
            argv.insert(at, "--resume")
        kw.setdefault("cwd", old.get("cwd"))
        extra = {k: v for k, v in old.items() if k not in _RECORD_KEYS}  # what the caller added (dataset, ...)
        device = device or old.get("device_request") or old["device"]  # "cuda*1": any free GPU this time
        return self.submit(argv, old["run_dir"], device, **{**extra, **kw, "resumed_from": job_id})

    # -- running -----------------------------------------------------------------------------------------------

    def start_next(self) -> list[dict]:
        """Start queued jobs in submission order on each device that runs none; return the started jobs."""
        started = []
        with self._locked():
            self.refresh()
            jobs = self._all()
            busy = set().union(*(_units(j["device"]) for j in jobs if j["state"] in ACTIVE))
            for job in sorted((j for j in jobs if j["state"] == "queued"), key=lambda j: (j["created"], j["id"])):
                if job["device"].startswith("cuda*"):
                    if not self._assign_gpus(job, busy):
                        continue
                elif _units(job["device"]) & busy:
                    continue
                self._launch(job)
                busy |= _units(job["device"])
                started.append(job)
        return started

    def _assign_gpus(self, job: dict, busy: set[str]) -> bool:
        """Give a "cuda*K" job the first K free GPUs (False: not enough free now; a job needing more than
        there are is failed)."""
        k = int(job["device"][len("cuda*") :])
        if k > self.gpus:
            job.update(state="failed", ended=_now(), error=f"needs {k} GPUs, {self.gpus} visible")
            self._save(job)
            return False
        free = [i for i in range(self.gpus) if f"cuda:{i}" not in busy]
        if len(free) < k:
            return False
        job["device"] = "cuda:" + ",".join(map(str, free[:k]))
        return True

    def _launch(self, job: dict) -> None:
        status = self.jobs_root / f"{job['id']}.exit.json"
        log_path = Path(job["log"])
        try:
            env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=visible_devices(job["device"]))
            status.unlink(missing_ok=True)
            Path(job["run_dir"]).mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                log.write(f"$ {' '.join(job['command'])}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [sys.executable, str(SUPERVISOR), str(status), *job["command"]],
                    cwd=job["cwd"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except (OSError, JobError) as e:
            job.update(state="failed", ended=_now(), error=f"could not start the job: {e}")
            self._save(job)
            return
        self._procs[job["id"]] = proc
        job.update(
            state="running",
            pid=proc.pid,
            pgid=proc.pid,
            proc_start=(_proc_stat(proc.pid) or (None, None))[1],
            started=_now(),
        )
        self._save(job)

    def _exit_status(self, job: dict) -> int | None:
        """The command's exit status from the supervisor's file, else the supervisor's own (if ours), else None."""
        try:
            rc = json.loads((self.jobs_root / f"{job['id']}.exit.json").read_text())["returncode"]
        except (OSError, ValueError, KeyError):
            rc = None
        proc = self._procs.get(job["id"])
        if proc is not None:
            if rc is not None:
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)  # it exits right after writing the file: reap it
            if proc.poll() is not None:
                self._procs.pop(job["id"], None)
                if rc is None:
                    rc = proc.returncode
        return rc

    def refresh(self) -> list[dict]:
        """Update running and stopping jobs whose process ended; kill stopping ones past their deadline."""
        changed = []
        with self._locked():
            jobs = self._all()
            for job in jobs:
                if job["state"] not in ACTIVE:
                    continue
                rc = self._exit_status(job)
                if rc is None and _alive(job["pid"], job.get("proc_start")):
                    if job["state"] == "stopping" and self._stop_overdue(job):
                        self._kill(job, signal.SIGKILL)
                    continue
                if rc is None:
                    rc = self._exit_status(job)  # written between the first read and the liveness check
                self._finish(job, rc)
                changed.append(job)
            self._reap({j["id"]: j["state"] for j in jobs})
        return changed

    def _reap(self, states: dict[str, str]) -> None:
        """Wait for this manager's supervisors whose jobs another manager has finished (no zombies); `states`:
        job id -> state, as `refresh` left them."""
        for job_id, proc in list(self._procs.items()):
            if states.get(job_id) not in ACTIVE and proc.poll() is not None:
                del self._procs[job_id]

    def _stop_overdue(self, job: dict) -> bool:
        """Past the stop deadline, and its log silent for the stop timeout (or MAX_STOP_TIMEOUTS passed)."""
        now, deadline = time.time(), job.get("stop_deadline") or 0
        if now <= deadline:
            return False
        timeout = job.get("stop_timeout") or self.stop_timeout
        try:
            silent = now - Path(job["log"]).stat().st_mtime
        except OSError:
            silent = float("inf")
        return silent >= timeout or now > deadline + (MAX_STOP_TIMEOUTS - 1) * timeout

    def _finish(self, job: dict, rc: int | None) -> None:
        text = self.log_tail(job["id"], 200)
        tail = "\n".join(text.splitlines()[-30:])
        job.update(returncode=rc, ended=_now(), log_tail=tail)
        if rc is None and self._finished_training(job, text):
            rc = 0
        if rc == 0:
            job.update(state="completed", error=None)
        elif job["state"] == "stopping" and rc in (
            None,
            STOPPED_EXIT_CODE,
            -signal.SIGTERM,
            -signal.SIGKILL,
            -signal.SIGINT,
            128 + signal.SIGTERM,
            128 + signal.SIGKILL,
        ):
            job.update(
                state="cancelled",
                error=stopped_message(text) or "stopped" + (" (killed)" if rc != STOPPED_EXIT_CODE else ""),
            )
        else:
            if rc is None:
                msg = f"{UNEXPECTED_MESSAGE} (no exit status)"
            elif rc < 0:
                msg = f"{UNEXPECTED_MESSAGE} (killed by {_signal_name(rc)})"
            else:
                msg = classify_failure(text) or f"the command failed with exit status {rc}"
            job.update(state="failed", error=msg)
        self._save(job)

    @staticmethod
    def _finished_training(job: dict, log_text: str) -> bool:
        """Without an exit status: did the run write its final model and finish the loop?"""
        return (Path(job["run_dir"]) / FINAL_CHECKPOINT).is_file() and "Total training time" in log_text

    def _kill(self, job: dict, sig: int) -> None:
        """SIGTERM to the supervisor (it passes it on to the command alone); any other signal to the whole group."""
        if not _alive(job["pid"], job.get("proc_start")):
            return
        with suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGTERM:
                os.kill(job["pid"], sig)
            else:
                os.killpg(job["pgid"], sig)

    def stop(self, job_id: str, timeout: float | None = None) -> dict:
        """Cancel a queued job; ask a running one to stop (SIGTERM to its command), killed after `timeout` s
        (default: the manager's) without output, or MAX_STOP_TIMEOUTS timeouts after this request."""
        with self._locked():
            job = self._load(job_id)
            if job["state"] == "queued":
                job.update(state="cancelled", ended=_now(), error="cancelled before it started")
                self._save(job)
            elif job["state"] == "running":
                timeout = self.stop_timeout if timeout is None else timeout
                job.update(
                    state="stopping", stop_requested=_now(), stop_deadline=time.time() + timeout, stop_timeout=timeout
                )
                self._save(job)
                self._kill(job, signal.SIGTERM)
            elif job["state"] == "stopping":
                pass
            else:
                raise JobError(f"job {job_id} has already ended ({job['state']})")
            return job

    def delete_run(self, run_dir: str | Path) -> int:
        """Delete a run folder (inside `runs_root`) and every job record of it; refused while one is queued or
        active. Returns the number of job records deleted."""
        run_dir = self._validate_run_dir(run_dir)
        if self.runs_root is None or run_dir == self.runs_root:
            raise JobError(f"{self._shown(run_dir)} is not a run folder inside the runs folder; not deleting it")
        with self._locked():
            jobs = self._run_jobs(run_dir)
            busy = [j for j in jobs if j["state"] not in FINISHED]
            if busy:
                raise JobError(f"{run_dir.name} is {busy[0]['state']}; stop it first")
            shutil.rmtree(run_dir, ignore_errors=True)
            for j in jobs:
                self.forget(j["id"])
        return len(jobs)

    def forget(self, job_id: str) -> None:
        """Delete an ended job's record, exit status and log."""
        with self._locked():
            job = self._load(job_id)
            if job["state"] not in FINISHED:
                raise JobError(f"job {job_id} is {job['state']}; stop it before deleting it")
            for path in (self._path(job_id), self.jobs_root / f"{job_id}.exit.json", Path(job["log"])):
                path.unlink(missing_ok=True)

    def wait(self, job_id: str, timeout: float = 60.0, interval: float = 0.1) -> dict:
        """Poll until the job has ended (starting queued jobs as devices free up); return its record."""
        deadline = time.time() + timeout
        while True:
            self.start_next()
            job = self._load(job_id)
            if job["state"] in FINISHED or time.time() > deadline:
                return job
            time.sleep(interval)
