"""`MultiMaskTrainer`: detectron2's DefaultTrainer with the multimask mapper, evaluator and checkpointer."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import hooks as d2hooks
from detectron2.utils import comm

from ..config import best_metric, split_metric, validate_multimask_config
from ..data.mapper import MultiMaskDatasetMapper
from ..evaluation import MultiMaskEvaluator, save_results
from ..io import atomic_write_json, read_json
from ..run_folder import BEST_CHECKPOINT, EVAL_RESULTS_FILE, EVALUATIONS_FILE, SUMMARY_FILE
from .hooks import BestCheckpointer, EarlyStopped, EarlyStopping, GPUMemory, GracefulStop, track
from .weights import MultiMaskCheckpointer, resolve_weights

logger = logging.getLogger(__name__)


def check_datasets(cfg) -> None:
    """Raise ValueError when the config is invalid, or a registered dataset's classes or mask names disagree."""
    validate_multimask_config(cfg)
    names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    for ds in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(ds)
        ds_names = list(meta.get("mask_names", []))
        if ds_names != names:
            raise ValueError(
                f"dataset {ds!r} has masks {ds_names} but MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES is "
                f"{names}; register it with mask_names={names} or change the config"
            )
        n = len(meta.get("thing_classes", []))
        if n != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"dataset {ds!r} has {n} classes but MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
            )
    metric = best_metric(cfg)
    _, name = split_metric(metric, names)
    for ds in cfg.DATASETS.TEST if name.startswith("AP-") else ():
        classes = MetadataCatalog.get(ds).thing_classes
        if name[3:] not in classes:
            raise ValueError(
                f"MULTIMASK.BEST_METRIC {metric!r}: dataset {ds!r} has no class {name[3:]!r}; its classes are {classes}"
            )


