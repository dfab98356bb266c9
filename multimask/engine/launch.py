"""detectron2's `launch` of several training processes, stopped gracefully by a signal to the launcher."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import signal
from collections.abc import Callable
from contextlib import suppress

import torch
from detectron2.engine import launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from .hooks import STOPPED_EXIT_CODE


def random_seed() -> int:
    """A random seed in [0, 2**31), the same on every process (all must call it)."""
    return comm.all_gather(secrets.randbelow(2**31))[0]


def check_gpus(cfg, num_gpus: int) -> None:
    """Refuse several processes per machine without as many CUDA GPUs (detectron2's DDP needs one each)."""
    if cfg.MODEL.DEVICE != "cuda" or torch.cuda.device_count() < num_gpus:
        raise ValueError(
            f"--num-gpus {num_gpus} needs {num_gpus} CUDA GPUs and MODEL.DEVICE cuda; this machine "
            f"has {torch.cuda.device_count()} and MODEL.DEVICE is {cfg.MODEL.DEVICE}"
        )


def launch_until_stopped(
    main_func: Callable,
    num_gpus: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: tuple = (),
) -> None:
    """`launch(main_func, ...)`; a SIGTERM or SIGINT to this process is passed on to the training processes
    as SIGTERM (they stop together after saving a checkpoint, see `GracefulStop`), and this process waits for
    them instead of dying first, then exits with `STOPPED_EXIT_CODE`.

    Only to them: PyTorch's data-loading workers die of a SIGTERM that does not come from their parent, which
    would fail the run. SIGTERM, not SIGINT: the processes may have had a SIGINT from the terminal already, and a
    second one interrupts them at once.
    """
    stop_requested = []

    def pass_on(signum, _frame) -> None:
        stop_requested.append(signum)
        for child in multiprocessing.active_children():
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        launch(main_func, num_gpus, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url, args=args)
    except ProcessExitedException as e:
        if e.exit_code == STOPPED_EXIT_CODE or stop_requested:
            raise SystemExit(STOPPED_EXIT_CODE) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
