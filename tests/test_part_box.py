"""Part boxes (MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS): boxes, losses, the absent-part rule, pasting, loading."""

import math

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from multimask.config import get_multimask_cfg
from multimask.modeling import multimask_postprocess
from multimask.modeling.mask_head import MultiMaskRCNNConvUpsampleHead, multimask_rcnn_loss
from multimask.modeling.part_box import (
    PartBoxRegressor,
    apply_part_deltas,
    boxes_of_masks,
    enlarge_boxes,
    jitter_boxes,
    part_box_loss,
    part_boxes_of,
    sample_per_image,
)
from tests.conftest import tiny_cfg
from tests.test_head import _instances, _standard_mask_rcnn_state

PART = {"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS": ["secondary"]}
REGRESSED = {"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM": "regression"}


def test_deltas_give_a_part_box_by_hand():
    instance = torch.tensor([[0.0, 0, 32, 32]])
    # centre 8 vs 16 over a width of 32, half the width, the same height: the left half
    deltas = torch.tensor([[[-0.25, 0.0, math.log(0.5), 0.0]]])
    assert torch.allclose(apply_part_deltas(deltas, instance), torch.tensor([[[0.0, 0, 16, 32]]]))


def test_part_box_loss_by_hand_and_absent_parts_add_nothing():
    instances = torch.tensor([[0.0, 0, 32, 32]] * 3)
    left, far = torch.tensor([0.0, 0, 16, 32]), torch.tensor([64.0, 0, 96, 32])
    to_left = torch.tensor([-0.25, 0.0, math.log(0.5), 0.0])
    deltas = torch.zeros(3, 2, 4)
    deltas[1, 0] = to_left
    deltas[0, 1] = deltas[2, 0] = torch.tensor([9.0, -9, 3, 3])  # parts these instances lack: ignored
    deltas.requires_grad_()
    truth = torch.stack([torch.stack([left, far])] * 3)
    present = torch.tensor([[True, False], [True, False], [False, True]])
    losses = part_box_loss(deltas, instances, truth, present)
    # part 0, instance 0: the whole square for its left half: L1 0.25 + log 2, GIoU 1/2 (IoU 1/2, no gap);
    #         instance 1: exact, 0
    # part 1, instance 2: the square for a square 64 px to its right: L1 2 (dx), IoU 0 and an enclosing box
    #         96 px wide of which 64 are covered, GIoU -1/3, so 1 + 1/3
    assert losses.tolist() == pytest.approx([(0.25 + math.log(2) + 0.5 + 0) / 2, 2 + 1 + 1 / 3])
    losses.sum().backward()
    assert deltas.grad[2, 0].abs().sum() == 0 and deltas.grad[0, 1].abs().sum() == 0
    assert deltas.grad[1, 1].abs().sum() == 0 and deltas.grad[0, 0].abs().sum() > 0
    none = part_box_loss(deltas, instances, truth, torch.zeros(3, 2, dtype=torch.bool))
    assert none.tolist() == [0.0, 0.0] and none.requires_grad


