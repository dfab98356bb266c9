"""The mapping model shared by every importer: source labels or fields -> mask names (and classes).

A mapping is a list of `KEY=TARGET` pairs. `KEY` is a source label (labelme) or annotation field (COCO);
`A+B=TARGET` is short for `A=TARGET` and `B=TARGET`. `TARGET` is `MASK` or, where the class comes from the
source label, `CLASS:MASK`. Pairs add up and never replace each other: several keys may feed one mask name
(their shapes are united) and one key may feed several mask names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config import is_valid_mask_name

Target = tuple[str | None, str]  # (class or None, mask name)
NAME_RULE = "letters, digits and '_', not starting with a digit"


@dataclass(frozen=True)
class SourceMap:
    """{source key: its targets, in the order given}; see the module docstring."""

    targets: dict[str, tuple[Target, ...]]

    @property
    def mask_names(self) -> list[str]:
        """The mask names mapped to, in order of first appearance."""
        return list(dict.fromkeys(name for ts in self.targets.values() for _, name in ts))

    @property
    def has_class(self) -> bool:
        """Whether any pair names a class (`CLASS:MASK`)."""
        return any(cls is not None for ts in self.targets.values() for cls, _ in ts)

    def get(self, key: str) -> tuple[Target, ...]:
        return self.targets.get(key, ())


def split_pairs(items: str | Iterable[str], what: str) -> list[tuple[str, str]]:
    """`KEY=TARGET` strings (or one text of them separated by commas or new lines) -> (key, target) pairs."""
    if isinstance(items, str):
        items = items.replace("\n", ",").split(",")
    out = []
    for item in items:
        if not item.strip():
            continue
        key, sep, target = item.partition("=")
        if not sep or not key.strip() or not target.strip():
            raise ValueError(f"{what} expects KEY=VALUE (e.g. Head_a+Head_b=primary), got {item.strip()!r}")
        out.append((key.strip(), target.strip()))
    return out


def build_map(
    pairs: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str], what: str, *, allow_class: bool = True
) -> SourceMap:
    """Check and merge mapping pairs (a dict, (key, target) tuples or `KEY=TARGET` strings) into a SourceMap.

    ValueError naming `what` and the pair when a target is not `MASK` (or `CLASS:MASK` with `allow_class`),
    or when nothing is mapped.
    """
    items = (
        list(pairs.items())
        if isinstance(pairs, Mapping)
        else [p if isinstance(p, tuple) else split_pairs([p], what)[0] for p in pairs]
    )
    targets: dict[str, list[Target]] = {}
    for key, target in items:
        cls, sep, name = target.rpartition(":") if isinstance(target, str) else ("", "", target)
        ok = is_valid_mask_name(name) and (not sep or (cls and allow_class))
        if not ok:
            form = "'MASK' or 'CLASS:MASK'" if allow_class else "'MASK' (the class comes from the COCO category)"
            raise ValueError(f"{what} {key}={target}: expected {form} with a valid mask name ({NAME_RULE})")
        for source in str(key).split("+"):
            if not source:
                raise ValueError(f"{what} {key}={target}: empty name in {key!r}")
            entry = targets.setdefault(source, [])
            if (cls or None, name) not in entry:
                entry.append((cls or None, name))
    if not targets:
        raise ValueError(f"{what}: nothing is mapped; give at least one KEY=MASK pair")
    return SourceMap({k: tuple(v) for k, v in targets.items()})
