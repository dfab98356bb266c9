"""Finding and loading weights: model-zoo URLs with a clear offline error, safe checkpoints."""

from __future__ import annotations

import logging
import pickle
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..io import WeightsUnavailableError
from ..run_folder import BEST_CHECKPOINT

logger = logging.getLogger(__name__)

_REMOTE = ("detectron2://", "http://", "https://")
_DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"  # what detectron2:// stands for


def resolve_weights(path: str) -> str:
    """A local file for `path`: model-zoo or URL weights are downloaded (cached) first.

    Raises WeightsUnavailableError naming the source when the download fails (for example offline) or a
    local file is missing. An empty path means "no weights" and is returned as is.
    """
    if not path:
        return path
    if is_remote(path):
        try:
            return PathManager.get_local_path(path)
        except Exception as e:  # urllib / iopath raise many kinds
            raise WeightsUnavailableError(
                f"cannot download model weights {path!r} ({type(e).__name__}: {e}). Fetching them needs "
                "internet access; on an offline machine download the file elsewhere and set MODEL.WEIGHTS to "
                "its local path, or train from scratch with the 'scratch_mask_rcnn_R_50_FPN_gn' preset."
            ) from e
    if not Path(path).is_file():
        raise WeightsUnavailableError(f"model weights file not found: {path}")
    return path


def is_remote(path: str) -> bool:
    """Whether weights are a model-zoo or URL path (downloaded on first use)."""
    return path.startswith(_REMOTE)


def weights_url(path: str) -> str:
    """The http(s) URL of a remote weights path (detectron2:// expanded)."""
    return _DETECTRON2_URL + path[len("detectron2://") :] if path.startswith("detectron2://") else path


def cached_download(path: str) -> Path | None:
    """The local copy of remote weights when an earlier run downloaded them (iopath's cache), else None."""
    from iopath.common.file_io import get_cache_dir

    url = urlparse(weights_url(path))
    cached = Path(get_cache_dir()) / url.path.lstrip("/")
    return cached if cached.is_file() else None


def downloadable(path: str, timeout: float = 3.0) -> bool:
    """Whether remote weights are cached or their server answers (a TCP connection within `timeout` s).

    Behind a proxy (`https_proxy` and the like) only the download can tell: True.
    """
    if cached_download(path) is not None:
        return True
    url = urlparse(weights_url(path))
    if urllib.request.getproxies().get(url.scheme):
        return True
    try:
        socket.create_connection(
            (url.hostname or "", url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except (OSError, ValueError):
        return False
    return True


class MultiMaskCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose `.pth` loading uses `torch.load(weights_only=True)` on every torch.

    A checkpoint that holds arbitrary Python objects is refused with a clear message rather than unpickled.
    Detectron2 model-zoo `.pkl` files are pickles by design; loading one is logged. Saving `model_best.pth`
    leaves `last_checkpoint` alone: it names the checkpoint that `--resume` continues from.
    """

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if last_filename_basename != BEST_CHECKPOINT:
            super().tag_last_checkpoint(last_filename_basename)

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            logger.info("Unpickling detectron2-format weights %s (only load .pkl files you trust).", filename)
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> dict:
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsUnavailableError(
                f"{f} holds Python objects besides tensors, and loading them could run code; refusing. "
                f"Re-save its state dict with torch.save or use a checkpoint written by multimask. ({e})"
            ) from e
