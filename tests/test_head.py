"""The multimask head: shapes, losses, the absent-mask rule, inference and weight initialisation."""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask.modeling.mask_head import (
    MultiMaskRCNNConvUpsampleHead,
    multimask_rcnn_inference,
    multimask_rcnn_loss,
)
from multimask.structures import MultiMasks
from tests.conftest import tiny_cfg

NAMES = {1: ("primary",), 2: ("primary", "secondary"), 3: ("amodal", "visible", "occluder")}


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_head_output_shapes(k, shared):
    cfg = tiny_cfg(num_classes=4, names=NAMES[k], **{"MODEL.ROI_MULTI_MASK_HEAD.SHARED_TRUNK": shared})
    head = MultiMaskRCNNConvUpsampleHead(cfg, ShapeSpec(channels=64, height=14, width=14))
    assert head.layers(torch.randn(5, 64, 14, 14)).shape == (5, k, 4, 28, 28)
    assert set(head.predictors) == set(NAMES[k])
    assert hasattr(head, "trunk") == shared and hasattr(head, "trunks") != shared


@pytest.mark.parametrize("k", [1, 2, 3])
def test_model_outputs_every_mask_at_image_resolution(k):
    cfg = tiny_cfg(num_classes=2, names=NAMES[k], **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "height": 192, "width": 256}])[
            0
        ]["instances"]
    assert len(out) > 0
    assert out.pred_multimask.shape == (len(out), k, 192, 256)
    assert out.pred_multimask.dtype == torch.bool
    assert torch.equal(out.pred_masks, out.pred_multimask[:, 0])


def _instances(n_img=1, present=((True, True), (True, False)), classes=(0, 1)):
    """One image of 64x64 with two 32x32 ROIs equal to their ground-truth boxes."""
    inst = Instances((64, 64))
    boxes = torch.tensor([[0.0, 0, 32, 32], [32, 32, 64, 64]])
    inst.proposal_boxes = Boxes(boxes)
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor(classes)
    full = lambda b: [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]]  # noqa: E731
    left = lambda b: [[b[0], b[1], (b[0] + b[2]) / 2, b[1], (b[0] + b[2]) / 2, b[3], b[0], b[3]]]  # noqa: E731
    segms = []
    for i, (p0, p1) in enumerate(present):
        b = boxes[i].tolist()
        segms.append({"primary": full(b) if p0 else [], "secondary": left(b) if p1 else []})
    inst.gt_multimask = MultiMasks.from_segmentations(["primary", "secondary"], segms, (64, 64))
    return [inst] * n_img