def test_a_degenerate_true_part_box_gives_a_finite_loss():
    deltas = torch.zeros(1, 1, 4, requires_grad=True)
    loss = part_box_loss(
        deltas, torch.tensor([[0.0, 0, 32, 32]]), torch.tensor([[[5.0, 5, 5, 5]]]), torch.tensor([[True]])
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(deltas.grad).all()
    assert loss.item() > 2 * math.log(32)  # at least 1 px: log(32) for each of width and height


def test_part_boxes_of_the_ground_truth_are_zero_where_absent():
    masks = _instances()[0].gt_multimask  # ROI 0: left half of [0, 0, 32, 32]; ROI 1 has no secondary
    assert part_boxes_of(masks, ["secondary"]).tolist() == [[[0.0, 0, 16, 32]], [[0.0, 0, 0, 0]]]


def test_jitter_and_enlarge():
    boxes = torch.tensor([[10.0, 20, 30, 60]] * 500)
    moved = jitter_boxes(boxes, 0.1, torch.Generator().manual_seed(0))
    size = torch.tensor([20.0, 40])
    centre_shift = ((moved[:, :2] + moved[:, 2:]) / 2 - torch.tensor([20.0, 40])) / size
    scale = (moved[:, 2:] - moved[:, :2]) / size
    assert centre_shift.abs().max() <= 0.1 + 1e-6 and centre_shift.abs().max() > 0.05
    assert scale.min() >= math.exp(-0.1) - 1e-6 and scale.max() <= math.exp(0.1) + 1e-6
    assert torch.equal(jitter_boxes(boxes, 0.0), boxes)
    assert enlarge_boxes(torch.tensor([10.0, 20, 30, 60]), 1.5).tolist() == [5, 10, 35, 70]


def test_regressor_shapes_and_start_at_the_instance_box():
    reg = PartBoxRegressor(ShapeSpec(channels=8, height=14, width=14), num_parts=3, conv_dim=16)
    deltas = reg(torch.randn(5, 8, 14, 14))
    assert deltas.shape == (5, 3, 4)
    assert deltas.abs().max() < 0.05  # detectron2's box predictor init: small deltas, the ROI box itself


def test_crop_and_resize_takes_one_box_per_mask():
    masks = _instances()[0].gt_multimask
    per_instance = torch.tensor([[0.0, 0, 32, 32], [32, 32, 64, 64]])
    per_mask = torch.stack([per_instance, torch.tensor([[0.0, 0, 16, 32], [32, 32, 64, 64]])], dim=1)
    same = masks.crop_and_resize(per_instance, 8)
    assert torch.equal(masks.crop_and_resize(per_instance.unsqueeze(1).expand(2, 2, 4), 8), same)
    own = masks.crop_and_resize(per_mask, 8)
    assert torch.equal(own[:, 0], same[:, 0])
    assert own[0, 1].min() == 1  # the left half, cropped to its own box, fills it
    assert same[0, 1, :, :4].min() == 1 and same[0, 1, :, 4:].max() == 0
    secondary_only = masks.crop_and_resize(per_mask, 8, ["secondary"])  # a loss over some names rasterises those
    assert secondary_only[:, 0].max() == 0 and torch.equal(secondary_only[:, 1], own[:, 1])


def test_mask_loss_in_the_part_box_by_hand():
    # Logit +2 on the matched channel; the secondary's logits lie in its own box, the left half, so every
    # target pixel is foreground: -log(sigmoid(2)), where in the instance's box it was half and half.
    logits = torch.full((2, 2, 3, 8, 8), -50.0)
    logits[0, :, 0] = 2.0
    logits[1, :, 1] = 2.0
    boxes = torch.tensor([[0.0, 0, 32, 32], [32, 32, 64, 64]]).unsqueeze(1).repeat(1, 2, 1)
    boxes[0, 1] = torch.tensor([0.0, 0, 16, 32])
    with EventStorage():
        losses = multimask_rcnn_loss(logits, _instances(), ("primary", "secondary"), (1.0, 1.0), mask_boxes=boxes)
    assert losses["loss_mask_secondary"].item() == pytest.approx(-math.log(1 / (1 + math.exp(-2))), rel=1e-5)


def _fake_pool(features_per_box):
    """A pooler stand-in: every box gets `features_per_box` plus its own coordinates, so pooling is traceable."""
    calls = []

    def pool(box_lists):
        calls.append([b.tensor.clone() for b in box_lists])
        n = sum(len(b) for b in box_lists)
        return features_per_box.expand(n, -1, -1, -1).clone()

    return pool, calls


def _part_head(**extra):
    cfg = tiny_cfg(num_classes=3, **PART, **extra)
    return MultiMaskRCNNConvUpsampleHead(cfg, ShapeSpec(channels=64, height=14, width=14))


@pytest.mark.parametrize("source", ["regression", "coarse_mask"])
def test_training_pools_only_present_parts_and_absent_ones_add_nothing(source):
    head = _part_head(**{"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM": source}).train()
    x = torch.randn(2, 64, 14, 14)
    part_features = torch.randn(1, 64, 14, 14)
    pool, calls = _fake_pool(part_features)
    with EventStorage():
        torch.manual_seed(1)  # the same jitter in both calls
        losses = head(x, _instances(), pool=pool)
        other = x.clone()
        other[1] = torch.randn(64, 14, 14)  # ROI 1 has no secondary: its features must not count
        torch.manual_seed(1)
        again = head(other, _instances(), pool=pool)
    own = {"regression": "loss_part_box_secondary", "coarse_mask": "loss_mask_secondary_coarse"}[source]
    assert set(losses) == {"loss_mask_primary", "loss_mask_secondary", own}
    # one part box is pooled, near ROI 0's true part box [0, 0, 16, 32], enlarged
    (pooled,) = calls[0]
    assert pooled.shape == (1, 4)
    assert (pooled[0] - torch.tensor([-2.0, -4, 18, 36])).abs().max() < 0.25 * 32
    assert losses[own].item() == again[own].item() and losses[own].item() > 0
    assert losses["loss_mask_secondary"].item() == again["loss_mask_secondary"].item()
    assert losses["loss_mask_primary"].item() != again["loss_mask_primary"].item()  # ROI 1 has a primary


def test_sample_per_image_keeps_at_most_the_limit_per_image():
    flags = torch.tensor([[True, True], [True, False], [False, False], [True, True], [False, True]])
    image_of_row = torch.tensor([0, 0, 0, 1, 1])
    assert torch.equal(sample_per_image(flags, image_of_row, 0), flags)
    assert torch.equal(sample_per_image(flags, image_of_row, 3), flags)
    drawn = set()
    for seed in range(20):
        kept = sample_per_image(flags, image_of_row, 2, torch.Generator().manual_seed(seed))
        assert not (kept & ~flags).any()  # only what was there
        assert kept[:3].sum() == 2 and kept[3:].sum() == 2
        drawn.add(tuple(kept.flatten().tolist()))
    assert len(drawn) > 3  # drawn at random


@pytest.mark.parametrize("source", ["regression", "coarse_mask"])
def test_training_trains_the_parts_on_at_most_the_batch_size_per_image(source):
    """PART_BOX_BATCH_SIZE_PER_IMAGE 1: one part box per image is pooled, and the part's loss is the mean over
    those alone. Without jitter every ROI here gives the same part target (to the rasteriser's sub-pixel rounding)
    and features, so it equals the loss over all of them; ROIs left out would bring their instance-grid logits,
    and change it."""
    opts = {"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM": source, "MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_JITTER": 0.0}
    x = torch.randn(4, 64, 14, 14)
    part_features = torch.randn(1, 64, 14, 14)
    losses = {}
    for limit in (0, 1):
        torch.manual_seed(0)
        head = _part_head(**opts, **{"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_BATCH_SIZE_PER_IMAGE": limit}).train()
        pool, calls = _fake_pool(part_features)
        with EventStorage():
            losses[limit] = head(x, _instances(n_img=2, present=((True, True), (True, True))), pool=pool)
        assert [len(b) for b in calls[0]] == [limit or 2, limit or 2]
    assert losses[1]["loss_mask_secondary"].item() == pytest.approx(losses[0]["loss_mask_secondary"].item(), rel=1e-3)
    assert losses[1]["loss_mask_secondary"].item() > 0


@pytest.mark.parametrize("source", ["regression", "coarse_mask"])
def test_no_part_anywhere_gives_zero_part_losses_with_graph(source):
    head = _part_head(**{"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM": source}).train()
    x = torch.randn(2, 64, 14, 14, requires_grad=True)
    pool, calls = _fake_pool(torch.randn(1, 64, 14, 14))
    with EventStorage():
        losses = head(x, _instances(present=((True, False), (True, False))), pool=pool)
    part = [k for k in losses if k != "loss_mask_primary"]
    assert len(part) == 2 and all(losses[k].item() == 0 for k in part)
    sum(losses[k] for k in part).backward()
    assert not calls  # nothing to pool


def test_inference_predicts_each_part_in_its_regressed_box():
    head = _part_head(**REGRESSED).eval()
    with torch.no_grad():
        head.part_box_regressor.deltas.weight.zero_()
        head.part_box_regressor.deltas.bias.copy_(torch.tensor([-0.25, 0.0, math.log(0.5), 0.0]))
    a, b = Instances((64, 64)), Instances((64, 64))
    a.pred_boxes, b.pred_boxes = Boxes(torch.tensor([[0.0, 0, 32, 32]])), Boxes(torch.tensor([[32.0, 32, 64, 64]]))
    a.pred_classes, b.pred_classes = torch.tensor([0]), torch.tensor([2])
    pool, calls = _fake_pool(torch.randn(1, 64, 14, 14))
    with torch.no_grad():
        head(torch.randn(2, 64, 14, 14), [a, b], pool=pool)
    assert [len(c) for c in calls[0]] == [1, 1]  # one part box per image, grouped as the pooler needs
    assert a.pred_multimask.shape == (1, 2, 28, 28)
    # the left half of each box, enlarged by PART_BOX_CONTEXT 1.25 about its centre
    assert torch.allclose(a.pred_multimask_boxes[0], torch.tensor([[0.0, 0, 32, 32], [-2, -4, 18, 36]]))
    assert torch.allclose(b.pred_multimask_boxes[0], torch.tensor([[32.0, 32, 64, 64], [30, 28, 50, 68]]))
    with pytest.raises(ValueError, match="pool"):
        head(torch.randn(2, 64, 14, 14), [a, b])


def test_postprocess_pastes_each_mask_in_its_own_box():
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 32, 32]]))
    inst.scores, inst.pred_classes = torch.tensor([0.9]), torch.tensor([0])
    inst.pred_multimask = torch.ones(1, 2, 28, 28)
    inst.pred_multimask_boxes = torch.tensor([[[0.0, 0, 32, 32], [8.0, 4, 16, 12]]])
    out = multimask_postprocess(inst, 64, 64)  # output twice the size: boxes scale with it
    assert out.pred_multimask[0, 0].all()
    secondary = out.pred_multimask[0, 1].nonzero()
    assert secondary[:, 0].min() == 8 and secondary[:, 0].max() == 23  # rows 8..23: y 4..12 doubled
    assert secondary[:, 1].min() == 16 and secondary[:, 1].max() == 31
    assert not out.has("pred_multimask_boxes")


