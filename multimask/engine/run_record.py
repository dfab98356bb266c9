"""The record of a training run: `run_info.json` (command, seed, versions, data hashes) and frozen dataset copies.

A run trains on its copies `OUTPUT_DIR/data/train.json` and `val.json`, so editing the original files while
it trains changes nothing; `--resume` refuses to continue when an original has changed since the run began.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import platform
import secrets
from datetime import datetime, timezone
from pathlib import Path

from detectron2.utils import comm

from ..io import atomic_write_bytes, atomic_write_json, read_json

RUN_INFO = "run_info.json"
DATA_DIR = "data"
_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "detectron2": "detectron2",
    "multimask": "multimask",
    "numpy": "numpy",
    "opencv": "cv2",
    "pycocotools": "pycocotools",
}  # name in run_info -> module


def random_seed() -> int:
    """A random seed in [0, 2**31), the same on every process (all must call it)."""
    return comm.all_gather(secrets.randbelow(2**31))[0]


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
    found = sorted(p.name for p in (*out.glob("model_*.pth"), out / "last_checkpoint") if p.is_file())
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
    info = read_json(out / RUN_INFO) if resume and (out / RUN_INFO).is_file() else None
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
    atomic_write_json(out / RUN_INFO, info, indent=2)


def _check_unchanged(recorded: dict, entries: dict) -> None:
    for kind, entry in entries.items():
        old = recorded.get(kind)
        if old and old["sha256"] != entry["sha256"]:
            raise ValueError(
                f"{entry['path']}: the {kind} JSON changed since this run started (sha256 "
                f"{old['sha256'][:12]}… then, {entry['sha256'][:12]}… now); start a new run or "
                "restore it"
            )
