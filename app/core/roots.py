"""The server folders a request may touch (the runs root, the data root, `--import-root`s): whether a path lies
in one once links are resolved, and how paths are named to the browser (from their root's folder name, such as
`runs/quick-1/model_best.pth`; never as absolute server paths)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

Roots = Sequence[str | Path]

# An absolute path in a message: "/" after a space, quote or bracket (not in a URL or a fraction), then parts.
_PART = r"[^\s'\"`,;:()\[\]<>|/]+"
_START = r"(?<![\w.~:/-])"
_ABSOLUTE = re.compile(rf"{_START}(?:/{_PART}){{2,}}")


def inside(path: str | Path, roots: Roots) -> Path | None:
    """`path` resolved (links followed) when that lies in one of `roots` (resolved too), else None."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL character
        return None
    return resolved if any(resolved.is_relative_to(Path(r).resolve()) for r in roots) else None


def locate(path: str, roots: Roots) -> Path:
    """What a typed server path names: an absolute path as it is, else the first existing of (the root whose folder
    name it starts with)/(the rest), then each (root)/(path), as messages name paths (see `shown`); not resolved."""
    given = Path(path)
    if given.is_absolute() or not given.parts:
        return given
    first, rest = given.parts[0], Path(*given.parts[1:])
    candidates = [Path(r) / rest for r in roots if Path(r).resolve().name == first]
    candidates += [Path(r) / given for r in roots]
    return next((c for c in candidates if c.exists()), candidates[0] if candidates else given)


def shown(path: str | Path, roots: Roots) -> str:
    """How `path` is named to the browser: `<root folder name>/<path inside the root>` for a path in one of
    `roots` (as given, then resolved), else its file name alone."""
    path = Path(path)
    for candidate in (path.absolute(), _resolved(path)):
        for root in roots:
            for form in _forms(root):
                if candidate.is_relative_to(form):
                    return (Path(form.name) / candidate.relative_to(form)).as_posix()
    return path.name


def scrub(text: str, roots: Roots) -> str:
    """`text` (a message, a log) with every absolute path in a root named as `shown` names it (`..` taken out),
    and any other absolute path of two parts or more by its file name alone."""
    forms = {str(f): f.name for r in roots for f in _forms(r)}
    if forms:
        alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        in_root = re.compile(rf"{_START}(?:{alternatives})(?:/{_PART})*(?!{_PART})")
        text = in_root.sub(lambda m: _in_root(m.group(), forms), text)
    return _ABSOLUTE.sub(lambda m: m.group().rsplit("/", 1)[1], text)


def _in_root(path: str, forms: dict[str, str]) -> str:
    """A path that starts with a root, named from the root's folder name once `..` parts are taken out."""
    path = os.path.normpath(path)
    for form, name in sorted(forms.items(), key=lambda f: len(f[0]), reverse=True):
        if path == form or path.startswith(form.rstrip("/") + "/"):
            return name + path[len(form) :]
    return path.rsplit("/", 1)[1]


def _forms(root: str | Path) -> list[Path]:
    """A root as given (made absolute) and resolved."""
    root = Path(root)
    return list(dict.fromkeys((root.absolute(), _resolved(root))))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return path.absolute()
