"""`MultiMaskRCNNConvUpsampleHead`: NUM_MASK named mask predictions per ROI, with their losses."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from ..config import validate_multimask_config

logger = logging.getLogger(__name__)

# Parameter names of detectron2's MaskRCNNConvUpsampleHead, which a standard checkpoint holds.
_STANDARD_KEY = re.compile(r"^(mask_fcn\d+|deconv|predictor)\.")


def _conv_upsample_trunk(in_channels: int, conv_dims: Sequence[int], norm: str) -> nn.Sequential:
    """NUM_CONV 3x3 convs then a 2x deconv, named as in detectron2's head so its weights map 1:1."""
    trunk = nn.Sequential()
    for k, dim in enumerate(conv_dims[:-1]):
        conv = Conv2d(in_channels, dim, 3, padding=1, bias=not norm, norm=get_norm(norm, dim),
                      activation=nn.ReLU())
        weight_init.c2_msra_fill(conv)
        trunk.add_module(f"mask_fcn{k + 1}", conv)
        in_channels = dim
    trunk.add_module("deconv", ConvTranspose2d(in_channels, conv_dims[-1], 2, stride=2))
    weight_init.c2_msra_fill(trunk.deconv)
    trunk.add_module("deconv_relu", nn.ReLU())
    return trunk


@ROI_MASK_HEAD_REGISTRY.register()
class MultiMaskRCNNConvUpsampleHead(nn.Module):
    """Mask R-CNN's conv-upsample mask head with one predictor per mask name.

    With `shared_trunk` one conv trunk feeds every predictor; otherwise each mask has its own trunk.
    Loading a standard Mask R-CNN state dict copies its mask head into every branch.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, mask_names: Sequence[str], num_classes: int,
                 conv_dims: Sequence[int], conv_norm: str = "", shared_trunk: bool = True,
                 loss_weights: Sequence[float] | None = None, dice_weight: float = 0.0, vis_period: int = 0):
        super().__init__()
        if not conv_dims:
            raise ValueError("conv_dims must hold at least the deconv's width")
        self.mask_names = tuple(mask_names)
        self.loss_weights = tuple(float(w) for w in (loss_weights or [1.0] * len(self.mask_names)))
        if len(self.loss_weights) != len(self.mask_names):
            raise ValueError(f"{len(self.loss_weights)} loss weights for {len(self.mask_names)} masks")
        self.dice_weight = float(dice_weight)
        self.vis_period = vis_period
        self.shared_trunk = shared_trunk
        if shared_trunk:
            self.trunk = _conv_upsample_trunk(input_shape.channels, conv_dims, conv_norm)
        else:
            self.trunks = nn.ModuleDict(
                {n: _conv_upsample_trunk(input_shape.channels, conv_dims, conv_norm) for n in self.mask_names}
            )
        self.predictors = nn.ModuleDict()
        for name in self.mask_names:
            pred = Conv2d(conv_dims[-1], num_classes, kernel_size=1)
            nn.init.normal_(pred.weight, std=0.001)
            nn.init.constant_(pred.bias, 0)
            self.predictors[name] = pred
        self.register_load_state_dict_pre_hook(_expand_standard_mask_head)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        validate_multimask_config(cfg)
        head = cfg.MODEL.ROI_MULTI_MASK_HEAD
        return {
            "input_shape": input_shape,
            "mask_names": list(head.MASK_NAMES),
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": [head.CONV_DIM] * (head.NUM_CONV + 1),
            "conv_norm": head.NORM,
            "shared_trunk": head.SHARED_TRUNK,
            "loss_weights": list(head.LOSS_WEIGHTS),
            "dice_weight": float(head.DICE_WEIGHT),
            "vis_period": cfg.VIS_PERIOD,
        }

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits of shape (R, NUM_MASK, C, M, M) for R ROI features."""
        if self.shared_trunk:
            x = self.trunk(x)
            return torch.stack([self.predictors[n](x) for n in self.mask_names], dim=1)
        return torch.stack([self.predictors[n](self.trunks[n](x)) for n in self.mask_names], dim=1)

    def forward(self, x: torch.Tensor, instances: list[Instances]):
        logits = self.layers(x)
        if self.training:
            return multimask_rcnn_loss(logits, instances, self.mask_names, self.loss_weights, self.vis_period,
                                       dice_weight=self.dice_weight)
        multimask_rcnn_inference(logits, instances)
        return instances