class MultiMaskTrainer(DefaultTrainer):
    """Trains MultiMaskRCNN with detectron2's loop, hooks and writers (metrics.json, TensorBoard, console).

    Periodic checkpoints and evaluation follow SOLVER.CHECKPOINT_PERIOD and TEST.EVAL_PERIOD; `resume`
    continues from the output folder's last checkpoint. With periodic evaluation, `model_best.pth` keeps the
    weights of the best MULTIMASK.BEST_METRIC (the latest of equal ones), and MULTIMASK.EARLY_STOP_PATIENCE > 0
    enables early stopping.
    """

    def __init__(self, cfg):
        check_datasets(cfg)
        self._evaluations: dict[int, dict] = {}  # iteration -> results, main process
        super().__init__(cfg)

    def build_hooks(self) -> list:
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before; hooks must get this one.
        self.checkpointer = MultiMaskCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        i = next(k for k, h in enumerate(hooks) if isinstance(h, d2hooks.EvalHook))
        hooks[i] = d2hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate)  # records every evaluation
        hooks[i + 1 : i + 1] = self._best_hooks()  # after the evaluation, before the PeriodicWriter
        for k, h in enumerate(hooks):
            if isinstance(h, d2hooks.PeriodicWriter):
                hooks[k] = d2hooks.PeriodicWriter(h._writers, period=self.cfg.MULTIMASK.WRITE_PERIOD)
        if comm.is_main_process() and next(self.model.parameters()).is_cuda:
            hooks.insert(i, GPUMemory())
        # Every process; before the evaluation, so that a stop does not wait for one (the writers still write
        # the step's metrics: they write in after_train too).
        hooks.insert(next(k for k, h in enumerate(hooks) if isinstance(h, d2hooks.EvalHook)), GracefulStop())
        return hooks

    def _best_hooks(self) -> list:
        cfg = self.cfg
        period, patience = cfg.TEST.EVAL_PERIOD, cfg.MULTIMASK.EARLY_STOP_PATIENCE
        if not (cfg.DATASETS.TEST and period > 0):
            if patience:
                logger.warning(
                    "MULTIMASK.EARLY_STOP_PATIENCE needs a validation set (DATASETS.TEST) and "
                    "TEST.EVAL_PERIOD > 0; training will not stop early"
                )
            return []
        metric, mode = best_metric(cfg), cfg.MULTIMASK.BEST_MODE
        out = [BestCheckpointer(period, self.checkpointer, metric, mode)] if comm.is_main_process() else []
        if patience:
            out.append(EarlyStopping(period, metric, mode, patience))
        return out

    def _evaluate(self) -> dict:
        self._last_eval_results = self.test(self.cfg, self.model)
        if self._last_eval_results and comm.is_main_process():
            self._evaluations[self.storage.iter] = self._last_eval_results
            save_results(
                [{"iteration": it, "results": r} for it, r in sorted(self._evaluations.items())],
                Path(self.cfg.OUTPUT_DIR) / EVALUATIONS_FILE,
            )
        return self._last_eval_results

    def _hook(self, kind: type):
        return next((h for h in self._hooks if isinstance(h, kind)), None)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=MultiMaskDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=MultiMaskDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        return MultiMaskEvaluator(
            dataset_name,
            cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES,
            output_folder or str(Path(cfg.OUTPUT_DIR) / "inference" / dataset_name),
        )

    def train(self):
        """Train, then write OUTPUT_DIR/summary.json and the final evaluation (if any) to eval_results.json.

        An early stop ends training normally; eval_results.json then holds the best evaluation's results.
        On SIGTERM/SIGINT, saves a checkpoint after the current step and raises `hooks.TrainingStopped`
        (no summary.json: it exists only once the latest start has ended).
        """
        if comm.is_main_process():
            (Path(self.cfg.OUTPUT_DIR) / SUMMARY_FILE).unlink(missing_ok=True)  # from an earlier start
        stop = None
        try:
            super().train()
        except EarlyStopped as e:
            stop = e
            logger.info("%s", e)
        best = self._hook(d2hooks.BestCheckpointer)
        results = getattr(self, "_last_eval_results", None)  # the last evaluation
        if stop is not None and best is not None and best.best_iter in self._evaluations:
            results = self._evaluations[best.best_iter]
        if comm.is_main_process():
            if results:
                save_results(results, Path(self.cfg.OUTPUT_DIR) / EVAL_RESULTS_FILE)
            atomic_write_json(Path(self.cfg.OUTPUT_DIR) / SUMMARY_FILE, self._summary(stop, best), indent=2)
        return results

    def _summary(self, stop: EarlyStopped | None, best) -> dict:
        has_best = best is not None and best.best_iter is not None
        return {
            "iterations": stop.iteration + 1 if stop else self.max_iter,
            "max_iter": self.max_iter,
            "early_stopped": stop is not None,
            "best": {
                "metric": best_metric(self.cfg),
                "mode": self.cfg.MULTIMASK.BEST_MODE,
                "value": best.best_metric,
                "iteration": best.best_iter,
                "checkpoint": BEST_CHECKPOINT,
            }
            if has_best
            else None,
        }

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from the last checkpoint in OUTPUT_DIR, else load MODEL.WEIGHTS (downloaded if remote).

        Resuming also restores the best metric so far and the early-stopping count from evaluations.json.
        """
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.resume_or_load("", resume=True)
            self.start_iter = self.iter + 1
            logger.info("Resuming at iteration %d", self.start_iter)
            self._restore_evaluations()
        elif self.cfg.MODEL.WEIGHTS:
            self.checkpointer.load(resolve_weights(self.cfg.MODEL.WEIGHTS), checkpointables=[])

    def _restore_evaluations(self) -> None:
        path = Path(self.cfg.OUTPUT_DIR) / EVALUATIONS_FILE
        if not (path.is_file() and comm.is_main_process()):
            return
        # evaluations of the resumed weights and before; later ones belong to steps that will run again
        evaluations = read_json(path)
        self._evaluations = {e["iteration"]: e["results"] for e in evaluations if e["iteration"] < self.start_iter}
        tracker = track(self._evaluations, best_metric(self.cfg), self.cfg.MULTIMASK.BEST_MODE)
        best, early = self._hook(d2hooks.BestCheckpointer), self._hook(EarlyStopping)
        if best is not None:
            best.best_metric, best.best_iter = tracker.best, tracker.best_iter
        if early is not None:
            early.tracker = tracker
