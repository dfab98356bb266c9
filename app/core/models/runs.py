"""Training runs under a runs folder: listing them, and checking run names that come from the browser."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from multimask import run_folder

from ..roots import inside

logger = logging.getLogger(__name__)


class RunNotFoundError(LookupError):
    """A run name that is invalid or not (or no longer) a listed run; the message says what to do."""


@dataclass(frozen=True)
class RunInfo:
    """One training run folder that has a config and weights."""

    name: str  # path relative to the runs folder, "/"-separated
    path: Path  # resolved folder
    weights: Path  # the weights predictions use: `run_folder.run_weights`
    mask_names: tuple[str, ...]
    class_names: tuple[str, ...]
    mtime: float  # modification time of the weights file

    @property
    def key(self) -> tuple[str, str, float]:
        """Identifies these exact weights: changes when the run is retrained or checkpoints again."""
        return str(self.path), str(self.weights), self.mtime


def find_runs(runs_root: str | Path) -> list[RunInfo]:
    """Runs that are direct children of `runs_root` or one level further down, newest weights first.

    A folder counts when it holds `config.yaml`. Ones whose config cannot be read, that have no weights
    yet, or that lie outside `runs_root` through a link are skipped with a logged warning.
    """
    root = Path(runs_root).resolve()
    runs = [info for folder in run_folders(root) if (info := _read_run(root, folder)) is not None]
    runs.sort(key=lambda r: (-r.mtime, r.name))
    return runs


def run_folders(runs_root: str | Path, is_run: Callable[[Path], bool] | None = None) -> list[Path]:
    """Folders under `runs_root` that `is_run` accepts (default: holding config.yaml): its children, or one level
    further down (a child that is not a run groups runs). Hidden folders and links leaving the root are skipped."""
    root = Path(runs_root).resolve()
    if not root.is_dir():
        return []
    is_run = is_run or run_folder.is_run
    return [
        folder
        for child in _subdirs(root, root)
        for folder in ([child] if is_run(child) else _subdirs(child, root))
        if is_run(folder)
    ]


def get_run(runs_root: str | Path, name: object) -> RunInfo:
    """The listed run called `name`; raises RunNotFoundError for anything else (never opens other paths)."""
    if not isinstance(name, str) or not name.strip():
        raise RunNotFoundError("Pick a run first.")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name or "\x00" in name:
        raise RunNotFoundError(f"{name!r} is not a valid run name; pick a run from the list.")
    root = Path(runs_root).resolve()
    target = inside(root / rel, [root])
    if target is None:
        raise RunNotFoundError(
            f"Run {name!r} links to a folder outside the runs folder `{root.name}`; the app does not open it."
        )
    for run in find_runs(root):
        if run.name == name and run.path == target:
            return run
    raise RunNotFoundError(f"Run {name!r} is not in the runs folder `{root.name}` (any more); refresh the run list.")


def _subdirs(folder: Path, root: Path) -> list[Path]:
    """Visible sub-folders of `folder` that stay inside `root` once links are resolved."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        _warn_once(f"cannot list {folder}: {e}")
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        resolved = entry.resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            _warn_once(f"skipping {entry}: it links outside {root}")
            continue
        out.append(entry)
    return out


def _read_run(root: Path, folder: Path) -> RunInfo | None:
    try:
        weights = run_folder.run_weights(folder)
        for path in (folder / run_folder.CONFIG_FILE, weights):
            if inside(path, [root]) is None:
                raise ValueError(f"{path.name} links outside {root}")
        mask_names, class_names = _config_names(folder / run_folder.CONFIG_FILE)
        return RunInfo(
            name=folder.relative_to(root).as_posix(),
            path=folder.resolve(),
            weights=weights,
            mask_names=mask_names,
            class_names=class_names,
            mtime=weights.stat().st_mtime,
        )
    except Exception as e:  # a broken folder must not break the listing
        _warn_once(f"skipping run folder {folder}: {e}")
        return None


_names_cache: dict[tuple, tuple[tuple[str, ...], tuple[str, ...]]] = {}
_warned: set[str] = set()