def test_zero_logits_give_log2_per_present_mask():
    logits = torch.zeros(2, 2, 3, 8, 8, requires_grad=True)
    with EventStorage():
        losses = multimask_rcnn_loss(logits, _instances(), ("primary", "secondary"), (1.0, 0.5))
    assert set(losses) == {"loss_mask_primary", "loss_mask_secondary"}
    assert losses["loss_mask_primary"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert losses["loss_mask_secondary"].item() == pytest.approx(0.5 * math.log(2), abs=1e-6)


def test_loss_matches_hand_computation_on_the_matched_class_channel():
    # ROI 0 is class 0, ROI 1 class 1. Logit +2 on the matched channel everywhere, junk elsewhere.
    logits = torch.full((2, 2, 3, 8, 8), -50.0)
    logits[0, :, 0] = 2.0
    logits[1, :, 1] = 2.0
    with EventStorage() as storage:
        losses = multimask_rcnn_loss(logits, _instances(), ("primary", "secondary"), (1.0, 1.0))
        stats = {k: v[0] for k, v in storage.latest().items()}
    # primary: both ROIs fully foreground -> -log(sigmoid(2)) everywhere
    assert losses["loss_mask_primary"].item() == pytest.approx(-math.log(1 / (1 + math.exp(-2))), rel=1e-5)
    # secondary: only ROI 0 has one; its left half is foreground, right half background
    pos, neg = -math.log(1 / (1 + math.exp(-2))), -math.log(1 - 1 / (1 + math.exp(-2)))
    assert losses["loss_mask_secondary"].item() == pytest.approx((pos + neg) / 2, rel=1e-4)
    assert stats["mask_rcnn/primary/accuracy"] == pytest.approx(1.0)
    assert stats["mask_rcnn/secondary/accuracy"] == pytest.approx(0.5)
    assert stats["mask_rcnn/secondary/false_positive"] == pytest.approx(1.0)


def test_dice_term_adds_to_its_mask_only():
    # As above (logit +2 on the matched channel everywhere), plus a Dice term of weight 2.
    logits = torch.full((2, 2, 3, 8, 8), -50.0)
    logits[0, :, 0] = 2.0
    logits[1, :, 1] = 2.0
    names = ("primary", "secondary")
    with EventStorage():
        plain = multimask_rcnn_loss(logits, _instances(), names, (1.0, 0.5))
        dice = multimask_rcnn_loss(logits, _instances(), names, (1.0, 0.5), dice_weight=2.0)
    p = 1 / (1 + math.exp(-2))
    # primary: two ROIs with all 64 pixels foreground; secondary: ROI 0 alone, 32 of 64 pixels foreground
    primary = 1 - (2 * 64 * p + 1) / (64 * p + 64 + 1)
    secondary = 1 - (2 * 32 * p + 1) / (64 * p + 32 + 1)
    assert dice["loss_mask_primary"].item() == pytest.approx(plain["loss_mask_primary"].item() + 2 * primary, rel=1e-5)
    assert dice["loss_mask_secondary"].item() == pytest.approx(
        plain["loss_mask_secondary"].item() + 0.5 * 2 * secondary, rel=1e-5
    )


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_absent_masks_contribute_nothing(dice_weight):
    logits = torch.randn(2, 2, 3, 8, 8, requires_grad=True)
    with EventStorage():
        losses = multimask_rcnn_loss(
            logits, _instances(), ("primary", "secondary"), (1.0, 1.0), dice_weight=dice_weight
        )
    losses["loss_mask_secondary"].backward()
    # ROI 1 has no secondary: no gradient reaches its logits; ROI 0's matched channel gets one
    assert logits.grad[1].abs().sum() == 0
    assert logits.grad[0, 1, 0].abs().sum() > 0 and logits.grad[0, 0].abs().sum() == 0


def test_no_instance_with_a_mask_gives_zero_loss_with_graph():
    logits = torch.randn(2, 2, 3, 8, 8, requires_grad=True)
    with EventStorage():
        losses = multimask_rcnn_loss(
            logits, _instances(present=((True, False), (True, False))), ("primary", "secondary"), (1.0, 1.0)
        )
    assert losses["loss_mask_secondary"].item() == 0.0
    losses["loss_mask_secondary"].backward()  # still part of the graph, so DDP and AMP are happy
    empty = _instances()[0][torch.zeros(0, dtype=torch.long)]
    with EventStorage():
        losses = multimask_rcnn_loss(torch.zeros(0, 2, 3, 8, 8), [empty], ("primary", "secondary"), (1.0, 1.0))
    assert all(v.item() == 0 for v in losses.values())


def test_inference_picks_the_predicted_class_for_each_mask():
    logits = torch.full((2, 2, 3, 4, 4), -10.0)
    logits[0, 0, 2] = 10.0  # ROI 0, primary, class 2
    logits[1, 1, 0] = 10.0  # ROI 1, secondary, class 0
    a, b = Instances((8, 8)), Instances((8, 8))
    a.pred_classes, b.pred_classes = torch.tensor([2]), torch.tensor([0])
    multimask_rcnn_inference(logits, [a, b])
    assert a.pred_multimask.shape == (1, 2, 4, 4) and a.pred_masks.shape == (1, 1, 4, 4)
    assert (a.pred_multimask[0, 0] > 0.99).all() and (a.pred_multimask[0, 1] < 0.01).all()
    assert (b.pred_multimask[0, 1] > 0.99).all() and (b.pred_multimask[0, 0] < 0.01).all()


def _standard_mask_rcnn_state(num_classes: int) -> dict:
    """A standard detectron2 Mask R-CNN (stock mask head) state dict, built here, not downloaded."""
    from detectron2.config import get_cfg

    from multimask.config import add_multimask_config

    cfg = tiny_cfg(num_classes=num_classes)
    std = get_cfg()
    add_multimask_config(std)  # so the tiny preset merges; then switch to the stock architecture
    std.merge_from_other_cfg(cfg)
    std.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    std.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    std.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    std.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    std.MODEL.ROI_MASK_HEAD.CONV_DIM = 64
    std.MODEL.ROI_MASK_HEAD.NORM = "GN"
    model = build_model(std)
    with torch.no_grad():
        for p in model.roi_heads.mask_head.parameters():
            p.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("shared", [True, False])
def test_standard_mask_rcnn_checkpoint_initialises_every_mask_branch(tmp_path, shared):
    from multimask.engine import MultiMaskCheckpointer

    state = _standard_mask_rcnn_state(num_classes=3)
    path = tmp_path / "standard.pth"
    torch.save({"model": state}, path)
    model = build_model(tiny_cfg(num_classes=3, **{"MODEL.ROI_MULTI_MASK_HEAD.SHARED_TRUNK": shared}))
    MultiMaskCheckpointer(model).load(str(path), checkpointables=[])
    head = model.roi_heads.mask_head
    for name in ("primary", "secondary"):
        trunk = head.trunk if shared else head.trunks[name]
        assert torch.equal(trunk.mask_fcn1.weight, state["roi_heads.mask_head.mask_fcn1.weight"])
        assert torch.equal(trunk.deconv.weight, state["roi_heads.mask_head.deconv.weight"])
        assert torch.equal(head.predictors[name].weight, state["roi_heads.mask_head.predictor.weight"])
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, state["backbone.bottom_up.stem.conv1.weight"])
    for key, value in head.state_dict().items():  # every tensor of every branch came from the checkpoint
        std_key = key.split(".", 2)[-1] if key.startswith(("trunks.", "predictors.")) else key[len("trunk.") :]
        std_key = std_key.replace("primary.", "").replace("secondary.", "")
        std_key = "predictor." + std_key if key.startswith("predictors.") else std_key
        assert torch.equal(value, state["roi_heads.mask_head." + std_key]), key


