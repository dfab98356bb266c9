"""`MultiMaskPredictor`: detectron2's DefaultPredictor for multimask runs and configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from detectron2.data import Metadata
from detectron2.engine import DefaultPredictor

from ..config import get_multimask_cfg
from ..run_folder import CONFIG_FILE, run_weights
from .weights import MultiMaskCheckpointer, resolve_weights


class MultiMaskPredictor(DefaultPredictor):
    """Predicts on one BGR (H, W, 3) uint8 image; returns `{"instances": Instances}` at image resolution.

    Each instance has `pred_boxes`, `scores`, `pred_classes`, `pred_multimask` (NUM_MASK, H, W) and
    `pred_masks` (the first mask). `metadata` carries `thing_classes` and `mask_names`.
    """

    def __init__(self, cfg):
        cfg = cfg.clone()
        cfg.defrost()
        weights = resolve_weights(cfg.MODEL.WEIGHTS)
        cfg.MODEL.WEIGHTS = ""  # loaded below with the safe checkpointer
        super().__init__(cfg)
        if weights:
            MultiMaskCheckpointer(self.model).load(weights, checkpointables=[])
        self.cfg.MODEL.WEIGHTS = weights
        head = cfg.MODEL.ROI_MULTI_MASK_HEAD
        classes = list(cfg.MULTIMASK.CLASS_NAMES) or [str(i) for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]
        self.metadata = Metadata(thing_classes=classes, mask_names=list(head.MASK_NAMES))
        self.mask_names = list(head.MASK_NAMES)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        score_threshold: float | None = None,
        device: str | None = None,
        weights: str | Path | None = None,
    ) -> MultiMaskPredictor:
        """Load a training run folder: its `config.yaml` and `weights` (default: `run_folder.run_weights`)."""
        run_dir = Path(run_dir)
        config = run_dir / CONFIG_FILE
        if not config.is_file():
            raise FileNotFoundError(f"{run_dir}: no {CONFIG_FILE}; is it a multimask training run?")
        # inference runs without mixed precision, so a run trained with AMP on a GPU also loads on the CPU
        opts = ["MODEL.WEIGHTS", str(weights or run_weights(run_dir)), "SOLVER.AMP.ENABLED", False]
        if score_threshold is not None:
            opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", float(score_threshold)]
        if device:
            opts += ["MODEL.DEVICE", device]
        return cls(get_multimask_cfg(config, opts))

    def __call__(self, original_image: np.ndarray) -> dict:
        if not isinstance(original_image, np.ndarray) or original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(
                "expected an (H, W, 3) image array in BGR order, got "
                f"{getattr(original_image, 'shape', type(original_image).__name__)}"
            )
        return super().__call__(original_image)