def _config_names(config: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(mask names, class names) of a run config, parsed again only when the file changes."""
    from multimask.config import get_multimask_cfg

    st = config.stat()
    key = (str(config), st.st_mtime_ns, st.st_size)
    if key not in _names_cache:
        cfg = get_multimask_cfg(config)
        if len(_names_cache) > 1000:
            _names_cache.clear()
        _names_cache[key] = (tuple(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES), tuple(cfg.MULTIMASK.CLASS_NAMES))
    return _names_cache[key]


def _warn_once(message: str) -> None:
    """Log a warning the first time (listings repeat on every request); later only at debug level."""
    if message in _warned:
        logger.debug(message)
        return
    if len(_warned) > 1000:
        _warned.clear()
    _warned.add(message)
    logger.warning(message)


@dataclass(frozen=True)
class RunProgress:
    """How far a run's training got, for marking runs whose weights are partial."""

    state: str  # "complete", "training" (queued, running or stopping), "stopped", "failed" or "unfinished"
    iterations: int | None = None  # training iterations done when its weights were saved (if not complete)

    @property
    def partial(self) -> bool:
        return self.state != "complete"


def run_progress(runs_root: str | Path, runs: list[RunInfo]) -> dict[str, RunProgress]:
    """{run name: progress} of `runs`, from the app's latest job of each run (in `<runs_root>/.jobs`), or, for
    runs trained with the command line, from `summary.json` (written when training ends). Iterations are
    counted as the Train tab counts them: completed ones (a checkpoint of iteration 29 comes after 30)."""
    from multimask.engine.trainer import SUMMARY_FILE

    latest = _latest_jobs(Path(runs_root))
    out = {}
    for run in runs:
        job = latest.get(str(run.path))
        if job is not None:
            state = _JOB_PROGRESS[job["state"]]
        else:
            state = "complete" if (run.path / SUMMARY_FILE).is_file() else "unfinished"
        it = None if state == "complete" else weights_iteration(run.weights)
        out[run.name] = RunProgress(state, None if it is None else it + 1)
    return out


_JOB_PROGRESS = {
    "queued": "training",
    "running": "training",
    "stopping": "training",
    "completed": "complete",
    "cancelled": "stopped",
    "failed": "failed",
}
_job_managers: dict[Path, object] = {}


def _latest_jobs(runs_root: Path) -> dict[str, dict]:
    """{resolved run folder: its newest job record} from the Train tab's job records (none when no folder)."""
    from ..jobs.manager import JobManager
    from ..jobs.service import JOBS_FOLDER

    folder = runs_root.resolve() / JOBS_FOLDER
    if not folder.is_dir() or inside(folder, [runs_root]) is None:
        return {}
    if folder not in _job_managers:  # one reader per folder: it reports a file that is not a record only once
        _job_managers[folder] = JobManager(folder, runs_root)
    latest: dict[str, dict] = {}
    for job in _job_managers[folder].jobs():  # newest first
        latest.setdefault(job["run_dir"], job)
    return latest


_iterations: dict[tuple[str, int, int], int | None] = {}


def weights_iteration(weights: Path) -> int | None:
    """The (0-based) training iteration a checkpoint was saved at: from its name (`model_0000099.pth`) or its
    "iteration" entry (memory-mapped, not read whole); None when unknown or unreadable."""
    match = re.fullmatch(r"model_(\d+)\.pth", weights.name)
    if match:
        return int(match.group(1))
    try:
        st = weights.stat()
    except OSError:
        return None
    key = (str(weights), st.st_mtime_ns, st.st_size)
    if key not in _iterations:
        if len(_iterations) > 1000:
            _iterations.clear()
        _iterations[key] = _saved_iteration(weights)
    return _iterations[key]


def _saved_iteration(weights: Path) -> int | None:
    import torch

    try:
        value = torch.load(weights, map_location="cpu", mmap=True, weights_only=True).get("iteration")
    except Exception:  # a checkpoint being written, or not one of detectron2's
        return None
    return int(value) if isinstance(value, int) else None
