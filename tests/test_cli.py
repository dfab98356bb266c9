"""The command line end to end: synth, train, evaluate, predict, import/export; and its bad-input errors."""

import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from multimask.engine import MultiMaskPredictor
from multimask.visualizer import MultiMaskVisualizer


def _cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "multimask", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Synthesise a dataset and train a few iterations through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    _cli("synth", "--out", root / "data", "--num-train", 8, "--num-val", 4, "--seed", 3)
    _cli(
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        root / "data/train.json",
        "--val-json",
        root / "data/val.json",
        "--output-dir",
        root / "run",
        "SOLVER.MAX_ITER",
        6,
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.0,
    )
    return root


@pytest.mark.slow
def test_train_writes_a_self_contained_run(run_dir):
    run = run_dir / "run"
    for name in ("config.yaml", "model_final.pth", "metrics.json", "log.txt", "eval_results.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "eval_results.json").read_text())
    assert set(results) == {"bbox", "segm/primary", "segm/secondary"}
    assert "multimask_predictions.json" in [p.name for p in (run / "inference").rglob("*.json")]
    pred = MultiMaskPredictor.from_run(run, device="cpu")
    assert pred.metadata.thing_classes == ["disc", "box", "triangle"]
    assert pred.mask_names == ["primary", "secondary"]
    assert json.loads((run / "summary.json").read_text()) == {
        "iterations": 6,
        "max_iter": 6,
        "early_stopped": False,
        "best": None,
    }  # TEST.EVAL_PERIOD 0: no best


def test_train_records_the_run(run_dir):
    run = run_dir / "run"
    info = json.loads((run / "run_info.json").read_text())
    seed = yaml.safe_load((run / "config.yaml").read_text())["SEED"]
    # SEED -1 became a concrete seed, recorded in config.yaml and for each start (a resume picks its own)
    assert seed >= 0 and info["starts"][-1]["seed"] == seed and info["seed"] == info["starts"][0]["seed"]
    assert info["argv"][1:3] == ["train", "--config-file"]
    for kind in ("train", "val"):
        original = run_dir / "data" / f"{kind}.json"
        assert info["data"][kind]["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
        # the run trained on this copy; its images were found relative to the original's folder
        assert (run / info["data"][kind]["copy"]).read_bytes() == original.read_bytes()
    assert info["starts"][0]["resume"] is False


def test_predictor_returns_every_mask_at_image_resolution(run_dir):
    pred = MultiMaskPredictor.from_run(run_dir / "run", score_threshold=0.0, device="cpu")
    img = cv2.imread(str(next((run_dir / "data/images").glob("val_*.png"))))
    inst = pred(img)["instances"]
    assert len(inst) > 0
    assert inst.pred_multimask.shape == (len(inst), 2, *img.shape[:2])
    with pytest.raises(ValueError, match="BGR"):
        pred(img[:, :, 0])


def test_visualizer_styles_each_mask_and_draws_a_legend(run_dir):
    img = np.full((120, 160, 3), 200, np.uint8)
    masks = np.zeros((2, 2, 120, 160), bool)
    masks[0, 0, 10:60, 10:60] = True
    masks[0, 1, 20:40, 20:40] = True
    masks[1, 0, 70:110, 90:150] = True
    vis = MultiMaskVisualizer(img)
    out = vis.draw_multimask(
        masks,
        ["primary", "secondary"],
        boxes=np.array([[10, 10, 60, 60], [90, 70, 150, 110]]),
        labels=["a 90%", "b 80%"],
    ).get_image()
    assert out.shape == img.shape
    assert (out[30, 50] != img[30, 50]).any()  # filled primary tints the pixels
    assert vis.output.ax.get_legend() is not None
    assert [t.get_text() for t in vis.output.ax.get_legend().get_texts()] == ["primary", "secondary"]
    only_secondary = (
        MultiMaskVisualizer(img).draw_multimask(masks, ["primary", "secondary"], visible=["secondary"]).get_image()
    )
    assert (only_secondary[50, 50] == img[50, 50]).all()  # primary hidden: untouched pixel inside it


@pytest.mark.slow
def test_predict_cli_writes_overlays_and_json(run_dir, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    first, second = sorted((run_dir / "data/images").glob("val_*.png"))[:2]
    (images / "a.png").write_bytes(first.read_bytes())
    cv2.imwrite(str(images / "a.jpg"), cv2.imread(str(second)))  # same stem: the overlays must not collide
    (images / "broken.png").write_bytes(b"not an image")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    proc = _cli("predict", "--run", run_dir / "run", images, "--output", images, check=False)
    assert proc.returncode == 2 and "write the overlays to another folder than the images' own" in proc.stderr
    proc = _cli(
        "predict",
        "--run",
        run_dir / "run",
        images,
        "--output",
        tmp_path / "out",
        "--score-threshold",
        0.0,
        "--device",
        "cpu",
    )
    assert "broken.png: not a readable image" in proc.stderr
    data = json.loads((tmp_path / "out/predictions.json").read_text())
    assert data["mask_names"] == ["primary", "secondary"] and len(data["images"]) == 2
    assert data["skipped"] == [f"{images / 'broken.png'}: not a readable image"]
    inst = data["images"][0]["instances"][0]
    assert set(inst["multimask"]) == {"primary", "secondary"} and inst["class_name"] in data["classes"]
    assert sorted(i["overlay"] for i in data["images"]) == ["a_jpg.png", "a_png.png"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a_jpg.png", "a_png.png"]
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before, "the inputs are untouched"


@pytest.mark.slow
def test_evaluate_cli_prints_ap_per_mask(run_dir, tmp_path):
    proc = _cli(
        "evaluate",
        "--run",
        run_dir / "run",
        "--json",
        run_dir / "data/val.json",
        "--output",
        tmp_path / "res.json",
        "--device",
        "cpu",
    )
    assert "segm/secondary" in proc.stdout
    assert set(json.loads((tmp_path / "res.json").read_text())) == {"bbox", "segm/primary", "segm/secondary"}
    assert (tmp_path / "inference/multimask_val/multimask_predictions.json").is_file()


@pytest.mark.slow
def test_evaluate_leaves_the_run_s_own_results_alone_and_checks_the_classes(run_dir, tmp_path):
    own = (run_dir / "run/eval_results.json").read_bytes()
    _cli("evaluate", "--run", run_dir / "run", "--json", run_dir / "data/val.json", "--device", "cpu")
    assert (run_dir / "run/eval_results.json").read_bytes() == own
    assert set(json.loads((run_dir / "run/evaluations/val/eval_results.json").read_text())) == {
        "bbox",
        "segm/primary",
        "segm/secondary",
    }
    data = json.loads((run_dir / "data/val.json").read_text())
    names = [c["name"] for c in data["categories"]]
    for c, name in zip(data["categories"], names[::-1]):
        c["name"] = name  # the same names for other ids: the model's classes would be misread
    (tmp_path / "images").symlink_to(run_dir / "data/images")
    (tmp_path / "swapped.json").write_text(json.dumps(data))
    proc = _cli(
        "evaluate", "--run", run_dir / "run", "--json", tmp_path / "swapped.json", "--device", "cpu", check=False
    )
    assert proc.returncode == 2 and "swapped.json: classes" in proc.stderr and "differ from the run's" in proc.stderr


@pytest.mark.slow
def test_a_new_training_does_not_overwrite_an_earlier_run(run_dir):
    before = sorted(p.name for p in (run_dir / "run").iterdir())
    proc = _cli(
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        run_dir / "data/train.json",
        "--output-dir",
        run_dir / "run",
        "SOLVER.MAX_ITER",
        2,
        "MODEL.DEVICE",
        "cpu",
        check=False,
    )
    assert proc.returncode == 2 and "holds an earlier run's checkpoints" in proc.stderr and "--resume" in proc.stderr
    assert sorted(p.name for p in (run_dir / "run").iterdir()) == before


@pytest.mark.slow
def test_resume_through_the_cli(run_dir):
    proc = _cli(
        "train",
        "--config-file",
        "tiny_cpu",
        "--train-json",
        run_dir / "data/train.json",
        "--output-dir",
        run_dir / "run",
        "--resume",
        "SOLVER.MAX_ITER",
        8,
        "MODEL.DEVICE",
        "cpu",
    )
    assert "Resuming at iteration 6" in proc.stdout + proc.stderr
    state = torch.load(run_dir / "run/model_final.pth", weights_only=True)
    assert state["iteration"] == 7
    starts = json.loads((run_dir / "run/run_info.json").read_text())["starts"]
    assert [s["resume"] for s in starts] == [False, True]


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    proc = _cli("train", "--config-file", "tiny_cpu", "--train-json", bad, "--output-dir", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "bad.json: not valid JSON" in proc.stderr
    proc = _cli("predict", "--run", tmp_path, tmp_path, "--output", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "no config.yaml; is it a multimask training run?" in proc.stderr
    proc = _cli("train", "--config-file", "nope", "--train-json", bad, check=False)
    assert proc.returncode == 2 and "unknown preset 'nope'" in proc.stderr
    proc = _cli("import", "coco-fields", bad, tmp_path / "o.json", "--field", "segmentation", check=False)
    assert proc.returncode != 0 and "KEY=VALUE" in proc.stderr
    proc = _cli(
        "train", "--config-file", "tiny_cpu", "--train-json", bad, "--num-gpus", 2, "MODEL.DEVICE", "cpu", check=False
    )  # the files are checked before the processes start
    assert proc.returncode == 2 and "bad.json: not valid JSON" in proc.stderr


@pytest.mark.slow
def test_import_and_export_round_trip_through_the_cli(run_dir, tmp_path):
    _cli("export", run_dir / "data/val.json", tmp_path / "labelme")
    assert len(list((tmp_path / "labelme").glob("*.json"))) == 4
    proc = _cli("import", "labelme", tmp_path / "labelme", tmp_path / "back.json")
    assert "wrote" in proc.stdout
    back = json.loads((tmp_path / "back.json").read_text())
    orig = json.loads((run_dir / "data/val.json").read_text())
    assert back["mask_names"] == ["primary", "secondary"]
    assert len(back["annotations"]) == len(orig["annotations"])
