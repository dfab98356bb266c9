"""What a labelling dataset's files hold: valid dataset and class names, image statuses, and the annotations file
of an image (its revision and status first, so that they can be read without parsing the instances)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

STATUSES = ("unlabelled", "in_progress", "done")
DATASET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_CLASS_NAME = 100
HEAD_RE = re.compile(rb'\{"revision": (\d+), "status": "(unlabelled|in_progress|done)"')  # how `save` starts a file


def check_dataset_name(name: Any) -> str:
    """`name` if it is a safe dataset folder name, else ValueError saying what is allowed."""
    if not isinstance(name, str) or name in (".", "..") or DATASET_NAME_RE.fullmatch(name) is None:
        raise ValueError(
            f"invalid dataset name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (no paths)"
        )
    return name


def check_class_name(name: Any) -> str:
    """A class name, stripped: non-empty text of at most MAX_CLASS_NAME characters, no control characters."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a class name must be non-empty text, got {name!r}")
    name = name.strip()
    if len(name) > MAX_CLASS_NAME or any(not c.isprintable() for c in name):
        raise ValueError(f"invalid class name {name[:MAX_CLASS_NAME]!r}: at most {MAX_CLASS_NAME} printable characters")
    return name


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def annotation_bytes(revision: int, status: str, instances_json: bytes) -> bytes:
    """An annotations file (revision and status first, as HEAD_RE reads them) around serialised instances."""
    head = json.dumps({"revision": revision, "status": status})[:-1].encode("utf-8")
    return b'%s, "instances": %s, "saved_at": "%s"}' % (head, instances_json, now().encode("ascii"))
