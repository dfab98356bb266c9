"""The dataset decides the heads (mask names, NUM_MASK, LOSS_WEIGHTS), and missing images fail early and clearly."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from multimask.cli import main
from multimask.config import get_multimask_cfg, list_presets
from multimask.data.synth import generate_synthetic_dataset
from multimask.engine import MultiMaskPredictor

THREE = ("cell", "nucleus", "membrane")
SMALL = [
    "MODEL.DEVICE",
    "cpu",
    "SOLVER.MAX_ITER",
    2,
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    128,
    "INPUT.MIN_SIZE_TEST",
    96,
    "INPUT.MAX_SIZE_TEST",
    128,
]  # a few iterations on small images, no head option


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "multimask", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def _main(capsys, *args) -> str:
    """Run the CLI in this process where it must fail with exit status 2; return its one-line error."""
    with pytest.raises(SystemExit) as e:
        main([*map(str, args)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A one-mask and a three-mask synthetic dataset: {names: {"train", "val", "images"}}."""
    root = tmp_path_factory.mktemp("heads")
    return {
        names: generate_synthetic_dataset(
            root / str(len(names)), num_train=4, num_val=2, seed=1, height=96, width=128, mask_names=names
        )
        for names in (("primary",), THREE)
    }


@pytest.mark.slow
@pytest.mark.parametrize("names", [("primary",), THREE], ids=["one-mask", "three-mask"])
def test_a_preset_trains_the_dataset_s_masks_without_options(data, names, tmp_path):
    paths = data[names]
    run = tmp_path / "run"
    proc = _cli(
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        paths["train"],
        "--val-json",
        paths["val"],
        "--output-dir",
        run,
        *SMALL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = yaml.safe_load((run / "config.yaml").read_text())["MODEL"]["ROI_MULTI_MASK_HEAD"]
    assert (head["MASK_NAMES"], head["NUM_MASK"], head["LOSS_WEIGHTS"]) == (list(names), len(names), [1.0] * len(names))
    losses = [r for r in map(json.loads, (run / "metrics.json").read_text().splitlines()) if "total_loss" in r][-1]
    assert {k for k in losses if k.startswith("loss_mask_")} == {f"loss_mask_{n}" for n in names}
    assert set(json.loads((run / "eval_results.json").read_text())) == {"bbox", *(f"segm/{n}" for n in names)}
    assert MultiMaskPredictor.from_run(run, device="cpu").mask_names == list(names)  # predict follows the run


@pytest.mark.slow
def test_a_resumed_run_keeps_its_heads_and_evaluate_refuses_other_masks(data, tmp_path, capsys):
    paths, run = data[THREE], tmp_path / "run"
    args = ["train", "--config-file", "tiny_cpu", "--train-json", paths["train"], "--output-dir", run]
    assert _cli(*args, *SMALL).returncode == 0
    proc = _cli(*args, "--resume", *SMALL[:2], "SOLVER.MAX_ITER", 3, *SMALL[4:])
    assert proc.returncode == 0 and "Resuming at iteration 2" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["MODEL"]["ROI_MULTI_MASK_HEAD"]["MASK_NAMES"] == list(
        THREE
    )
    other = data[("primary",)]["val"]
    err = _main(capsys, "evaluate", "--run", run, "--json", other, "--device", "cpu")
    assert err == (
        f"error: {other}: has masks ['primary'] but the run {run} predicts {list(THREE)}; evaluate it "
        "on a dataset with those masks, or train a run on this dataset"
    )


def test_explicit_mask_names_the_dataset_lacks_say_which_side_to_change(data, tmp_path, capsys):
    train = data[("primary",)]["train"]
    err = _main(
        capsys,
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        train,
        "--output-dir",
        tmp_path / "r",
        "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES",
        "['primary', 'secondary']",
        *SMALL,
    )
    assert err == (
        f"error: {train}: has masks ['primary'], not ['secondary'] of MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES "
        "['primary', 'secondary'] set in the KEY VALUE options; remove that setting to train the "
        "dataset's masks, or use a dataset that has those masks"
    )
    val = data[("primary",)]["val"]
    err = _main(
        capsys,
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        data[THREE]["train"],
        "--val-json",
        val,
        "--output-dir",
        tmp_path / "r",
        *SMALL,
    )
    assert err.startswith(f"error: {val}: has masks ['primary'] but the model trains {list(THREE)}")
    assert not (tmp_path / "r").exists(), "nothing written before the checks"


def _heads(cfg) -> list:
    head = cfg.MODEL.ROI_MULTI_MASK_HEAD
    return [head.MASK_NAMES, head.NUM_MASK, head.LOSS_WEIGHTS]


def test_several_gpus_check_the_data_and_its_heads_before_the_processes_start(data, tmp_path, capsys):
    train = data[THREE]["train"]
    err = _main(
        capsys,
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        train,
        "--output-dir",
        tmp_path / "r",
        "--num-gpus",
        2,
        "MULTIMASK.BEST_METRIC",
        "segm/membrane/AP",
        *SMALL,
    )
    assert err.startswith("error: --num-gpus 2 needs 2 CUDA GPUs and MODEL.DEVICE cuda")  # the config was valid
    missing, _ = _without_images(data[THREE], tmp_path, keep=0)
    err = _main(
        capsys,
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        missing,
        "--output-dir",
        tmp_path / "r",
        "--num-gpus",
        2,
        *SMALL,
    )
    assert err.startswith(f"error: {missing}: none of its 4 image files")


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_follows_a_dataset_unless_the_config_sets_the_masks(preset):
    cfg = get_multimask_cfg(preset, ["MULTIMASK.BEST_METRIC", "segm/membrane/AP"], dataset_mask_names=THREE)
    heads = _heads(cfg)
    assert heads == [list(THREE), 3, [1.0] * 3]
    cfg = get_multimask_cfg(preset, ["MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES", ["nucleus"]], dataset_mask_names=THREE)
    heads = _heads(cfg)
    assert heads == [["nucleus"], 1, [1.0]]  # some of the dataset's masks


def test_a_run_s_config_yaml_keeps_its_own_masks(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(get_multimask_cfg("tiny_cpu", dataset_mask_names=THREE).dump())
    heads = _heads(get_multimask_cfg(config, dataset_mask_names=[*THREE, "wall"]))
    assert heads == [list(THREE), 3, [1.0] * 3]
    with pytest.raises(
        ValueError,
        match=r"has masks \['primary'\], not \['cell', 'nucleus', 'membrane'\] .* set in "
        rf"{re.escape(str(config))}; remove that setting",
    ):
        get_multimask_cfg(config, dataset_mask_names=["primary"])


def _without_images(paths, tmp_path, keep: int):
    """A copy of a dataset JSON next to its images whose images are all gone but the first `keep`."""
    folder = tmp_path / "copy"
    (folder / "images").mkdir(parents=True)
    data = json.loads(paths["train"].read_text())
    for img in data["images"][:keep]:
        (folder / img["file_name"]).write_bytes((paths["train"].parent / img["file_name"]).read_bytes())
    (folder / "train.json").write_text(json.dumps(data))
    return folder / "train.json", [img["file_name"] for img in data["images"][keep:]]


def test_all_images_missing_is_one_line_naming_the_user_s_file(data, tmp_path, capsys):
    train, missing = _without_images(data[THREE], tmp_path, keep=0)
    err = _main(
        capsys, "train", "--config-file", "tiny_cpu", "--train-json", train, "--output-dir", tmp_path / "r", *SMALL
    )
    assert err.startswith(f"error: {train}: none of its 4 image files is under {train.parent} ({missing[0]}, ")
    assert "--image-root" in err and not (tmp_path / "r").exists()
    err = _main(
        capsys,
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        data[THREE]["train"],
        "--val-json",
        train,
        "--output-dir",
        tmp_path / "r",
        *SMALL,
    )
    assert err.startswith(f"error: {train}: none of its 4 image files")
    err = _main(capsys, "evaluate", "--run", tmp_path, "--json", train)
    assert err.startswith(f"error: {train}: none of its 4 image files")


@pytest.mark.slow
def test_some_images_missing_warn_naming_the_user_s_file_and_train(data, tmp_path):
    train, missing = _without_images(data[("primary",)], tmp_path, keep=2)
    proc = _cli("train", "--config-file", "tiny_cpu", "--train-json", train, "--output-dir", tmp_path / "r", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"{train}: 2 of 4 image files not found under {train.parent}, their images are skipped: "
        f"{missing[0]}, {missing[1]}"
    ) in proc.stderr
    assert str(tmp_path / "r/data/train.json") not in proc.stdout + proc.stderr, "the loader names the user's file too"
    assert (tmp_path / "r/model_final.pth").is_file()