def test_model_with_regressed_part_boxes_trains_and_predicts_at_image_resolution():
    cfg = tiny_cfg(num_classes=2, **PART, **REGRESSED, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    model = build_model(cfg)
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "instances": _instances()[0]}]
    with EventStorage():
        losses = model(batch)
    assert losses["loss_part_box_secondary"].item() > 0
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.part_box_regressor.deltas.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = model.eval()(
            [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "height": 192, "width": 256}]
        )[0]["instances"]
    assert len(out) > 0 and out.pred_multimask.shape == (len(out), 2, 192, 256)
    assert torch.equal(out.pred_masks, out.pred_multimask[:, 0])


@pytest.mark.parametrize("shared", [True, False])
def test_standard_checkpoint_fills_every_mask_branch_and_leaves_the_part_box_fresh(tmp_path, shared):
    from multimask.engine import MultiMaskCheckpointer

    state = _standard_mask_rcnn_state(num_classes=3)
    torch.save({"model": state}, tmp_path / "standard.pth")
    model = build_model(
        tiny_cfg(num_classes=3, **PART, **REGRESSED, **{"MODEL.ROI_MULTI_MASK_HEAD.SHARED_TRUNK": shared})
    )
    head = model.roi_heads.mask_head
    fresh = {k: v.clone() for k, v in head.part_box_regressor.state_dict().items()}
    MultiMaskCheckpointer(model).load(str(tmp_path / "standard.pth"), checkpointables=[])
    for name in ("primary", "secondary"):
        trunk = head.trunk if shared else head.trunks[name]
        assert torch.equal(trunk.mask_fcn2.weight, state["roi_heads.mask_head.mask_fcn2.weight"])
        assert torch.equal(head.predictors[name].weight, state["roi_heads.mask_head.predictor.weight"])
    for k, v in head.part_box_regressor.state_dict().items():
        assert torch.equal(v, fresh[k]), k


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (
            ["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS", ["nucleus"]],
            r"PART_BOX_MASKS \['nucleus'\].*\['nucleus'\] are not",
        ),
        (["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS", ["secondary", "secondary"]], "distinct"),
        (["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_JITTER", 2.0], "PART_BOX_JITTER must be a number from 0 to 1"),
        (["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_CONTEXT", 0.5], "PART_BOX_CONTEXT must be a number from 1 to 4"),
        (["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_LOSS_WEIGHT", -1.0], "PART_BOX_LOSS_WEIGHT"),
        (["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM", "mask"], r"PART_BOX_FROM must be one of \['coarse_mask', 'reg"),
        (
            ["MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_BATCH_SIZE_PER_IMAGE", -1],
            "PART_BOX_BATCH_SIZE_PER_IMAGE must be a whole",
        ),
    ],
)
def test_part_box_settings_are_validated(opts, match):
    with pytest.raises(ValueError, match=match):
        get_multimask_cfg("tiny_cpu", ["MODEL.DEVICE", "cpu", *opts])


