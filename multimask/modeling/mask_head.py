"""`MultiMaskRCNNConvUpsampleHead`: NUM_MASK named mask predictions per ROI, with their losses."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from ..config import validate_multimask_config
from .part_box import (
    PART_BOX_SOURCES,
    PartBoxRegressor,
    apply_part_deltas,
    boxes_of_masks,
    enlarge_boxes,
    jitter_boxes,
    part_box_loss,
    part_boxes_of,
    sample_per_image,
)

logger = logging.getLogger(__name__)

# Parameter names of detectron2's MaskRCNNConvUpsampleHead, which a standard checkpoint holds.
_STANDARD_KEY = re.compile(r"^(mask_fcn\d+|deconv|predictor)\.")


def _conv_upsample_trunk(in_channels: int, conv_dims: Sequence[int], norm: str) -> nn.Sequential:
    """NUM_CONV 3x3 convs then a 2x deconv, named as in detectron2's head so its weights map 1:1."""
    trunk = nn.Sequential()
    for k, dim in enumerate(conv_dims[:-1]):
        conv = Conv2d(in_channels, dim, 3, padding=1, bias=not norm, norm=get_norm(norm, dim), activation=nn.ReLU())
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
    The masks named in `part_box_masks` are predicted a second time, in boxes of their own (`part_box.py`):
    around their coarse prediction on the instance's grid (`part_box_from` "coarse_mask") or regressed from the
    instance's features ("regression"), with features pooled there by the `pool` its caller passes.
    Loading a standard Mask R-CNN state dict copies its mask head into every branch.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        mask_names: Sequence[str],
        num_classes: int,
        conv_dims: Sequence[int],
        conv_norm: str = "",
        shared_trunk: bool = True,
        loss_weights: Sequence[float] | None = None,
        dice_weight: float = 0.0,
        part_box_masks: Sequence[str] = (),
        part_box_loss_weight: float = 1.0,
        part_box_from: str = "coarse_mask",
        part_box_jitter: float = 0.1,
        part_box_context: float = 1.25,
        part_box_batch_size_per_image: int = 0,
        vis_period: int = 0,
    ):
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
        unknown = [n for n in part_box_masks if n not in self.mask_names]
        if unknown:
            raise ValueError(f"part_box_masks {unknown} are not among the mask names {list(self.mask_names)}")
        self.part_box_masks = tuple(part_box_masks)
        self.part_index = [self.mask_names.index(n) for n in self.part_box_masks]
        self.part_box_loss_weight = float(part_box_loss_weight)
        self.part_box_jitter = float(part_box_jitter)
        self.part_box_context = float(part_box_context)
        self.part_box_batch_size_per_image = int(part_box_batch_size_per_image)
        if part_box_from not in PART_BOX_SOURCES:
            raise ValueError(f"part_box_from must be one of {PART_BOX_SOURCES}, got {part_box_from!r}")
        self.part_box_from = part_box_from
        if self.part_box_masks and part_box_from == "regression":
            self.part_box_regressor = PartBoxRegressor(input_shape, len(self.part_box_masks), conv_dims[0], conv_norm)
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
            "part_box_masks": list(head.PART_BOX_MASKS),
            "part_box_loss_weight": float(head.PART_BOX_LOSS_WEIGHT),
            "part_box_from": head.PART_BOX_FROM,
            "part_box_jitter": float(head.PART_BOX_JITTER),
            "part_box_context": float(head.PART_BOX_CONTEXT),
            "part_box_batch_size_per_image": head.PART_BOX_BATCH_SIZE_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
        }

    def layers(self, x: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        """Mask logits of shape (R, len(names), C, M, M) for R ROI features; every mask name by default."""
        names = self.mask_names if names is None else names
        if self.shared_trunk:
            x = self.trunk(x)
            return torch.stack([self.predictors[n](x) for n in names], dim=1)
        return torch.stack([self.predictors[n](self.trunks[n](x)) for n in names], dim=1)

    def forward(
        self, x: torch.Tensor, instances: list[Instances], pool: Callable[[list[Boxes]], torch.Tensor] | None = None
    ):
        """Losses in training, else `instances` with their predictions.

        `x` holds the features pooled in the instances' boxes; `pool` pools the same feature maps in other
        boxes (one `Boxes` per image), which the part boxes need.
        """
        if not self.part_box_masks:
            logits, mask_boxes, part_losses = self.layers(x), None, {}
        else:
            if pool is None:
                raise ValueError("PART_BOX_MASKS needs the ROI heads to pass `pool` (use MultiMaskROIHeads)")
            logits, mask_boxes, part_losses = self._with_part_boxes(x, instances, pool)
        if self.training:  # the parts' losses on their own grids come from _with_part_boxes
            own = [k for k, n in enumerate(self.mask_names) if n not in self.part_box_masks]
            losses = multimask_rcnn_loss(
                logits[:, own],
                instances,
                [self.mask_names[k] for k in own],
                [self.loss_weights[k] for k in own],
                self.vis_period,
                dice_weight=self.dice_weight,
            )
            return {**losses, **part_losses}
        multimask_rcnn_inference(logits, instances, mask_boxes)
        return instances

    def _with_part_boxes(self, x: torch.Tensor, instances: list[Instances], pool):
        """Logits (R, K, C, M, M), the box each mask's logits lie in (R, K, 4), and the parts' losses.

        In training the logits are the instance grid's, and the losses those of the parts on their own grids
        (`loss_mask_<part>`) and of their boxes (`loss_part_box_<part>` or `loss_mask_<part>_coarse`).
        """
        boxes = cat([(i.proposal_boxes if self.training else i.pred_boxes).tensor for i in instances])
        r, k = len(boxes), len(self.mask_names)
        mask_boxes = boxes.unsqueeze(1).repeat(1, k, 1)
        # every mask on the instance's grid: the output of the other masks, and where the parts are coarsely
        coarse = self.layers(x)
        regressed = self.part_box_from == "regression"
        deltas = self.part_box_regressor(x.detach()) if regressed else None  # its loss leaves the backbone alone
        zero = coarse.sum() * 0 + (deltas.sum() * 0 if regressed else 0)
        if not r:
            kind = "loss_part_box_{}" if regressed else "loss_mask_{}_coarse"
            return (
                coarse,
                mask_boxes,
                (
                    {key.format(n): zero for n in self.part_box_masks for key in (kind, "loss_mask_{}")}
                    if self.training
                    else {}
                ),
            )
        image_of_row = torch.repeat_interleave(torch.arange(len(instances)), torch.tensor([len(i) for i in instances]))
        losses = {}
        if self.training:
            gt = [i.gt_multimask for i in instances if len(i)]
            present = cat([g.present for g in gt])[:, self.part_index]
            truth = cat([part_boxes_of(g, self.part_box_masks) for g in gt]).to(boxes)
            if regressed:
                box_losses = part_box_loss(deltas, boxes, truth, present) * self.part_box_loss_weight
                losses = {f"loss_part_box_{n}": box_losses[j] for j, n in enumerate(self.part_box_masks)}
            else:  # the coarse part is trained too: it places the part's box at inference
                weights = [self.loss_weights[j] for j in self.part_index]
                coarse_losses = multimask_rcnn_loss(
                    coarse[:, self.part_index], instances, self.part_box_masks, weights, dice_weight=self.dice_weight
                )
                losses = {f"{key}_coarse": value for key, value in coarse_losses.items()}
            pooled = jitter_boxes(truth, self.part_box_jitter)
            present = sample_per_image(present, image_of_row, self.part_box_batch_size_per_image)
        else:
            present = torch.ones((r, len(self.part_index)), dtype=torch.bool)
            if regressed:
                pooled = apply_part_deltas(deltas.detach(), boxes)
            else:
                classes = cat([i.pred_classes for i in instances]) if coarse.shape[2] > 1 else None
                probs = _select_class(coarse[:, self.part_index], classes).sigmoid()
                pooled = boxes_of_masks(probs > 0.5, boxes)
        rows, cols = present.nonzero(as_tuple=True)  # row-major: grouped by image, as the pooler needs
        chosen = enlarge_boxes(pooled, self.part_box_context)[rows.to(boxes.device), cols.to(boxes.device)]
        fine = None
        if len(rows):
            counts = torch.bincount(image_of_row[rows], minlength=len(instances)).tolist()
            fine = self._part_logits(pool([Boxes(b) for b in chosen.split(counts)]), cols)
        if self.training:
            return coarse, mask_boxes, {**losses, **self._part_losses(fine, chosen, rows, cols, instances, zero)}
        logits = coarse.clone()
        if fine is not None:
            index = torch.tensor(self.part_index)[cols].to(x.device)
            logits[rows.to(x.device), index] = fine
            mask_boxes[rows.to(x.device), index] = chosen
        return logits, mask_boxes, {}

    def _part_losses(
        self,
        fine: torch.Tensor | None,
        chosen: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        instances: list[Instances],
        zero: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`loss_mask_<part>` of the parts' logits on their own grids: `fine[i]` (C, M, M) for part `cols[i]` of
        ROI `rows[i]` (indexing the images' ROIs in turn), lying in the box `chosen[i]`."""
        starts = [0, *itertools.accumulate(len(i) for i in instances)]
        losses = {}
        for j, name in enumerate(self.part_box_masks):
            sel = (cols == j).nonzero().flatten()
            if not len(sel):
                losses[f"loss_mask_{name}"] = zero
                continue
            picked = rows[sel]
            subsets = [
                inst[picked[(picked >= a) & (picked < b)] - a] for inst, a, b in zip(instances, starts, starts[1:])
            ]
            boxes = cat([i.proposal_boxes.tensor for i in subsets])
            mask_boxes = boxes.unsqueeze(1).repeat(1, len(self.mask_names), 1)
            mask_boxes[:, self.part_index[j]] = chosen[sel.to(chosen.device)]
            losses.update(
                multimask_rcnn_loss(
                    fine[sel.to(fine.device)].unsqueeze(1),
                    subsets,
                    [name],
                    [self.loss_weights[self.part_index[j]]],
                    self.vis_period,
                    dice_weight=self.dice_weight,
                    mask_boxes=mask_boxes,
                )
            )
        return losses

    def _part_logits(self, features: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(N, C, M, M) logits of N part features, feature i for part `cols[i]`."""
        out = None
        for j, name in enumerate(self.part_box_masks):
            idx = (cols == j).nonzero().flatten().to(features.device)
            y = self.layers(features[idx], [name])[:, 0]
            if out is None:
                out = y.new_zeros((len(features), *y.shape[1:]))
            out[idx] = y
        return out


def _expand_standard_mask_head(module: MultiMaskRCNNConvUpsampleHead, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: map a standard Mask R-CNN mask head onto every mask branch.

    Runs only when the incoming dict holds standard keys (`mask_fcn1.weight`, ..., `predictor.weight`)
    and no multimask keys. A tensor whose shape differs (e.g. the predictor of a model trained on another
    number of classes) is left out, so that layer keeps its fresh initialisation.
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    standard = [k for k in keys if _STANDARD_KEY.match(k[len(prefix) :])]
    if not standard or len(standard) != len(keys):
        return
    own = module.state_dict()
    loaded, skipped, unused = set(), set(), set()
    for key in standard:
        value = state_dict.pop(key)
        rest = key[len(prefix) :]
        for name in module.mask_names:
            if rest.startswith("predictor."):
                target = f"predictors.{name}.{rest[len('predictor.') :]}"
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
    logger.info(
        "Initialised mask branches %s from a standard Mask R-CNN mask head (%d tensors).",
        list(module.mask_names),
        len(loaded),
    )
    if skipped:
        logger.info("Kept fresh initialisation for %s (shape differs).", sorted(skipped))
    if unused:
        logger.info("Not used from the checkpoint (this head has no such layer): %s.", sorted(unused))


def _select_class(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, K, C, M, M) logits -> (R, K, M, M) for each ROI's class (or the single agnostic channel)."""
    if logits.shape[2] == 1:
        return logits[:, :, 0]
    return logits[torch.arange(len(logits), device=logits.device), :, classes]


def multimask_rcnn_loss(
    logits: torch.Tensor,
    instances: list[Instances],
    mask_names: Sequence[str],
    loss_weights: Sequence[float],
    vis_period: int = 0,
    *,
    dice_weight: float = 0.0,
    mask_boxes: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-mask-name binary cross-entropy on the matched class channel, `loss_mask_<name>`.

    Each name's loss is its `loss_weights` entry times (the mean cross-entropy over the pixels of the ROIs
    whose ground truth has that mask + `dice_weight` times their mean Dice loss); an ROI whose instance
    lacks it contributes nothing to that name. `mask_names` may be some of the ground truth's names, in the
    order of the logits' K masks. The logits of ROI i's mask k lie in `mask_boxes[i, k]` (R, K, 4; every
    ground-truth name), by default in the ROI's proposal box. Logs detectron2's mask accuracy,
    false-positive and false-negative rates per name (`mask_rcnn/<name>/...`), with one GPU sync in all.
    """
    mask_size = logits.shape[-1]
    fg = [x for x in instances if len(x)]
    if not fg:
        return {f"loss_mask_{n}": logits.sum() * 0 for n in mask_names}
    if mask_boxes is None:
        mask_boxes = cat([x.proposal_boxes.tensor for x in fg])
    targets = cat(
        [
            x.gt_multimask.crop_and_resize(b, mask_size, mask_names)
            for x, b in zip(fg, mask_boxes.split([len(x) for x in fg]))
        ]
    )
    present = cat([x.gt_multimask.present for x in fg])  # on the CPU: no sync to choose ROIs
    classes = cat([x.gt_classes for x in fg]).to(torch.int64)
    logits = _select_class(logits, classes)
    storage = get_event_storage()
    losses, stats = {}, {}
    for k, name in enumerate(mask_names):
        col = fg[0].gt_multimask.names.index(name)
        idx = present[:, col].nonzero().flatten()
        if not len(idx):
            losses[f"loss_mask_{name}"] = logits.sum() * 0
            continue
        idx = idx.to(logits.device, non_blocking=True)
        pred, target = logits[idx, k], targets[idx, col]
        stats[name] = _mask_stats(pred, target > 0.5)
        loss = F.binary_cross_entropy_with_logits(pred, target)
        if dice_weight:
            loss = loss + dice_loss(pred, target) * dice_weight
        losses[f"loss_mask_{name}"] = loss * loss_weights[k]
        if vis_period > 0 and storage.iter % vis_period == 0:
            vis = torch.cat([pred.sigmoid(), target], dim=2)
            for i, m in enumerate(vis[:8]):
                storage.put_image(
                    f"{name}: prediction (left) / ground truth (right) ({i})", m.expand(3, -1, -1).detach()
                )
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
    return (
        1 - wrong.sum() / max(wrong.numel(), 1),
        (wrong & ~gt).sum() / negatives.clamp(min=1),
        (wrong & gt).sum() / positives.clamp(min=1),
    )


def multimask_rcnn_inference(
    logits: torch.Tensor, pred_instances: list[Instances], mask_boxes: torch.Tensor | None = None
) -> None:
    """Set `pred_multimask` (R, K, M, M) probabilities and `pred_masks` (R, 1, M, M), the first mask.

    With `mask_boxes` (R, K, 4), the box each mask was predicted in, also set `pred_multimask_boxes`
    (`multimask_postprocess` pastes each mask in its own box).
    """
    classes = cat([x.pred_classes for x in pred_instances]) if logits.shape[2] > 1 else None
    probs = _select_class(logits, classes).sigmoid()
    counts = [len(x) for x in pred_instances]
    boxes = mask_boxes.split(counts) if mask_boxes is not None else [None] * len(counts)
    for inst, p, b in zip(pred_instances, probs.split(counts), boxes):
        inst.pred_multimask = p
        inst.pred_masks = p[:, :1]
        if b is not None:
            inst.pred_multimask_boxes = b
