"""The run folder: a training run's files, which weights are loaded first, and the readers and writers of them.

`OUTPUT_DIR` of a training run (`multimask train`, or the app's Train tab under its runs folder) holds:

- `config.yaml`: the frozen config (detectron2's `default_setup` writes it); a folder holding one is a run.
- `run_info.json` and `data/train.json`, `data/val.json`: each start's command, seed and package versions, and
  the frozen copies of the dataset JSONs the run trains on (`record_start`). Editing the originals while it
  trains changes nothing; `--resume` refuses to continue when an original has changed since the run began.
- `metrics.json` (detectron2's JSONWriter, a line per write; `read_metrics`), `log.txt`, TensorBoard events.
- `model_NNNNNNN.pth` checkpoints, `last_checkpoint` (the one `--resume` continues from), `model_final.pth`,
  and `model_best.pth` (the best evaluation's weights); `run_weights` picks the one to predict with.
- `evaluations.json` (every evaluation during training), `eval_results.json` (the final one, or the best one
  after an early stop), `summary.json` (written when a start ends normally).

The package reads and writes these names through this module only; the app reads the same folders.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import platform
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .io import DatasetError, WeightsUnavailableError, atomic_write_bytes, atomic_write_json, read_json

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run_info.json"
DATA_DIR = "data"
LOG_FILE = "log.txt"  # detectron2's log
METRICS_FILE = "metrics.json"  # detectron2's JSONWriter
EVALUATIONS_FILE = "evaluations.json"  # [{"iteration", "results"}] of every evaluation during training
EVAL_RESULTS_FILE = "eval_results.json"  # the final evaluation (the best one after an early stop)
SUMMARY_FILE = "summary.json"
BEST_CHECKPOINT = "model_best.pth"  # written by detectron2's BestCheckpointer (file prefix "model_best")
FINAL_CHECKPOINT = "model_final.pth"
LAST_CHECKPOINT = "last_checkpoint"  # detectron2's pointer to the latest checkpoint

_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "detectron2": "detectron2",
    "multimask": "multimask",
    "numpy": "numpy",
    "opencv": "cv2",
    "pycocotools": "pycocotools",
}  # name in run_info -> module


def is_run(folder: str | Path) -> bool:
    """Whether a folder is a training run: it holds `config.yaml`."""
    return (Path(folder) / CONFIG_FILE).is_file()


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder has a checkpoint to resume from (`last_checkpoint`)."""
    return (Path(run_dir) / LAST_CHECKPOINT).is_file()


def run_weights(run_dir: str | Path) -> Path:
    """The weights `predict`, `evaluate` and the app load from a run folder: `model_best.pth`, else
    `model_final.pth`, else the checkpoint `last_checkpoint` names (one inside the folder).

    `model_best.pth` holds the weights of the best evaluation (MULTIMASK.BEST_METRIC) of a run with validation.
    """
    run_dir = Path(run_dir)
    for name in (BEST_CHECKPOINT, FINAL_CHECKPOINT):
        if (run_dir / name).is_file():
            return run_dir / name
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        ckpt = run_dir / last.read_text().strip()
        if ckpt.is_file() and ckpt.parent == run_dir:
            return ckpt
    raise WeightsUnavailableError(
        f"{run_dir}: no {BEST_CHECKPOINT}, {FINAL_CHECKPOINT} or last checkpoint; is it a training run?"
    )


def frozen_json(output_dir: str | Path, kind: str) -> Path:
    """Where a run keeps its copy of the `kind` ("train" or "val") dataset JSON."""
    return Path(output_dir) / DATA_DIR / f"{kind}.json"


def package_versions() -> dict:
    """Versions of python and the packages a run depends on; CUDA's and the GPU names when there is a GPU."""
    import torch

    out = {"python": platform.python_version()}
    for name, module in _PACKAGES.items():
        out[name] = _version(module)
    out["cuda"] = torch.version.cuda
    out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def _version(module: str) -> str | None:
    version = getattr(importlib.import_module(module), "__version__", None)  # torch's includes the CUDA tag
    try:
        return str(version) if version else importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_fresh_start(output_dir: str | Path) -> None:
    """Refuse to start a new training in a folder that holds an earlier run's checkpoints: it would overwrite
    them, and an old `model_best.pth` would outlive the new run and be taken for its best weights."""
    out = Path(output_dir)
    found = sorted(p.name for p in (*out.glob("model_*.pth"), out / LAST_CHECKPOINT) if p.is_file())
    if found:
        raise ValueError(
            f"{out}: holds an earlier run's checkpoints ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}); continue it with --resume, or train into "
            "another --output-dir"
        )