def test_a_run_folder_from_before_part_boxes_loads_and_predicts_as_before(tmp_path):
    """A config.yaml written before the PART_BOX_* keys existed, and its weights, give today's predictions."""
    import numpy as np

    from multimask.engine.predictor import MultiMaskPredictor

    cfg = get_multimask_cfg(
        "tiny_cpu", ["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    )
    old = "\n".join(line for line in cfg.dump().splitlines() if "PART_BOX" not in line)
    assert "PART_BOX" in cfg.dump() and "PART_BOX" not in old
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.yaml").write_text(old)
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(run)).save("model_final")
    image = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    out = MultiMaskPredictor.from_run(run)(image)["instances"]
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(run / "model_final.pth")
    ref = MultiMaskPredictor(cfg)(image)["instances"]  # today's full config, same weights
    assert len(out) > 0 and torch.equal(out.pred_multimask, ref.pred_multimask)
    assert not model.roi_heads.mask_head.part_box_masks


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["small-part", "large-part"])
def test_short_training_on_each_part_regime_lowers_the_part_losses(tmp_path, regime):
    """90 iterations with the part boxes: the part's losses, on its own grid and on its object's, fall (by a
    third in both regimes when written: 1.21 -> 0.85 and 1.61 -> 1.07 on small-part)."""
    import json

    from multimask.data import register_multimask_dataset
    from multimask.data.synth import generate_synthetic_dataset
    from multimask.engine import MultiMaskTrainer

    paths = generate_synthetic_dataset(tmp_path / "data", num_train=24, num_val=0, seed=0, regime=regime)
    register_multimask_dataset(f"part_box_{regime}", paths["train"])
    cfg = tiny_cfg(
        num_classes=3,
        **PART,
        **{
            "SOLVER.MAX_ITER": 90,
            "SOLVER.WARMUP_ITERS": 10,
            "SOLVER.CHECKPOINT_PERIOD": 1000,
            "SEED": 1,
            "OUTPUT_DIR": str(tmp_path / "run"),
            "DATASETS.TRAIN": (f"part_box_{regime}",),
            "DATASETS.TEST": (),
        },
    )
    trainer = MultiMaskTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    rows = [r for r in rows if "total_loss" in r]
    first, last = rows[0], rows[-1]  # medians over 20 iterations
    assert last["iteration"] == 89
    for key in ("loss_mask_secondary", "loss_mask_secondary_coarse"):
        assert last[key] < 0.9 * first[key], (key, first[key], last[key])


