"""A dataset's health: what a person should look at before training, each finding with the images concerned.

Findings, per image and instance: a mask missing (per mask name), a part (the second mask) lying partly or wholly
outside its object (the first), a tiny mask, an image without instances. Also the distribution of part-to-object
area ratios per class (a part much larger than most is often a swapped pair of masks). Masks are compared on the
pixel grid (pycocotools RLE), so polygons and RLE masks count alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pycocotools.mask as mask_util

from .geometry import INSIDE_TOLERANCE, is_empty, to_rle

TINY_AREA = 16.0  # px: a mask smaller than this is probably a slip of the mouse
RATIO_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # part / object area; a last bin takes what is above


@dataclass
class Finding:
    """One thing to look at: `kind` (e.g. "no secondary", "secondary outside primary"), the image's file name and
    dataset id, the instance's index in the image (None for the image itself) and what was found."""

    kind: str
    file_name: str
    image_id: object
    instance: int | None
    detail: str


@dataclass
class DatasetHealth:
    """Findings in image order, part-to-object area ratios per class (instances having both masks), and counts per
    class: {"instances": n, <mask name>: instances with that mask}."""

    mask_names: list[str]
    images: int
    findings: list[Finding] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def by_kind(self) -> dict[str, list[Finding]]:
        """Findings grouped by kind, kinds in order of first appearance."""
        out: dict[str, list[Finding]] = {}
        for f in self.findings:
            out.setdefault(f.kind, []).append(f)
        return out


def dataset_health(
    dicts: Sequence[dict], classes: Sequence[str], mask_names: Sequence[str], tiny_area: float = TINY_AREA
) -> DatasetHealth:
    """Check dataset dicts as `load_multimask_json` returns them (contiguous `category_id`, `multimask`)."""
    names = list(mask_names)
    health = DatasetHealth(
        names,
        len(dicts),
        ratios={c: [] for c in classes},
        counts={c: dict.fromkeys(["instances", *names], 0) for c in classes},
    )
    for d in dicts:
        h, w, file_name = d["height"], d["width"], d["file_name"]

        def add(kind: str, k: int | None, detail: str, d=d, file_name=file_name) -> None:
            health.findings.append(Finding(kind, file_name, d["image_id"], k, detail))

        if not d["annotations"]:
            add("image without instances", None, "no instance (right for a checked negative)")
        for k, ann in enumerate(d["annotations"]):
            cls = classes[ann["category_id"]]
            rles = {n: to_rle(ann["multimask"][n], h, w) for n in names if not is_empty(ann["multimask"].get(n))}
            health.counts[cls]["instances"] += 1
            for n in rles:
                health.counts[cls][n] += 1
            for n in names:
                if n not in rles:
                    add(f"no {n}", k, f"a {cls} without its {n} mask")
                elif (area := float(mask_util.area(rles[n]))) < tiny_area:
                    add(f"tiny {n}", k, f"its {n} mask has {area:.0f} px")
            if len(names) < 2 or names[0] not in rles or names[1] not in rles:
                continue
            obj, part = rles[names[0]], rles[names[1]]
            part_area, obj_area = float(mask_util.area(part)), float(mask_util.area(obj))
            inside = float(mask_util.area(mask_util.merge([part, obj], intersect=True)))
            outside = (part_area - inside) / part_area
            if outside > INSIDE_TOLERANCE:
                kind = f"{names[1]} outside {names[0]}" if inside == 0 else f"{names[1]} crossing {names[0]}"
                add(kind, k, f"{outside:.0%} of its {names[1]} lies outside its {names[0]}")
            health.ratios[cls].append(part_area / obj_area)
    return health


def ratio_histogram(ratios: Sequence[float], width: int = 30) -> list[str]:
    """Text bars of part-to-object area ratios over RATIO_BINS (the last bin: above 1)."""
    edges = [*RATIO_BINS, np.inf]
    counts, _ = np.histogram(np.asarray(ratios, dtype=float), bins=edges)
    top = max(int(counts.max()), 1) if len(counts) else 1
    labels = [f"{a:.2f}-{b:.2f}" if np.isfinite(b) else f"> {a:.2f}" for a, b in zip(edges, edges[1:])]
    return [f"{lab:>11}  {'#' * round(width * n / top):<{width}}  {n}" for lab, n in zip(labels, counts)]


def format_health(health: DatasetHealth, max_images: int = 10) -> str:
    """The findings by kind with the images concerned (the first `max_images`), then the ratio histograms."""
    lines = []
    for kind, found in health.by_kind().items():
        files = list(dict.fromkeys(f.file_name for f in found))
        shown = ", ".join(files[:max_images]) + (
            f", ... ({len(files) - max_images} more)" if len(files) > max_images else ""
        )
        lines.append(f"{kind}: {len(found)} in {len(files)} image(s): {shown}")
    if not lines:
        lines.append("no findings")
    if len(health.mask_names) > 1:
        obj, part = health.mask_names[:2]
        for cls, ratios in health.ratios.items():
            if ratios:
                q = np.quantile(ratios, [0.1, 0.5, 0.9])
                lines += [
                    f"{cls}: {part} / {obj} area over {len(ratios)} instances: "
                    f"10% {q[0]:.3f}, median {q[1]:.3f}, 90% {q[2]:.3f}",
                    *ratio_histogram(ratios),
                ]
    return "\n".join(lines)
