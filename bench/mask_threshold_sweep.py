"""Mask AP of a trained model when its mask probabilities are cut at other thresholds than 0.5.

A mask name whose AP rises as the threshold drops is predicted too small (under-confident at its edges), which
is what cross-entropy alone does to a small part inside its object's box (see bench/README.md).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_json  # noqa: E402


def sweep(predictor, json_file: str, thresholds: list[float]) -> dict:
    """{threshold: evaluate_records results} for a MultiMaskPredictor's model on the dataset `json_file`."""
    from multimask.data import load_multimask_json
    from multimask.data.images import read_image_bgr
    from multimask.evaluation import evaluate_records, instances_to_records
    from multimask.modeling.meta_arch import multimask_postprocess

    names = predictor.mask_names
    dicts, meta = load_multimask_json(json_file, mask_names=names)
    known = list(predictor.cfg.MULTIMASK.CLASS_NAMES)  # a run's; a bare config only has a class count
    classes = meta["thing_classes"]
    if (known and known != classes) or len(predictor.metadata.thing_classes) != len(classes):
        raise SystemExit(f"{json_file}: classes {classes} differ from the model's {predictor.metadata.thing_classes}")
    raw = []  # per image: detections before pasting (probabilities on the head's grid), image size
    for d in dicts:
        img = read_image_bgr(d["file_name"], max_pixels=None)
        if predictor.input_format == "RGB":
            img = img[:, :, ::-1]
        h, w = img.shape[:2]
        x = predictor.aug.get_transform(img).apply_image(img)
        inputs = {"image": torch.as_tensor(x.astype("float32").transpose(2, 0, 1)), "height": h, "width": w}
        with torch.no_grad():
            raw.append((predictor.model.inference([inputs], do_postprocess=False)[0].to("cpu"), h, w))
    out = {}
    for t in thresholds:
        records = []
        for d, (inst, h, w) in zip(dicts, raw):
            # detector_postprocess scales the boxes in place: each threshold gets its own copy
            pasted = multimask_postprocess(copy.deepcopy(inst), h, w, mask_threshold=t)
            records += instances_to_records(pasted, d["image_id"], names)
        out[t] = evaluate_records(dicts, records, names, classes)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("json_file", help="a multimask dataset JSON (e.g. a validation split)")
    p.add_argument("--run", help="a run folder (config.yaml and its weights)")
    p.add_argument("--config-file", help="or a preset / config file, with --weights")
    p.add_argument("--weights")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2])
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config options, e.g. the settings a bench script trained with",
    )
    p.add_argument("--json")
    args = p.parse_args()

    from multimask.config import get_multimask_cfg
    from multimask.engine import MultiMaskPredictor

    if args.run:
        if args.opts:
            p.error("--opts goes with --config-file; a run folder brings its own config")
        predictor = MultiMaskPredictor.from_run(args.run, device="cpu")
    elif args.config_file and args.weights:
        predictor = MultiMaskPredictor(
            get_multimask_cfg(args.config_file, ["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", "cpu", *args.opts])
        )
    else:
        p.error("give --run, or --config-file and --weights")
    res = sweep(predictor, args.json_file, args.thresholds)
    tasks = [t for t in next(iter(res.values())) if t.startswith("segm/")]
    print("| threshold | " + " | ".join(f"{t} AP / AP50 / AP75" for t in tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for t, r in res.items():
        print(
            f"| {t} | "
            + " | ".join(f"{r[k]['AP']:.1f} / {r[k]['AP50']:.1f} / {r[k]['AP75']:.1f}" for k in tasks)
            + " |"
        )
    write_json(args.json, {"json_file": args.json_file, "results": {str(t): r for t, r in res.items()}})


if __name__ == "__main__":
    main()