@pytest.mark.slow
def test_a_part_box_run_trains_resumes_evaluates_and_predicts_through_the_cli(tmp_path):
    import json

    import cv2

    from multimask.engine.predictor import MultiMaskPredictor
    from tests.test_cli import _cli

    _cli("synth", "--out", tmp_path / "data", "--num-train", 6, "--num-val", 3, "--seed", 5, "--regime", "small-part")
    train = [
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        tmp_path / "data/train.json",
        "--val-json",
        tmp_path / "data/val.json",
        "--output-dir",
        tmp_path / "run",
    ]
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.0,
        "MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_MASKS",
        "['secondary']",
    ]
    _cli(*train, *opts, "SOLVER.MAX_ITER", 4)
    proc = _cli(*train, "--resume", *opts, "SOLVER.MAX_ITER", 6)
    assert "Resuming at iteration 4" in proc.stdout + proc.stderr
    metrics = (tmp_path / "run/metrics.json").read_text()
    assert "loss_mask_secondary_coarse" in metrics and "loss_part_box" not in metrics
    proc = _cli("evaluate", "--run", tmp_path / "run", "--json", tmp_path / "data/val.json", "--device", "cpu")
    assert "segm/secondary" in proc.stdout
    _cli(
        "predict",
        "--run",
        tmp_path / "run",
        tmp_path / "data/images",
        "--output",
        tmp_path / "out",
        "--score-threshold",
        0.0,
        "--device",
        "cpu",
    )
    data = json.loads((tmp_path / "out/predictions.json").read_text())
    assert data["mask_names"] == ["primary", "secondary"] and data["images"][0]["instances"]
    predictor = MultiMaskPredictor.from_run(tmp_path / "run", score_threshold=0.0, device="cpu")
    assert predictor.model.roi_heads.mask_head.part_box_masks == ("secondary",)
    image = cv2.imread(str(next((tmp_path / "data/images").glob("val_*.png"))))
    out = predictor(image)["instances"]
    assert out.pred_multimask.shape == (len(out), 2, *image.shape[:2])