def test_class_specific_predictor_is_reinitialised_when_class_count_differs(tmp_path):
    from multimask.engine import MultiMaskCheckpointer

    state = _standard_mask_rcnn_state(num_classes=5)
    path = tmp_path / "standard.pth"
    torch.save({"model": state}, path)
    model = build_model(tiny_cfg(num_classes=3))
    fresh = model.roi_heads.mask_head.predictors["primary"].weight.clone()
    fresh_cls = model.roi_heads.box_predictor.cls_score.weight.clone()
    MultiMaskCheckpointer(model).load(str(path), checkpointables=[])
    head = model.roi_heads.mask_head
    assert torch.equal(head.trunk.mask_fcn2.weight, state["roi_heads.mask_head.mask_fcn2.weight"])
    assert torch.equal(head.predictors["primary"].weight, fresh)  # 5 classes -> 3: kept fresh
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, fresh_cls)


def test_multimask_checkpoint_round_trip_is_untouched_by_the_expansion(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from multimask.engine import MultiMaskCheckpointer

    a = build_model(tiny_cfg())
    DetectionCheckpointer(a, save_dir=str(tmp_path)).save("m")
    b = build_model(tiny_cfg())
    MultiMaskCheckpointer(b).load(str(tmp_path / "m.pth"), checkpointables=[])
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_model_zoo_style_pkl_checkpoint_initialises_the_branches(tmp_path):
    """detectron2's model zoo ships pickles of numpy arrays with an `__author__` key; that path works too."""
    import pickle

    from multimask.engine import MultiMaskCheckpointer

    state = _standard_mask_rcnn_state(num_classes=3)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)
    model = build_model(tiny_cfg(num_classes=3, **{"MODEL.ROI_MULTI_MASK_HEAD.SHARED_TRUNK": False}))
    MultiMaskCheckpointer(model).load(str(path), checkpointables=[])
    head = model.roi_heads.mask_head
    for name in ("primary", "secondary"):
        assert torch.equal(head.trunks[name].mask_fcn2.weight, state["roi_heads.mask_head.mask_fcn2.weight"])
        assert torch.equal(head.predictors[name].bias, state["roi_heads.mask_head.predictor.bias"])
