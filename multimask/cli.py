"""Command line: `python -m multimask {synth,import,export,train,evaluate,predict,split,stats}`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .data.images import IMAGE_SUFFIXES, read_image_bgr

TRAIN_NAME, VAL_NAME = "multimask_train", "multimask_val"


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synth import generate_synthetic_dataset

    paths = generate_synthetic_dataset(
        args.out,
        args.num_train,
        args.num_val,
        seed=args.seed,
        height=args.height,
        width=args.width,
        mask_names=args.mask_names,
        regime=args.regime,
        progress=True,
    )
    print(f"wrote {paths['train']} and {paths['val']}")


def cmd_import(args: argparse.Namespace) -> None:
    from .data import convert
    from .io import DatasetError

    if args.format == "labelme":
        if args.field or args.drop_class or args.mask_name or args.image_root:
            raise ValueError(
                "labelme takes --map, --class and --mask-names (not --field, --drop-class, --mask-name, "
                "--image-root: images are found from each file's imagePath)"
            )
        report = convert.import_labelme(
            args.src, args.out, args.map, default_class=args.cls, mask_names=args.mask_names
        )
    else:
        if args.map or args.cls or args.mask_names or (args.field if args.format == "coco" else args.mask_name):
            raise ValueError(
                f"{args.format}: the class is the COCO category; --map, --class and --mask-names are "
                "for labelme, --mask-name for coco and --field for coco-fields"
            )
        kwargs = {"image_root": args.image_root, "drop_classes": args.drop_class or ()}
        if args.format == "coco":
            report = convert.import_coco(args.src, args.out, args.mask_name or "primary", **kwargs)
        elif not args.field:
            raise ValueError(
                "coco-fields needs at least one --field FIELD=MASK_NAME (e.g. --field "
                "segmentation=primary --field visible_mask=secondary; FIELD_A+FIELD_B=NAME unites two)"
            )
        else:
            report = convert.import_coco_fields(args.src, args.out, args.field, **kwargs)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.report.json')}\n\n{report.table()}")
    if report:
        print(f"\n{report.summary(max_messages=50)}")
    if report.all_images_missing():
        raise DatasetError(
            f"{args.src}: none of the {report.images_read} images was found (first: "
            f"{report.images_missing[0]}); pass --image-root or fix the paths"
        )


def cmd_export(args: argparse.Namespace) -> None:
    from .data import convert

    report = convert.export_labelme(args.src, args.out, image_root=args.image_root)
    print(f"wrote labelme files to {args.out}\n{report.summary(max_messages=50)}")


def training_config(args: argparse.Namespace):
    """Register the datasets named on the command line and build the frozen training config.

    A training start (not --eval-only) picks a concrete seed when SEED < 0, writes OUTPUT_DIR/run_info.json and
    trains on frozen copies of the dataset JSONs (see `run_folder`).
    """
    from detectron2.utils import comm

    from . import run_folder
    from .engine.launch import random_seed

    cfg = _checked_config(args)
    cfg.OUTPUT_DIR = str(args.output_dir)
    names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    classes = _register_datasets(args, names)  # the given files first: their errors name them
    if not args.eval_only:
        if cfg.SEED < 0:
            cfg.SEED = random_seed()  # config.yaml (written by default_setup) records it
        if comm.is_main_process():
            run_folder.record_start(
                cfg.OUTPUT_DIR,
                {"train": args.train_json, "val": args.val_json},
                seed=cfg.SEED,
                resume=args.resume,
                argv=sys.argv,
            )
        comm.synchronize()
        _register_datasets(args, names, cfg.OUTPUT_DIR)
    cfg.DATASETS.TRAIN = (TRAIN_NAME,)
    cfg.DATASETS.TEST = (VAL_NAME,) if args.val_json else ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(classes)
    cfg.MULTIMASK.CLASS_NAMES = list(classes)
    cfg.freeze()
    return cfg


def _checked_config(args: argparse.Namespace):
    """The config from --config-file and the options, after checking the given dataset files (their errors and
    warnings name them); the heads follow the training set's mask names unless the config sets them
    (`config.follow_dataset_masks`)."""
    from .config import get_multimask_cfg, resolve_config_file
    from .data.dataset_check import check_dataset_file

    args.config_file = str(resolve_config_file(args.config_file))  # a preset name becomes its file
    metas = {
        path: check_dataset_file(path, _image_root(args, path)) for path in (args.train_json, args.val_json) if path
    }
    cfg = get_multimask_cfg(
        args.config_file, args.opts, dataset_mask_names=metas[args.train_json]["mask_names"], dataset=args.train_json
    )
    names = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
    if args.val_json and not set(names) <= set(metas[args.val_json]["mask_names"]):
        raise ValueError(
            f"{args.val_json}: has masks {metas[args.val_json]['mask_names']} but the model trains "
            f"{names} (from {args.train_json}); give the validation set the training set's masks"
        )
    return cfg


def _register_datasets(args: argparse.Namespace, names: list[str], run_dir: str | None = None) -> list[str]:
    """Register the train (and val) JSON, or the run's frozen copies of them; return the classes.

    Image file names stay relative to the given JSON's folder (or --image-root) when a copy is registered.
    """
    from detectron2.data import MetadataCatalog

    from .data import register_multimask_dataset
    from .run_folder import frozen_json

    for kind, name, path in (("train", TRAIN_NAME, args.train_json), ("val", VAL_NAME, args.val_json)):
        if path:
            copy = frozen_json(run_dir, kind) if run_dir else None
            register_multimask_dataset(
                name, copy if copy and copy.is_file() else path, _image_root(args, path), mask_names=names, source=path
            )  # the copy's messages name the user's file
    classes = MetadataCatalog.get(TRAIN_NAME).thing_classes
    if args.val_json and MetadataCatalog.get(VAL_NAME).thing_classes != classes:
        raise SystemExit(
            f"{args.val_json}: classes {MetadataCatalog.get(VAL_NAME).thing_classes} differ from "
            f"the training set's {classes}"
        )
    return classes


def _image_root(args: argparse.Namespace, json_file: str) -> Path:
    """The folder a dataset JSON's image file names are relative to: --image-root, else the JSON's folder."""
    return Path(args.image_root) if args.image_root else Path(json_file).resolve().parent


def _train_worker(args: argparse.Namespace):
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from .engine import MultiMaskTrainer
    from .engine.hooks import STOPPED_EXIT_CODE, TrainingStopped

    cfg = training_config(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="multimask", abbrev_name="mm")
    trainer = MultiMaskTrainer(cfg)
    if args.eval_only:
        trainer.resume_or_load(resume=True)
        return MultiMaskTrainer.test(cfg, trainer.model)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except TrainingStopped as e:
        if comm.get_world_size() == 1:
            raise  # main() reports it
        # A child process of the launcher: its exit status tells it (see cmd_train). os._exit, because a normal
        # interpreter exit with the process group's threads alive can abort (SIGABRT) and lose that status.
        print(e, flush=True)
        logging.shutdown()
        os._exit(STOPPED_EXIT_CODE)


def cmd_train(args: argparse.Namespace) -> None:
    from detectron2.engine import launch

    from .engine.launch import check_gpus, launch_until_stopped
    from .run_folder import check_fresh_start

    if not (args.resume or args.eval_only):
        check_fresh_start(args.output_dir)
    if args.num_gpus * args.num_machines == 1:
        launch(_train_worker, 1, args=(args,))
        return
    check_gpus(_checked_config(args), args.num_gpus)  # here, before the processes start: one-line errors
    launch_until_stopped(
        _train_worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from detectron2.data import MetadataCatalog
    from detectron2.utils.logger import setup_logger

    from .data import register_multimask_dataset
    from .data.dataset_check import check_dataset_file
    from .engine import MultiMaskPredictor, MultiMaskTrainer
    from .evaluation import format_class_ap, format_results, save_results
    from .run_folder import EVAL_RESULTS_FILE

    setup_logger(name="multimask")
    masks = check_dataset_file(args.json, _image_root(args, args.json))["mask_names"]
    predictor = MultiMaskPredictor.from_run(args.run, device=args.device)
    if not set(predictor.mask_names) <= set(masks):
        raise ValueError(
            f"{args.json}: has masks {masks} but the run {args.run} predicts {predictor.mask_names}; "
            "evaluate it on a dataset with those masks, or train a run on this dataset"
        )
    cfg = predictor.cfg.clone()
    cfg.defrost()
    register_multimask_dataset(VAL_NAME, args.json, args.image_root, mask_names=predictor.mask_names)
    classes, run_classes = MetadataCatalog.get(VAL_NAME).thing_classes, predictor.metadata.thing_classes
    if list(classes) != list(run_classes):
        raise ValueError(
            f"{args.json}: classes {list(classes)} differ from the run's {list(run_classes)} (same "
            "names in the same order, i.e. the same category ids, are needed)"
        )
    out = Path(args.output or Path(args.run) / "evaluations" / Path(args.json).stem / EVAL_RESULTS_FILE)
    cfg.DATASETS.TEST = (VAL_NAME,)
    cfg.OUTPUT_DIR = str(out.parent)  # the predictions go next to the results, never into the run's own files
    results = MultiMaskTrainer.test(cfg, predictor.model)
    print(format_results(results), format_class_ap(results), sep="\n\n")
    save_results(results, out)
    print(f"wrote {out}")


def list_images(path: Path) -> list[Path]:
    """One image file, or the image files of a folder (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if path.is_file():
        return [path]
    raise SystemExit(f"{path}: no such image or folder")


def cmd_predict(args: argparse.Namespace) -> None:
    import cv2
    from tqdm import tqdm

    from .engine import MultiMaskPredictor
    from .engine.prediction_io import image_entry, prediction_records, predictions_document
    from .io import atomic_write_bytes, atomic_write_json
    from .visualizer import MultiMaskVisualizer

    images = list_images(Path(args.input))
    out = Path(args.output)
    source = Path(args.input) if Path(args.input).is_dir() else Path(args.input).parent
    if out.resolve() == source.resolve():
        raise ValueError(f"{out}: write the overlays to another folder than the images' own")
    predictor = MultiMaskPredictor.from_run(args.run, score_threshold=args.score_threshold, device=args.device)
    classes, names = predictor.metadata.thing_classes, predictor.mask_names
    out.mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    for path in tqdm(images, desc="predict", unit="img"):
        try:
            img = read_image_bgr(path)
            inst = predictor(img)["instances"].to("cpu")
            vis = MultiMaskVisualizer(img[:, :, ::-1], predictor.metadata)
            overlay = vis.draw_instance_predictions_multimask(inst, names, classes).get_image()
        except (ValueError, RuntimeError) as e:  # unreadable image; CUDA out of memory on a huge one, ...
            message = (str(e).splitlines() or [type(e).__name__])[0]
            failures.append(message if message.startswith(str(path)) else f"{path}: {message}")
            continue
        records = prediction_records(inst, path.name, names, classes)
        overlay_name = overlay_file_name(path)
        ok, png = cv2.imencode(".png", overlay[:, :, ::-1])
        atomic_write_bytes(out / overlay_name, png.tobytes())
        results.append(image_entry(str(path), img.shape[0], img.shape[1], records, overlay_name))
    atomic_write_json(out / "predictions.json", predictions_document(results, names, classes, failures))
    print(f"wrote {len(results)} overlays and {out / 'predictions.json'}")
    for f in failures:
        print(f"skipped: {f}", file=sys.stderr)
    if failures and not results:
        raise SystemExit(1)


def overlay_file_name(image: Path) -> str:
    """`a.jpg` -> `a_jpg.png`: distinct for `a.jpg` and `a.png` of one folder."""
    return f"{image.stem}_{image.suffix.lstrip('.').lower()}.png"


def cmd_split(args: argparse.Namespace) -> None:
    from .data.split import format_split, split_dataset

    result = split_dataset(args.src, args.out, args.val_fraction, args.seed, image_root=args.image_root)
    print(
        f"wrote {result.paths['train']} and {result.paths['val']}\n{format_split(result.stats)}\n"
        f"{result.report.summary(max_messages=50)}"
    )


def cmd_stats(args: argparse.Namespace) -> None:
    from .data import Report, load_multimask_json
    from .data.health import dataset_health, format_health
    from .data.stats import dataset_stats, format_stats

    report = Report()
    dicts, meta = load_multimask_json(args.src, args.image_root, report=report)
    classes, names = meta["thing_classes"], meta["mask_names"]
    health = dataset_health(dicts, classes, names, args.tiny_area)
    root = Path(args.image_root or Path(args.src).parent)
    for finding in health.findings:  # images named as in the JSON
        finding.file_name = os.path.relpath(finding.file_name, root)
    print(
        f"{format_stats(dataset_stats(dicts, classes, names))}\n\n"
        f"{format_health(health, args.max_images)}\n\n"
        f"loading: {report.summary(max_messages=50)}"
    )


def build_parser() -> argparse.ArgumentParser:
    from detectron2.engine import default_argument_parser

    p = argparse.ArgumentParser(prog="python -m multimask", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic multimask dataset with known truth")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-train", type=int, default=64)
    s.add_argument("--num-val", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--height", type=int, default=256)
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--mask-names", nargs="+", default=["primary", "secondary"])
    s.add_argument(
        "--regime",
        choices=["default", "small-part", "large-part"],
        default="default",
        help="small-part: objects with a long thin appendage and a part covering 1-3%% of their box; "
        "large-part: a part covering 60-90%% of its object, cut along a straight line",
    )
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser(
        "import",
        help="convert labelme, plain COCO or COCO-with-mask-fields data to the multimask "
        "format (see datasets/README.md)",
    )
    s.add_argument("format", choices=["labelme", "coco", "coco-fields"])
    s.add_argument("src", help="folder of labelme JSON files, or COCO JSON")
    s.add_argument("out", help="multimask JSON to write (the report goes to OUT's name + .report.json)")
    s.add_argument(
        "--map",
        action="append",
        help="labelme: LABEL=MASK or LABEL=CLASS:MASK; repeat to add "
        "(LABEL_A+LABEL_B=MASK unites labels, one label may feed several masks)",
    )
    s.add_argument("--class", dest="cls", help="labelme: the class of every instance whose labels name none")
    s.add_argument("--mask-names", nargs="+", help="labelme: mask names in order")
    s.add_argument(
        "--field",
        action="append",
        help="coco-fields: FIELD=MASK_NAME, repeat to add (FIELD_A+FIELD_B=MASK unites fields)",
    )
    s.add_argument("--mask-name", help="coco: the mask name of 'segmentation' (default primary)")
    s.add_argument(
        "--drop-class", action="append", help="coco, coco-fields: drop this category and its annotations (repeatable)"
    )
    s.add_argument(
        "--image-root",
        help="coco, coco-fields: folder the images' file_name are relative to (default: the JSON's folder)",
    )
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("export", help="export a multimask JSON as a labelme folder")
    s.add_argument("src")
    s.add_argument("out")
    s.add_argument("--image-root")
    s.set_defaults(func=cmd_export)

    t = default_argument_parser()  # --config-file, --resume, --num-gpus, --num-machines, --dist-url, opts
    s = sub.add_parser(
        "train",
        parents=[t],
        add_help=False,
        help="train a model (detectron2 launch)",
        epilog="Trailing KEY VALUE pairs override config options.",
    )
    s.set_defaults(config_file="mask_rcnn_R_50_FPN_3x", func=cmd_train)
    s.add_argument("--train-json", required=True)
    s.add_argument("--val-json")
    s.add_argument("--image-root", help="folder image file names are relative to (default: each JSON's folder)")
    s.add_argument("--output-dir", default="runs/run", help="run folder (checkpoints, metrics, config)")

    s = sub.add_parser("evaluate", help="COCO AP of a run on a dataset, per mask name")
    s.add_argument("--run", required=True, help="training run folder")
    s.add_argument("--json", required=True, help="multimask dataset JSON")
    s.add_argument("--image-root")
    s.add_argument("--output", help="results JSON (default: RUN/evaluations/<JSON's name>/eval_results.json)")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="predict on an image or a folder; write overlays and predictions.json")
    s.add_argument("--run", required=True, help="training run folder")
    s.add_argument("input", help="image file or folder")
    s.add_argument("--output", required=True, help="output folder")
    s.add_argument("--score-threshold", type=float, default=0.5)
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("split", help="split a multimask JSON by image into train.json and val.json (seeded)")
    s.add_argument("src", help="multimask JSON")
    s.add_argument("--val-fraction", type=float, default=0.2, help="share of the images for val, in [0, 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder for train.json and val.json")
    s.add_argument("--image-root", help="folder image file names are relative to (default: the JSON's folder)")
    s.set_defaults(func=cmd_split)

    s = sub.add_parser(
        "stats",
        help="a dataset's health: instances per class and mask name, missing or tiny masks, parts outside their "
        "object, part-to-object area ratios, empty images, with the images concerned",
    )
    s.add_argument("src", help="multimask JSON")
    s.add_argument("--image-root", help="folder image file names are relative to (default: the JSON's folder)")
    s.add_argument("--tiny-area", type=float, default=16.0, help="masks below this many pixels are reported")
    s.add_argument("--max-images", type=int, default=10, help="images named per finding (default 10)")
    s.set_defaults(func=cmd_stats)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point; errors in user input end with a one-line message and exit status 2."""
    from .engine import WeightsUnavailableError
    from .engine.hooks import STOPPED_EXIT_CODE, TrainingStopped
    from .io import DatasetError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (DatasetError, WeightsUnavailableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingStopped as e:
        print(e, flush=True)
        raise SystemExit(STOPPED_EXIT_CODE) from None