def test_boxes_of_coarse_masks_by_hand():
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, 1:3, 0] = True  # rows 1-2 of column 0
    instances = torch.tensor([[0.0, 0, 40, 80], [10.0, 10, 20, 20]])
    boxes = boxes_of_masks(masks, instances)
    # cells are 10 x 20 px in the first box: column 0, rows 1-2; the second mask is empty: its instance's box
    assert boxes.tolist() == [[[0.0, 20, 10, 60]], [[10.0, 10, 20, 20]]]


def test_coarse_mask_source_predicts_the_part_in_the_box_of_its_coarse_prediction():
    head = _part_head(**{"MODEL.ROI_MULTI_MASK_HEAD.PART_BOX_FROM": "coarse_mask"}).eval()
    assert not hasattr(head, "part_box_regressor")
    with torch.no_grad():  # the coarse secondary: the left half of the grid, for every class
        head.predictors["secondary"].weight.zero_()
        head.predictors["secondary"].bias.fill_(-10.0)
    inst = Instances((64, 64))
    inst.pred_boxes, inst.pred_classes = Boxes(torch.tensor([[0.0, 0, 32, 32]])), torch.tensor([1])
    pool, calls = _fake_pool(torch.randn(1, 64, 14, 14))
    with torch.no_grad():
        head(torch.randn(1, 64, 14, 14), [inst], pool=pool)
    # nothing predicted coarsely: the part is looked for in the instance's box, enlarged
    assert torch.allclose(calls[0][0], torch.tensor([[-4.0, -4, 36, 36]]))
    assert torch.allclose(inst.pred_multimask_boxes[0, 1], torch.tensor([-4.0, -4, 36, 36]))


def test_mask_loss_over_some_of_the_names_matches_the_full_one():
    logits = torch.randn(2, 2, 3, 8, 8)
    names = ("primary", "secondary")
    with EventStorage():
        full = multimask_rcnn_loss(logits, _instances(), names, (1.0, 0.5), dice_weight=1.0)
        part = multimask_rcnn_loss(logits[:, 1:], _instances(), ("secondary",), (0.5,), dice_weight=1.0)
    assert set(part) == {"loss_mask_secondary"}
    assert part["loss_mask_secondary"].item() == pytest.approx(full["loss_mask_secondary"].item())
