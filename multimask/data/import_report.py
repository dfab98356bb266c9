"""The report of an import: what each source label or field gave, per mask name, with totals that add up.

Every source item (a labelme shape, or a COCO annotation's field) is counted once as read, then once as
either used (with the mask names it went into) or skipped with a reason: read == used + skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from .geometry import Report


@dataclass
class SourceTally:
    """Counts of one source label or field."""

    read: int = 0
    used: int = 0
    into: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)


@dataclass
class ImportReport(Report):
    """A `Report` (repairs and skips, with messages) plus the counts that prove nothing was lost."""

    source_kind: str = "label"
    sources: dict[str, SourceTally] = field(default_factory=dict)
    masks: dict[str, list[int]] = field(default_factory=dict)  # mask name -> [instances with it, without]
    instances_read: int = 0
    instances_written: int = 0
    instance_skips: Counter = field(default_factory=Counter)
    images_read: int = 0
    images_missing: list[str] = field(default_factory=list)
    dropped_classes: dict[str, str] = field(default_factory=dict)  # class -> why

    def tally(self, key: str) -> SourceTally:
        return self.sources.setdefault(key, SourceTally())

    def read(self, key: str, n: int = 1) -> None:
        self.tally(key).read += n

    def used(self, key: str, names: list[str]) -> None:
        t = self.tally(key)
        t.used += 1
        t.into.update(names)

    def skip(self, key: str, reason: str) -> None:
        self.tally(key).skipped[reason] += 1

    def instance(self, masks: dict[str, Any] | None, why: str | None = None) -> None:
        """Count one source instance: written with `masks` ({name: segmentation}), or skipped because `why`."""
        self.instances_read += 1
        if masks is None:
            self.instance_skips[why or "skipped"] += 1
            return
        self.instances_written += 1
        for name, segm in masks.items():
            self.masks.setdefault(name, [0, 0])[0 if segm else 1] += 1

    def as_dict(self) -> dict:
        """The report as JSON-ready data."""
        return {
            "source_kind": self.source_kind,
            "sources": {
                k: {"read": t.read, "used": t.used, "into": dict(t.into), "skipped": dict(t.skipped)}
                for k, t in self.sources.items()
            },
            "masks": {n: {"with": w, "without": wo} for n, (w, wo) in self.masks.items()},
            "instances": {
                "read": self.instances_read,
                "written": self.instances_written,
                "skipped": dict(self.instance_skips),
            },
            "images": {"read": self.images_read, "missing": list(self.images_missing)},
            "dropped_classes": dict(self.dropped_classes),
            "problems": dict(self.counts),
            "messages": list(self.messages),
        }

    def write_json(self, out_json: str | Path) -> Path:
        """Write `<out>.report.json` next to the output JSON; returns its path."""
        path = Path(out_json).with_suffix(".report.json")
        atomic_write_json(path, self.as_dict(), indent=1)
        return path

    def table(self) -> str:
        """Every count as a plain-text table (never capped)."""
        rows = [(k, t.read, t.used, _join(t.into), _join(t.skipped)) for k, t in self.sources.items()]
        total = SourceTally()
        for t in self.sources.values():
            total.read, total.used = total.read + t.read, total.used + t.used
            total.into.update(t.into)
            total.skipped.update(t.skipped)
        rows.append(("total", total.read, total.used, _join(total.into), _join(total.skipped)))
        lines = _grid([(f"source {self.source_kind}", "read", "used", "into mask names", "skipped"), *rows])
        lines += [""] + _grid(
            [("mask name", "instances with it", "without"), *((n, w, wo) for n, (w, wo) in self.masks.items())]
        )
        skips = f" ({_join(self.instance_skips)})" if self.instance_skips else ""
        lines += [
            "",
            f"instances: {self.instances_read} read, {self.instances_written} written, "
            f"{self.instances_read - self.instances_written} skipped{skips}",
            f"images: {self.images_read} read, {len(self.images_missing)} missing"
            + (f": {', '.join(self.images_missing)}" if self.images_missing else ""),
        ]
        if self.dropped_classes:
            lines.append("dropped classes: " + ", ".join(f"{c} ({why})" for c, why in self.dropped_classes.items()))
        return "\n".join(lines)

    def all_images_missing(self) -> bool:
        return self.images_read > 0 and len(self.images_missing) == self.images_read


def _join(counts: Counter) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def _grid(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w) for v, w in zip(r, widths, strict=True)
        ).rstrip()
        for r in rows
    ]
