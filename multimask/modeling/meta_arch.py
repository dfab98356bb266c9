"""`MultiMaskRCNN`: GeneralizedRCNN whose outputs carry every mask at image resolution."""

from __future__ import annotations

import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances


@META_ARCH_REGISTRY.register()
class MultiMaskRCNN(GeneralizedRCNN):
    """Mask R-CNN whose post-processing pastes `pred_multimask` as well as `pred_masks`.

    Each output instance has `pred_multimask`, bool (N, NUM_MASK, H, W) in MASK_NAMES order, and
    `pred_masks` = `pred_multimask[:, 0]`, so detectron2's Visualizer and COCOEvaluator work unchanged.
    """

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        out = []
        for inst, inp in zip(results, batched_inputs):
            height = inp.get("height", inst.image_size[0])
            width = inp.get("width", inst.image_size[1])
            out.append({"instances": multimask_postprocess(inst, height, width)})
        return out


def multimask_postprocess(instances: Instances, height: int, width: int, mask_threshold: float = 0.5) -> Instances:
    """detector_postprocess, then paste every mask of `pred_multimask` into a (height, width) image."""
    if not instances.has("pred_multimask"):
        return detector_postprocess(instances, height, width, mask_threshold=mask_threshold)
    if instances.has("pred_masks"):
        instances.remove("pred_masks")  # pasted below with the others, not twice
    scale = torch.tensor([width / instances.image_size[1], height / instances.image_size[0]] * 2)
    r = detector_postprocess(instances, height, width)
    probs = r.pred_multimask  # (N, K, M, M), filtered and boxes rescaled by detector_postprocess
    n, k = probs.shape[:2]
    if r.has("pred_multimask_boxes"):  # masks predicted in boxes of their own (part boxes)
        boxes = (r.pred_multimask_boxes * scale.to(r.pred_multimask_boxes)).flatten(0, 1)
        r.remove("pred_multimask_boxes")
    else:
        boxes = r.pred_boxes.tensor.repeat_interleave(k, dim=0)
    pasted = paste_masks_in_image(probs.flatten(0, 1), boxes, (height, width), threshold=mask_threshold)
    pasted = pasted.to(torch.bool).view(n, k, height, width)
    r.pred_multimask = pasted
    r.pred_masks = pasted[:, 0]
    return r
