"""Model parts, registered in detectron2's registries on import."""

from .mask_head import MultiMaskRCNNConvUpsampleHead, multimask_rcnn_inference, multimask_rcnn_loss
from .meta_arch import MultiMaskRCNN, multimask_postprocess
from .roi_heads import MultiMaskROIHeads

__all__ = [
    "MultiMaskRCNN",
    "MultiMaskRCNNConvUpsampleHead",
    "MultiMaskROIHeads",
    "multimask_postprocess",
    "multimask_rcnn_inference",
    "multimask_rcnn_loss",
]
