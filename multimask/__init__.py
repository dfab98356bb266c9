"""MultiMask: Mask R-CNN with several named masks per instance, as a detectron2 extension."""

from .config import add_multimask_config, get_multimask_cfg, validate_multimask_config
from .modeling import MultiMaskRCNN, MultiMaskRCNNConvUpsampleHead, MultiMaskROIHeads
from .structures import MultiMasks

__version__ = "0.1.0"

__all__ = [
    "MultiMaskRCNN",
    "MultiMaskRCNNConvUpsampleHead",
    "MultiMaskROIHeads",
    "MultiMasks",
    "add_multimask_config",
    "get_multimask_cfg",
    "validate_multimask_config",
]
