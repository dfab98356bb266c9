"""`MultiMaskTrainer`: detectron2's DefaultTrainer with the multimask mapper, evaluator and checkpointer."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from ..data.mapper import MultiMaskDatasetMapper
from ..evaluation import MultiMaskEvaluator, save_results
from .hooks import GracefulStop
from .weights import MultiMaskCheckpointer, resolve_weights

logger = logging.getLogger(__name__)


def check_datasets(cfg) -> None:
    """Raise ValueError when a registered dataset's classes or mask names disagree with the config."""
    names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    for ds in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(ds)
        ds_names = list(meta.get("mask_names", []))
        if ds_names != names:
            raise ValueError(f"dataset {ds!r} has masks {ds_names} but MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES is "
                             f"{names}; register it with mask_names={names} or change the config")
        n = len(meta.get("thing_classes", []))
        if n != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(f"dataset {ds!r} has {n} classes but MODEL.ROI_HEADS.NUM_CLASSES is "
                             f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}")


class MultiMaskTrainer(DefaultTrainer):
    """Trains MultiMaskRCNN with detectron2's loop, hooks and writers (metrics.json, TensorBoard, console).

    Periodic checkpoints and evaluation follow SOLVER.CHECKPOINT_PERIOD and TEST.EVAL_PERIOD; `resume`
    continues from the output folder's last checkpoint.
    """

    def __init__(self, cfg):
        check_datasets(cfg)
        super().__init__(cfg)

    def build_hooks(self) -> list:
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before; hooks must get this one.
        self.checkpointer = MultiMaskCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        if comm.is_main_process():  # last, so the step's metrics are written first
            hooks.append(GracefulStop())
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=MultiMaskDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=MultiMaskDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        return MultiMaskEvaluator(dataset_name, cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES,
                                  output_folder or str(Path(cfg.OUTPUT_DIR) / "inference" / dataset_name))

    def train(self):
        """Train, then write the final evaluation (if any) to OUTPUT_DIR/eval_results.json.

        On SIGTERM/SIGINT, saves a checkpoint after the current step and raises `hooks.TrainingStopped`.
        """
        super().train()
        results = getattr(self, "_last_eval_results", None)  # set by DefaultTrainer's EvalHook
        if results and comm.is_main_process():
            save_results(results, Path(self.cfg.OUTPUT_DIR) / "eval_results.json")
        return results

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from the last checkpoint in OUTPUT_DIR, else load MODEL.WEIGHTS (downloaded if remote)."""
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.resume_or_load("", resume=True)
            self.start_iter = self.iter + 1
            logger.info("Resuming at iteration %d", self.start_iter)
        elif self.cfg.MODEL.WEIGHTS:
            self.checkpointer.load(resolve_weights(self.cfg.MODEL.WEIGHTS), checkpointables=[])
