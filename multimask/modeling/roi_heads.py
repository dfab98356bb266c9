"""`MultiMaskROIHeads`: detectron2's StandardROIHeads with the multimask head on its mask branch."""

from __future__ import annotations

from functools import partial

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, select_foreground_proposals
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Instances

from ..config import validate_multimask_config


@ROI_HEADS_REGISTRY.register()
class MultiMaskROIHeads(StandardROIHeads):
    """Box head as in Mask R-CNN; the mask branch is built from `MODEL.ROI_MULTI_MASK_HEAD`.

    Training losses: detectron2's box losses plus `loss_mask_<name>` per mask name (and the part boxes' losses,
    see the mask head). Inference adds `pred_multimask` (R, NUM_MASK, M, M), `pred_masks` (the first mask) and,
    with part boxes, `pred_multimask_boxes` (R, NUM_MASK, 4) to each instance.
    """

    def _forward_mask(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        """StandardROIHeads' mask branch, also handing the head a `pool` for boxes of its own (part boxes)."""
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        maps = [features[f] for f in self.mask_in_features]
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        return self.mask_head(self.mask_pooler(maps, boxes), instances, pool=partial(self.mask_pooler, maps))

    @classmethod
    def _init_mask_head(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        validate_multimask_config(cfg)
        head = cfg.MODEL.ROI_MULTI_MASK_HEAD
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI_HEADS.IN_FEATURES {in_features} have different channel counts {channels}")
        res = head.POOLER_RESOLUTION
        return {
            "mask_in_features": in_features,
            "mask_pooler": ROIPooler(
                output_size=res,
                scales=tuple(1.0 / input_shape[f].stride for f in in_features),
                sampling_ratio=head.POOLER_SAMPLING_RATIO,
                pooler_type=head.POOLER_TYPE,
            ),
            "mask_head": ROI_MASK_HEAD_REGISTRY.get(head.NAME)(
                cfg, ShapeSpec(channels=channels.pop(), width=res, height=res)
            ),
        }
