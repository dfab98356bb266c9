"""`GracefulStop`: SIGTERM/SIGINT end training after the current iteration with a checkpoint to resume from."""

from __future__ import annotations

import logging
import signal
import threading

from detectron2.engine import HookBase

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
    `before_train` (main thread only) and restored in `after_train`.
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
        if self.requested is None:
            return
        it = self.trainer.iter
        if it + 1 >= self.trainer.max_iter:
            return  # the last step: training ends normally and writes model_final
        name = f"model_{it:07d}"
        self.trainer.checkpointer.save(name, iteration=it)
        logger.info("Stop requested (signal %d): saved %s.pth at iteration %d", self.requested, name, it)
        raise TrainingStopped(it, f"{name}.pth")