def record_start(
    output_dir: str | Path, jsons: dict[str, str | Path | None], *, seed: int, resume: bool, argv: list[str]
) -> None:
    """Write the frozen dataset copies and `run_info.json` for a training start (main process only).

    `jsons` maps "train"/"val" to the dataset JSON given (None: none). On `resume`, raise ValueError when a
    JSON's sha256 differs from the one recorded when the run began; otherwise add this start to "starts".
    """
    out = Path(output_dir)
    data = {kind: Path(p).resolve().read_bytes() for kind, p in jsons.items() if p}
    entries = {
        kind: {
            "path": str(Path(jsons[kind]).resolve()),
            "sha256": hashlib.sha256(b).hexdigest(),
            "copy": frozen_json(".", kind).as_posix(),
        }
        for kind, b in data.items()
    }
    info = read_json(out / RUN_INFO_FILE) if resume and (out / RUN_INFO_FILE).is_file() else None
    if info is None:
        info = {"argv": list(argv), "seed": seed, "versions": package_versions(), "data": {}, "starts": []}
    _check_unchanged(info["data"], entries)
    for kind, b in data.items():
        copy = frozen_json(out, kind)
        if copy.resolve() != Path(entries[kind]["path"]):
            atomic_write_bytes(copy, b)
    info["data"] = {**entries, **info["data"]}
    info["starts"].append(
        {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resume": resume,
            "seed": seed,
            "argv": list(argv),
        }
    )
    atomic_write_json(out / RUN_INFO_FILE, info, indent=2)


def _check_unchanged(recorded: dict, entries: dict) -> None:
    for kind, entry in entries.items():
        old = recorded.get(kind)
        if old and old["sha256"] != entry["sha256"]:
            raise ValueError(
                f"{entry['path']}: the {kind} JSON changed since this run started (sha256 "
                f"{old['sha256'][:12]}… then, {entry['sha256'][:12]}… now); start a new run or "
                "restore it"
            )


def read_json_or_none(path: str | Path) -> Any:
    """A run file's JSON content, or None when it is missing or unreadable (a run may not have written it yet)."""
    try:
        return read_json(path)
    except DatasetError:
        return None


_metrics_cache: dict[str, tuple[tuple[int, int], list[dict]]] = {}
_metrics_lock = threading.Lock()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """One dict per iteration (sorted), merged from every line of the run's metrics.json; [] when absent.

    detectron2's JSONWriter appends one JSON object per line; a resumed run appends again from its checkpoint's
    iteration, and evaluation results arrive as their own lines. Later lines win; a resumed run's first line
    drops what the run before it wrote past its checkpoint (which a crash may leave); a half-written last line is
    ignored. Cached by the file's size and modification time.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        st = path.stat()
    except OSError:
        return []
    key = (st.st_size, st.st_mtime_ns)
    with _metrics_lock:
        hit = _metrics_cache.get(str(path))
        if hit is not None and hit[0] == key:
            return hit[1]
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    by_iter: dict[int, dict] = {}
    last_train = -1
    for line in text.splitlines():
        row = _training_row(line, any_row=True)
        if row is None:
            continue
        it = row["iteration"]
        if "total_loss" in row:
            if it <= last_train:  # a resumed run: what was written from here on belongs to the run before
                by_iter = {k: v for k, v in by_iter.items() if k < it}
            last_train = it
        by_iter.setdefault(it, {}).update(row)
    rows = [by_iter[i] for i in sorted(by_iter)]
    with _metrics_lock:
        if len(_metrics_cache) > 256:
            _metrics_cache.clear()
        _metrics_cache[str(path)] = (key, rows)
    return rows


def iterations_done(run_dir: str | Path) -> int:
    """Training iterations written to metrics.json so far, from the file's tail (cheap for a runs table)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        if (row := _training_row(line)) is not None:
            return row["iteration"] + 1
    train = [r for r in read_metrics(run_dir) if "total_loss" in r]  # no training line in the tail
    return train[-1]["iteration"] + 1 if train else 0


def _training_row(line: str, any_row: bool = False) -> dict | None:
    """The metrics.json line as a dict with an int "iteration" (and "total_loss" unless `any_row`), else None."""
    try:
        row = json.loads(line)
    except ValueError:
        return None  # the line being written, or garbage
    if not (isinstance(row, dict) and isinstance(row.get("iteration"), int)):
        return None
    return row if any_row or "total_loss" in row else None
