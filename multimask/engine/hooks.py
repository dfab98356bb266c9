"""Training hooks: graceful stop on SIGTERM/SIGINT, early stopping on a validation metric, peak GPU memory."""

from __future__ import annotations

import logging
import math
import operator
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

import torch
from detectron2.engine import HookBase
from detectron2.engine import hooks as d2hooks
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

from ..run_folder import BEST_CHECKPOINT, FINAL_CHECKPOINT

logger = logging.getLogger(__name__)

STOPPED_EXIT_CODE = 3  # exit status of `python -m multimask train` after a graceful stop


class TrainingStopped(BaseException):
    """Raised out of the training loop after a graceful stop; the checkpoint `checkpoint` was saved.

    A BaseException (like KeyboardInterrupt), so detectron2's loop does not log it as a training error.
    """

    def __init__(self, iteration: int, checkpoint: str):
        super().__init__(f"stopped at iteration {iteration}; resume with --resume")
        self.iteration = iteration
        self.checkpoint = checkpoint


class GracefulStop(HookBase):
    """On SIGTERM or SIGINT, save `model_<iter>` after the current step and raise `TrainingStopped`.

    The checkpoint becomes `last_checkpoint`, so `--resume` continues at the next iteration to the same
    SOLVER.MAX_ITER. A second SIGINT interrupts at once (KeyboardInterrupt). Handlers are installed in
    `before_train` (main thread only) and restored in `after_train`. In multi-process training every process
    has this hook and they agree after each step (an all_gather), so all stop at the same iteration once any
    of them got the signal; the main process writes the checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def _handler(self, signum, frame) -> None:
        self.request_stop(signum)

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def after_step(self):
        stop = self.requested is not None
        if comm.get_world_size() > 1:
            stop = any(comm.all_gather(stop))
        it = self.trainer.iter
        if not stop or it + 1 >= self.trainer.max_iter:
            return  # nothing asked, or the last step: training ends normally and writes model_final
        name = f"model_{it:07d}"
        self.trainer.checkpointer.save(name, iteration=it)  # written by the main process only
        comm.synchronize()
        logger.info("Stop requested (signal %s): saved %s.pth at iteration %d", self.requested, name, it)
        raise TrainingStopped(it, f"{name}.pth")


class EarlyStopped(BaseException):
    """Raised out of the training loop by `EarlyStopping`; `MultiMaskTrainer.train` ends training normally.

    A BaseException, like `TrainingStopped`, so detectron2's loop does not log it as a training error.
    """

    def __init__(self, iteration: int, reason: str):
        super().__init__(f"early stopping at iteration {iteration}: {reason}")
        self.iteration = iteration


class MetricTracker:
    """The best value of a metric over evaluations, and how many evaluations in a row did not improve it.

    NaN and infinite values never count. A value equal to the best moves the best to its (later) iteration, as
    `BestCheckpointer` keeps the latest of equal checkpoints, but it is no improvement: it does not reset the
    count, so early stopping still ends a plateau (e.g. every AP 0).
    """

    def __init__(self, mode: str = "max"):
        self._better = operator.gt if mode == "max" else operator.lt
        self.best: float | None = None
        self.best_iter: int | None = None
        self.stale = 0

    def update(self, value: float | None, iteration: int) -> bool:
        """Count one evaluation; True when `value` is the best so far or equals it (the best moves to it)."""
        if value is None or not math.isfinite(value):
            self.stale += 1
            return False
        if self.best is None or self._better(value, self.best):
            self.best, self.best_iter, self.stale = value, iteration, 0
            return True
        self.stale += 1
        if value == self.best:
            self.best_iter = iteration
            return True
        return False


class BestCheckpointer(d2hooks.BestCheckpointer):
    """detectron2's BestCheckpointer, but an evaluation equal to the best one replaces `model_best.pth`.

    Of equal scores the latest, most trained weights are kept: when every AP is still 0 (or ties), the best
    checkpoint is not the earliest one.
    """

    def __init__(self, eval_period: int, checkpointer, val_metric: str, mode: str = "max"):
        super().__init__(eval_period, checkpointer, val_metric, mode, file_prefix=Path(BEST_CHECKPOINT).stem)
        self._compare = operator.ge if mode == "max" else operator.le


def track(evaluations: Mapping[int, dict], metric: str, mode: str) -> MetricTracker:
    """A MetricTracker fed `metric` from `evaluations` ({iteration: nested results}) in iteration order."""
    tracker = MetricTracker(mode)
    for it in sorted(evaluations):
        tracker.update(flatten_results_dict(evaluations[it]).get(metric), it)
    return tracker


class EarlyStopping(HookBase):
    """Ends training when `patience` evaluations in a row did not improve `metric`.

    Place it after the EvalHook (and BestCheckpointer), on every process: at each step that the EvalHook
    evaluates (`eval_period`), the main process counts the metric if it was written at this iteration, and
    all processes stop together: `model_final` is saved, then `EarlyStopped` is raised.
    """

    def __init__(self, eval_period: int, metric: str, mode: str, patience: int):
        self.period, self.metric, self.patience = eval_period, metric, patience
        self.tracker = MetricTracker(mode)

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.period or it + 1 == self.trainer.max_iter:
            return  # the EvalHook did not evaluate (the last evaluation runs after training)
        reason = comm.all_gather(self.check(it) if comm.is_main_process() else None)[0]
        if reason:
            self.trainer.checkpointer.save(Path(FINAL_CHECKPOINT).stem, iteration=it)
            raise EarlyStopped(it, reason)

    def check(self, iteration: int) -> str | None:
        """Count the evaluation written at `iteration`, if any; the reason to stop once patience runs out."""
        latest = self.trainer.storage.latest().get(self.metric)
        if latest is None or latest[1] != iteration:
            return None
        self.tracker.update(latest[0], iteration)
        t = self.tracker
        if t.stale < self.patience:
            return None
        best = "no finite value yet" if t.best is None else f"best {t.best:.4g} at iteration {t.best_iter}"
        return f"{self.metric} did not improve for {t.stale} evaluations; {best}"


class GPUMemory(HookBase):
    """Puts `max_mem_mb`, the peak CUDA memory allocated so far in MiB, into the event storage after each step.

    Add it only when the model is on a GPU, and before the PeriodicWriter so metrics.json gets it.
    """

    def after_step(self):
        self.trainer.storage.put_scalar("max_mem_mb", torch.cuda.max_memory_allocated() / 2**20, smoothing_hint=False)
