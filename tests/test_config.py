import pytest

from multimask.config import (
    add_multimask_config,
    best_metric,
    get_multimask_cfg,
    list_presets,
    validate_multimask_config,
)
from tests.conftest import tiny_cfg


def test_defaults_match_the_design():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_multimask_config(cfg)
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    assert head.NAME == "MultiMaskRCNNConvUpsampleHead"
    assert (head.NUM_MASK, head.MASK_NAMES, head.NUM_CONV, head.POOLER_RESOLUTION) == (
        2,
        ["primary", "secondary"],
        4,
        14,
    )
    assert head.LOSS_WEIGHTS == [1.0, 1.0] and head.SHARED_TRUNK is True
    assert head.DICE_WEIGHT == 0.0  # Mask R-CNN's own loss; the presets add Dice
    assert cfg.MODEL.DEVICE in ("cpu", "cuda")
    mm = cfg.MULTIMASK
    assert (mm.BEST_METRIC, mm.BEST_MODE, mm.EARLY_STOP_PATIENCE, mm.WRITE_PERIOD) == ("", "max", 0, 20)
    assert best_metric(cfg) == "segm/primary/AP"
    validate_multimask_config(cfg)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK", 3], "MASK_NAMES has 2 names"),
        (["MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS", [1.0]], "LOSS_WEIGHTS has 1 weights"),
        (["MODEL.ROI_MULTI_MASK_HEAD.DICE_WEIGHT", -0.5], r"DICE_WEIGHT must be a number >= 0 \(0: off\), got -0.5"),
        (["MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK", 0, "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES", []], "NUM_MASK must be"),
        (["MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES", ["a", "a"]], "duplicate mask names"),
        (["MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES", ["ok", "not ok"]], "are not valid mask names"),
        (["MODEL.MASK_ON", False], "MASK_ON"),
        (["MULTIMASK.BEST_METRIC", "segm/tertiary/AP"], r"BEST_METRIC 'segm/tertiary/AP' is not an evaluation result"),
        (["MULTIMASK.BEST_METRIC", "bbox/ap"], "TASK one of bbox, segm/primary, segm/secondary and METRIC one of AP,"),
        (["MULTIMASK.BEST_METRIC", "AP"], "is not an evaluation result"),
        (["MULTIMASK.BEST_METRIC", "segm/primary/AP-"], "is not an evaluation result"),
        (["MULTIMASK.BEST_MODE", "up"], "BEST_MODE must be 'max' or 'min'"),
        (["MULTIMASK.EARLY_STOP_PATIENCE", -1], "EARLY_STOP_PATIENCE must be an integer >= 0"),
        (["MULTIMASK.WRITE_PERIOD", 0], "WRITE_PERIOD must be an integer >= 1"),
        (
            ["SOLVER.AMP.ENABLED", True, "MODEL.DEVICE", "cpu"],
            r"mixed precision \(SOLVER.AMP.ENABLED\) needs a CUDA GPU; turn it off to train on the CPU",
        ),
    ],
)
def test_inconsistent_settings_raise_a_clear_error(opts, message):
    with pytest.raises(ValueError, match=message):
        get_multimask_cfg("tiny_cpu", opts)


@pytest.mark.parametrize("metric", ["bbox/AP", "segm/secondary/AP50", "bbox/APl", "segm/primary/AP-disc"])
def test_best_metric_accepts_flattened_evaluation_keys(metric):
    cfg = get_multimask_cfg(
        "tiny_cpu", ["MULTIMASK.BEST_METRIC", metric, "MULTIMASK.BEST_MODE", "min", "MULTIMASK.EARLY_STOP_PATIENCE", 3]
    )
    assert best_metric(cfg) == metric


def test_amp_is_accepted_on_a_gpu_device():
    cfg = get_multimask_cfg("tiny_cpu", ["MODEL.DEVICE", "cuda:0", "SOLVER.AMP.ENABLED", True])
    assert cfg.SOLVER.AMP.ENABLED


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny_cpu"):
        get_multimask_cfg("no_such_preset")
    assert {"tiny_cpu", "scratch_mask_rcnn_R_50_FPN_gn", "mask_rcnn_R_50_FPN_3x"} <= set(list_presets())


def test_a_config_file_is_read_as_plain_yaml_and_never_runs_code(tmp_path):
    """A run folder shared by someone else is listed and used by the app: its config.yaml must not run code."""
    marker = tmp_path / "ran"
    evil = tmp_path / "config.yaml"
    evil.write_text(f'MODEL:\n  DEVICE: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ValueError, match=r"config.yaml: not a config file this tool reads \(plain YAML only\)"):
        get_multimask_cfg(evil)
    assert not marker.exists()
    plain = tmp_path / "plain.yaml"
    plain.write_text("MODEL:\n  DEVICE: cpu\nSOLVER:\n  BASE_LR: 0.5\n")
    assert get_multimask_cfg(plain).SOLVER.BASE_LR == 0.5


def test_every_preset_builds_a_model():
    from detectron2.modeling import build_model

    for name in list_presets():
        cfg = get_multimask_cfg(name, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
        model = build_model(cfg)
        assert type(model).__name__ == "MultiMaskRCNN"
        assert type(model.roi_heads).__name__ == "MultiMaskROIHeads"
        assert model.roi_heads.mask_head.dice_weight == 1.0, name


def test_validation_runs_when_a_model_is_built_from_an_edited_config():
    from detectron2.modeling import build_model

    cfg = tiny_cfg()
    cfg.defrost()
    cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES = ["primary"]
    with pytest.raises(ValueError, match="NUM_MASK is 2"):
        build_model(cfg)
