"""What a dataset holds: instances per class and mask name, instances missing a mask, images without instances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .geometry import is_empty


@dataclass
class ClassCounts:
    """Images showing a class, its instances, and how many of them have each mask."""

    images: int = 0
    instances: int = 0
    masks: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetStats:
    """Counts of loaded dataset dicts; `classes` in class order."""

    mask_names: list[str]
    images: int
    images_without_instances: int
    classes: dict[str, ClassCounts]

    @property
    def total(self) -> ClassCounts:
        """All classes together (`images`: the images with at least one instance)."""
        counts = self.classes.values()
        return ClassCounts(
            self.images - self.images_without_instances,
            sum(c.instances for c in counts),
            {n: sum(c.masks[n] for c in counts) for n in self.mask_names},
        )


def dataset_stats(dicts: Sequence[dict], classes: Sequence[str], mask_names: Sequence[str]) -> DatasetStats:
    """Count dataset dicts as `load_multimask_json` returns them (contiguous `category_id`, `multimask`)."""
    per_class = {c: ClassCounts(masks=dict.fromkeys(mask_names, 0)) for c in classes}
    for d in dicts:
        for k in {a["category_id"] for a in d["annotations"]}:
            per_class[classes[k]].images += 1
        for a in d["annotations"]:
            counts = per_class[classes[a["category_id"]]]
            counts.instances += 1
            for n in mask_names:
                counts.masks[n] += not is_empty(a["multimask"].get(n))
    return DatasetStats(list(mask_names), len(dicts), sum(not d["annotations"] for d in dicts), per_class)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned text columns: the first left-aligned, the others right-aligned."""
    cells = [[str(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells
    )


def format_stats(stats: DatasetStats) -> str:
    """One row per class and a total: images, instances, and per mask name the instances with and without it."""
    header = ["class", "images", "instances"]
    for n in stats.mask_names:
        header += [n, f"no {n}"]
    rows = []
    for name, c in [*stats.classes.items(), ("all", stats.total)]:
        row: list[object] = [name, c.images, c.instances]
        for n in stats.mask_names:
            row += [c.masks[n], c.instances - c.masks[n]]
        rows.append(row)
    return f"{format_table(header, rows)}\n{stats.images} images, {stats.images_without_instances} without instances"