def _expand_standard_mask_head(module: MultiMaskRCNNConvUpsampleHead, state_dict: dict, prefix: str,
                               *args) -> None:
    """Load-state-dict pre-hook: map a standard Mask R-CNN mask head onto every mask branch.

    Runs only when the incoming dict holds standard keys (`mask_fcn1.weight`, ..., `predictor.weight`)
    and no multimask keys. A tensor whose shape differs (e.g. the predictor of a model trained on another
    number of classes) is left out, so that layer keeps its fresh initialisation.
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    standard = [k for k in keys if _STANDARD_KEY.match(k[len(prefix):])]
    if not standard or len(standard) != len(keys):
        return
    own = module.state_dict()
    loaded, skipped, unused = set(), set(), set()
    for key in standard:
        value = state_dict.pop(key)
        rest = key[len(prefix):]
        for name in module.mask_names:
            if rest.startswith("predictor."):
                target = f"predictors.{name}.{rest[len('predictor.'):]}"
            elif module.shared_trunk:
                target = f"trunk.{rest}"
            else:
                target = f"trunks.{name}.{rest}"
            if target not in own:
                unused.add(rest)  # e.g. mask_fcn4 of a 4-conv head loaded into a 2-conv one
            elif own[target].shape != value.shape:
                skipped.add(f"{rest} {tuple(value.shape)} -> {tuple(own[target].shape)}")
            else:
                state_dict[prefix + target] = value
                loaded.add(target)
    logger.info("Initialised mask branches %s from a standard Mask R-CNN mask head (%d tensors).",
                list(module.mask_names), len(loaded))
    if skipped:
        logger.info("Kept fresh initialisation for %s (shape differs).", sorted(skipped))
    if unused:
        logger.info("Not used from the checkpoint (this head has no such layer): %s.", sorted(unused))


def _select_class(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, K, C, M, M) logits -> (R, K, M, M) for each ROI's class (or the single agnostic channel)."""
    if logits.shape[2] == 1:
        return logits[:, :, 0]
    return logits[torch.arange(len(logits), device=logits.device), :, classes]


def multimask_rcnn_loss(logits: torch.Tensor, instances: list[Instances], mask_names: Sequence[str],
                        loss_weights: Sequence[float], vis_period: int = 0, *,
                        dice_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-mask-name binary cross-entropy on the matched class channel, `loss_mask_<name>`.

    Each name's loss is its `loss_weights` entry times (the mean cross-entropy over the pixels of the ROIs
    whose ground truth has that mask + `dice_weight` times their mean Dice loss); an ROI whose instance
    lacks it contributes nothing to that name. Logs detectron2's mask accuracy,
    false-positive and false-negative rates per name (`mask_rcnn/<name>/...`), with one GPU sync in all.
    """
    mask_size = logits.shape[-1]
    fg = [x for x in instances if len(x)]
    if not fg:
        return {f"loss_mask_{n}": logits.sum() * 0 for n in mask_names}
    targets = cat([x.gt_multimask.crop_and_resize(x.proposal_boxes.tensor, mask_size) for x in fg])
    present = cat([x.gt_multimask.present for x in fg])  # on the CPU: no sync to choose ROIs
    classes = cat([x.gt_classes for x in fg]).to(torch.int64)
    logits = _select_class(logits, classes)
    storage = get_event_storage()
    losses, stats = {}, {}
    for k, name in enumerate(mask_names):
        idx = present[:, k].nonzero().flatten()
        if not len(idx):
            losses[f"loss_mask_{name}"] = logits.sum() * 0
            continue
        idx = idx.to(logits.device, non_blocking=True)
        pred, target = logits[idx, k], targets[idx, k]
        stats[name] = _mask_stats(pred, target > 0.5)
        loss = F.binary_cross_entropy_with_logits(pred, target)
        if dice_weight:
            loss = loss + dice_loss(pred, target) * dice_weight
        losses[f"loss_mask_{name}"] = loss * loss_weights[k]
        if vis_period > 0 and storage.iter % vis_period == 0:
            vis = torch.cat([pred.sigmoid(), target], dim=2)
            for i, m in enumerate(vis[:8]):
                storage.put_image(f"{name}: prediction (left) / ground truth (right) ({i})",
                                  m.expand(3, -1, -1).detach())
    if stats:
        values = torch.stack([v for s in stats.values() for v in s]).tolist()  # the one sync
        for i, name in enumerate(stats):
            for j, key in enumerate(("accuracy", "false_positive", "false_negative")):
                storage.put_scalar(f"mask_rcnn/{name}/{key}", values[3 * i + j])
    return losses


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over R masks of 1 - Dice(sigmoid(logits), targets), both (R, M, M), smoothed by 1 (V-Net)."""
    p, t = logits.float().sigmoid().flatten(1), targets.float().flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def _mask_stats(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """detectron2's mask accuracy, false-positive and false-negative rates, as tensors."""
    wrong = (pred.detach() > 0) != gt
    positives = gt.sum()
    negatives = gt.numel() - positives
    return (1 - wrong.sum() / max(wrong.numel(), 1),
            (wrong & ~gt).sum() / negatives.clamp(min=1),
            (wrong & gt).sum() / positives.clamp(min=1))


def multimask_rcnn_inference(logits: torch.Tensor, pred_instances: list[Instances]) -> None:
    """Set `pred_multimask` (R, K, M, M) probabilities and `pred_masks` (R, 1, M, M), the first mask."""
    classes = cat([x.pred_classes for x in pred_instances]) if logits.shape[2] > 1 else None
    probs = _select_class(logits, classes).sigmoid()
    for inst, p in zip(pred_instances, probs.split([len(x) for x in pred_instances])):
        inst.pred_multimask = p
        inst.pred_masks = p[:, :1]
