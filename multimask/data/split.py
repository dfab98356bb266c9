"""The seeded train/val split by image, shared by `python -m multimask split` and the app's Export."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json
from .dataset_json import load_multimask_json, make_annotation, write_multimask_json
from .geometry import Report
from .stats import DatasetStats, dataset_stats, format_table

SPLITS = ("train", "val")


def check_val_fraction(val_fraction: float) -> float:
    """`val_fraction` when it is a number in [0, 1), else ValueError."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    return val_fraction


def seeded_val_ids(image_ids: Sequence[Hashable], val_fraction: float, seed: int) -> set:
    """The image ids that go to val: ids ordered by sha256 of f"{seed}:{id}", the first round(n * val_fraction).

    One seed always gives the same split, whatever the ids' order, and adding images moves few others.
    """
    check_val_fraction(val_fraction)
    order = sorted(image_ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(order[: round(len(order) * val_fraction)])


@dataclass
class SplitResult:
    """The files written, the counts of each split, and what loading the input repaired or skipped."""

    paths: dict[str, Path]
    stats: dict[str, DatasetStats]
    report: Report


def split_dataset(
    json_file: str | Path, out_dir: str | Path, val_fraction: float, seed: int, *, image_root: str | Path | None = None
) -> SplitResult:
    """Write `out_dir/train.json` and `out_dir/val.json` from a multimask JSON, split by image (`seeded_val_ids`).

    An image's key is its `label_id` (written by the app's Export) or else its `id`, so splitting an app export
    gives the app's split for the same seed. Images keep their ids and fields; `file_name`s become relative to
    `out_dir`; annotations are the loader's (repaired; unusable ones skipped, see `report`), numbered per file.
    """
    check_val_fraction(val_fraction)
    json_file, out_dir = Path(json_file), Path(out_dir)
    paths = {s: out_dir / f"{s}.json" for s in SPLITS}
    if json_file.resolve() in {p.resolve() for p in paths.values()}:
        raise ValueError(f"{json_file}: the split would overwrite its input; write it to another folder")
    report = Report()
    dicts, meta = load_multimask_json(json_file, image_root, report=report)
    raw = read_json(json_file)  # the images' own fields and the categories as written
    raw_images = {img["id"]: img for img in raw["images"]}
    keys = {d["image_id"]: raw_images[d["image_id"]].get("label_id", d["image_id"]) for d in dicts}
    val = seeded_val_ids(list(keys.values()), val_fraction, seed)
    classes, names = meta["thing_classes"], meta["mask_names"]
    category_ids = {k: cat_id for cat_id, k in meta["thing_dataset_id_to_contiguous_id"].items()}
    categories = sorted(raw["categories"], key=lambda c: c["id"])
    root = out_dir.resolve()
    stats = {}
    for split in SPLITS:
        part = [d for d in dicts if (keys[d["image_id"]] in val) == (split == "val")]
        images = [
            {**raw_images[d["image_id"]], "file_name": os.path.relpath(Path(d["file_name"]).resolve(), root)}
            for d in part
        ]
        anns = [
            {
                **make_annotation(
                    k + 1, d["image_id"], category_ids[a["category_id"]], a["multimask"], d["height"], d["width"], names
                ),
                "iscrowd": a["iscrowd"],
            }
            for k, (d, a) in enumerate((d, a) for d in part for a in d["annotations"])
        ]
        write_multimask_json(
            paths[split],
            images,
            categories,
            anns,
            names,
            info={
                "description": f"{split} split of {json_file.name}",
                "source": str(json_file),
                "seed": seed,
                "val_fraction": val_fraction,
            },
        )
        stats[split] = dataset_stats(part, classes, names)
    return SplitResult(paths, stats, report)


def format_split(stats: dict[str, DatasetStats]) -> str:
    """Images and instances per split, one row per class and a total."""
    header = ["class"] + [f"{s} {what}" for s in SPLITS for what in ("images", "instances")]
    classes = list(stats[SPLITS[0]].classes)
    rows = [
        [c] + [v for s in SPLITS for v in (stats[s].classes[c].images, stats[s].classes[c].instances)] for c in classes
    ]
    rows.append(["all"] + [v for s in SPLITS for v in (stats[s].images, stats[s].total.instances)])
    return format_table(header, rows)
