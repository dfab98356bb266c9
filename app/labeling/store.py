"""The storage behind the Label tab: labelling datasets under a data root, one folder each.

Layout of `data_root/<name>/`:

- `dataset.json`: {"name", "classes", "mask_names", "rules": {"secondary_inside_primary": true}, "created"}
- `images/`: the image files, copied in (checked: decodable, size limits) under sanitised unique names
- `index.json`: {"images": [{"id", "file_name", "width", "height", "status"}]} in labelling order;
  status is "unlabelled", "in_progress" or "done"
- `annotations/<image id>.json`: {"revision", "status", "instances", "saved_at"}; instances are the
  documents the browser editor sends and receives (see `payload.py`)

Every write is atomic (temporary file and rename). Writes and revision checks hold the dataset's lock: a
re-entrant thread lock shared by all `LabelDataset` objects of one folder in the process (the Gradio server is
multithreaded) together with an OS file lock on `<name>/.lock` (`fcntl.flock`), so two processes on one data
root (a second app, or a restarted one whose predecessor still runs) serialise too. The lock file also holds
a token that every write of dataset.json or index.json changes: taking the lock re-reads both files when
another process wrote them meanwhile. Otherwise the parsed files are shared in the process and
`LabelStore.open` reads them again only when they changed on disk (size, mtime or inode). `save` validates
the payload before taking the lock (a huge payload does not stall other images' saves) and refuses, with
ConflictError, an edit that started from an older revision. Annotation files are read when needed, never all
at once except by export and rename_class.

Crash consistency: an image's status is written to its annotations file first, then to index.json. The first
time a process opens a dataset it takes the lock, removes temporary files that an interrupted write left
(`.*.tmp` in the folder, images/ and annotations/; every writer of those holds the lock, so none is live),
and takes the status of every annotations file modified since index.json was last written (by mtime, so
only those files are read) into the index: a crash between the two writes leaves no wrong status behind.
Dataset folders, and their images/, annotations/ and thumbs/, that are links leading elsewhere are refused.
Messages name files relative to the data root (`leaves/index.json`), never by absolute server paths.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
import pycocotools.mask as mask_util
import shapely
from PIL import Image
from shapely.geometry import Polygon, box

from multimask.config import is_valid_mask_name
from multimask.data import convert
from multimask.data.dataset_json import load_multimask_json, make_annotation, write_multimask_json
from multimask.data.geometry import (
    Report,
    clean_polygons,
    flat_polygon,
    mask_to_polygons,
    parts_union,
    polygon_parts,
    to_rle,
)
from multimask.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, to_uint8
from multimask.data.import_report import ImportReport
from multimask.data.mapping import build_map
from multimask.data.split import check_val_fraction, seeded_val_ids
from multimask.io import DatasetError, atomic_write_bytes, atomic_write_json, read_json

from .payload import MAX_INSTANCES, MAX_PARTS, MAX_POINTS, PayloadError, validate_instances

MapPairs = Mapping[str, str] | Sequence[tuple[str, str]] | Sequence[str]  # see multimask.data.mapping
logger = logging.getLogger(__name__)

STATUSES = ("unlabelled", "in_progress", "done")
DIRECTIONS = ("next", "prev", "next_unlabelled")
DATASET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
IMAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_CLASS_NAME = 100
MAX_STEM = 80  # characters kept of an uploaded file's stem
DUPLICATE_NOTE = "already in the dataset: skipped"  # ends the message of an image added twice
INSIDE_TOLERANCE = 0.01  # share of a secondary's area that may lie outside its primary
CONTOUR_EPSILON = 0.7  # px, cv2.approxPolyDP tolerance when an RLE mask is traced to polygons
FLUSH_EVERY = 50  # images added in a batch before index.json is rewritten
MAX_WARNINGS = 20  # geometry warnings listed per save: each may cost a polygon repair, so the rest go unchecked
# Crossing parts of up to this many points are repaired to tell "no area" from "crosses itself" (20 ms at most);
# a repair takes seconds for a few hundred random points, so larger ones are told apart by their signed area.
EXACT_REPAIR_POINTS = 32
DEFAULT_RULES = {"secondary_inside_primary": True}
LOCK_FILE = ".lock"  # in each dataset folder: the cross-process lock, holding the token of the last index write
WRITTEN_FOLDERS = ("images", "annotations", "thumbs")  # receive writes: a link leading elsewhere is refused
HEAD_RE = re.compile(rb'\{"revision": (\d+), "status": "(unlabelled|in_progress|done)"')  # how `save` starts a file
# Image formats taken in (those of multimask.cli.IMAGE_SUFFIXES), with their suffixes; the first is the default.
BROWSER_UNSUPPORTED = (".tif", ".tiff")  # accepted, but browsers cannot display them
FORMAT_SUFFIXES = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
}


class DuplicateImageError(ValueError):
    """An image whose bytes the dataset holds already (under any name)."""


class ConflictError(RuntimeError):
    """A save whose base revision is not the stored one: the image was changed elsewhere."""

    def __init__(self, image_id: str, current: int, base: int):
        super().__init__(
            f"image {image_id!r} was changed elsewhere (e.g. in another tab): it is now at revision "
            f"{current}, this edit started from revision {base}. Reload the image; nothing was saved."
        )
        self.image_id, self.current_revision, self.base_revision = image_id, current, base


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


@dataclass
class _State:
    """What every LabelDataset of one folder shares: the lock, and dataset.json and index.json as read."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    meta: dict = field(default_factory=dict)
    index: list[dict] = field(default_factory=list)
    pos: dict[str, int] = field(default_factory=dict)
    unflushed: int = 0  # entries added to `index` but not yet written to index.json
    signature: tuple | None = None  # (size, mtime, inode) of dataset.json and index.json as last read or written
    digests: dict[str, str] | None = None  # sha256 of a stored image's bytes -> its file name; None: not built
    lock_fd: int | None = None  # the lock file while this process holds the file lock
    depth: int = 0  # nesting of `LabelDataset._locked` in the thread holding the lock
    token: bytes | None = None  # the lock file's token as this process last read or wrote it
    reconciled: bool = False  # crash leftovers handled (once per process)

    def reindex(self) -> None:
        self.pos = {e["id"]: i for i, e in enumerate(self.index)}
        self.digests = None


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


def _state_for(root: Path) -> _State:
    with _STATES_LOCK:
        return _STATES.setdefault(str(root), _State())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LabelStore:
    """The labelling datasets under `data_root` (one folder each, see the module docstring)."""

    def __init__(self, data_root: str | Path):
        self.root = Path(data_root).resolve()

    def list_datasets(self) -> list[str]:
        """Names of the labelling datasets (folders holding a dataset.json), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if DATASET_NAME_RE.fullmatch(p.name) and (p / "dataset.json").is_file() and p.resolve().parent == self.root
        )

    def create(
        self,
        name: str,
        classes: Sequence[str],
        mask_names: Sequence[str] = ("primary", "secondary"),
    ) -> LabelDataset:
        """A new, empty dataset; ValueError for a bad or taken name, bad classes or bad mask names."""
        name = check_dataset_name(name)
        if isinstance(classes, str):
            raise ValueError("classes must be a list of class names, not one string")
        classes = [check_class_name(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"duplicate class names in {classes}")
        names = list(mask_names)
        bad = [n for n in names if not is_valid_mask_name(n) or "\n" in n]
        if bad or not names:
            raise ValueError(
                f"mask names {bad or names} are not valid (letters, digits and '_', not starting "
                "with a digit; at least one)"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate mask names in {names}")
        folder = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise ValueError(f"a dataset or folder named {name!r} already exists") from None
        (folder / "images").mkdir()
        (folder / "annotations").mkdir()
        atomic_write_json(folder / "index.json", {"images": []})
        atomic_write_json(
            folder / "dataset.json",
            {"name": name, "classes": classes, "mask_names": names, "rules": dict(DEFAULT_RULES), "created": _now()},
            indent=2,
        )
        return LabelDataset(folder)

    def open(self, name: str) -> LabelDataset:
        """The dataset `name`; ValueError when there is none. Cheap when this process has it open already."""
        folder = self.root / check_dataset_name(name)
        if not (folder / "dataset.json").is_file():
            raise ValueError(f"no labelling dataset named {name!r}")
        if folder.resolve().parent != self.root:
            raise ValueError(f"dataset {name!r} is a link leading out of the data root: refused")
        return LabelDataset(folder)


class LabelDataset:
    """One labelling dataset folder. Get it from `LabelStore.create` / `LabelStore.open`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.images_dir = self.folder / "images"
        self.annotations_dir = self.folder / "annotations"
        for sub in WRITTEN_FOLDERS:
            if (self.folder / sub).resolve() != self.folder / sub:
                raise ValueError(f"{self._shown(self.folder / sub)} is a link leading elsewhere: dataset refused")
        self._state = _state_for(self.folder)
        with self._state.lock:  # read the files unless this process holds them as they are on disk
            if not self._state.unflushed and self._state.signature != self._signature():
                self._reload()  # (with unflushed entries a batch in another thread is adding images: keep them)
        if not self._state.reconciled:
            with self._locked():
                if not self._state.reconciled:
                    self._reconcile()

    # ----- reading -----------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def meta(self) -> dict:
        """{"name", "classes", "mask_names", "rules"} (a copy)."""
        m = self._state.meta
        return {
            "name": self.name,
            "classes": list(m["classes"]),
            "mask_names": list(m["mask_names"]),
            "rules": dict(m["rules"]),
        }

    @property
    def classes(self) -> list[str]:
        return list(self._state.meta["classes"])

    @property
    def mask_names(self) -> list[str]:
        return list(self._state.meta["mask_names"])

    def images(self) -> list[dict]:
        """The index entries {"id", "file_name", "width", "height", "status"} in labelling order (copies)."""
        with self._state.lock:
            return [dict(e) for e in self._state.index]

    def image_path(self, image_id: str) -> Path:
        """Path of the image file of `image_id` (inside images/); ValueError for an unknown id."""
        path = (self.images_dir / self._entry(image_id)["file_name"]).resolve()
        if path.parent != self.images_dir:
            raise DatasetError(f"{self._shown(self.folder / 'index.json')}: image {image_id!r} points outside images/")
        return path

    def load(self, image_id: str) -> dict:
        """{"image_id", "revision", "status", "instances"}: revision 0 and no instances when never saved."""
        entry = self._entry(image_id)
        doc = self._read_annotations(image_id)
        return {
            "image_id": image_id,
            "revision": doc["revision"],
            "status": doc.get("status", entry["status"]),
            "instances": doc["instances"],
        }

    def next_image(self, image_id: str | None, direction: str = "next") -> str | None:
        """The id of the image after ("next") or before ("prev") `image_id` in index order, or None at the end.

        "next_unlabelled": the first image after `image_id` whose status is "unlabelled", wrapping around to
        the start; None when there is no other. With `image_id` None: the first (last for "prev") image.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        with self._state.lock:
            index = self._state.index
            if not index:
                return None
            i = None if image_id is None else self._position(image_id)
            if direction == "next":
                j = 0 if i is None else i + 1
                return index[j]["id"] if j < len(index) else None
            if direction == "prev":
                j = len(index) - 1 if i is None else i - 1
                return index[j]["id"] if j >= 0 else None
            start = -1 if i is None else i
            for k in range(1, len(index) + 1):
                j = (start + k) % len(index)
                if j != i and index[j]["status"] == "unlabelled":
                    return index[j]["id"]
            return None

    def previous_instances(self, image_id: str) -> list[dict]:
        """The instances of the image just before `image_id` in index order, with fresh ids ([] for the first).

        When the two images differ in size, the polygons are clipped to this image and parts left without
        area are dropped (instances left without any mask too).
        """
        with self._state.lock:
            i = self._position(image_id)
            if i == 0:
                return []
            prev, cur = self._state.index[i - 1], self._state.index[i]
        instances = self._read_annotations(prev["id"])["instances"]
        out, used = [], set()
        for inst in instances:
            masks = inst["masks"]
            if (prev["width"], prev["height"]) != (cur["width"], cur["height"]):
                masks = {n: _clip_parts(parts, cur["width"], cur["height"]) for n, parts in masks.items()}
                if not any(masks.values()):
                    continue
            new_id = secrets.token_hex(4)
            while new_id in used:
                new_id = secrets.token_hex(4)
            used.add(new_id)
            out.append(
                {
                    "id": new_id,
                    "class": inst["class"],
                    "masks": {n: [list(p) for p in parts] for n, parts in masks.items()},
                }
            )
        return out

    # ----- images --------------------------------------------------------------------------------------------

    def add_image_bytes(self, filename: str, data: bytes) -> dict:
        """Check and store one image; returns its index entry. ValueError (naming the file) when it is refused.

        Refused: empty, larger than 50 MB, not a PNG, JPEG, BMP, TIFF or WebP image that decodes, or larger
        than MAX_IMAGE_PIXELS pixels (checked from the header, before decoding). TIFF, and images of more than 8
        bits, are stored as 8-bit PNG, which browsers show as training sees it. The name is reduced to a safe
        basename with the suffix of the image's format, made unique with `_2`, `_3`, ... when taken.
        """
        width, height, suffix, data = _check_image(filename, data)
        with self._locked():
            entry = self._store_image(filename, data, width, height, suffix)
            try:
                self._flush_index()
            except BaseException:
                self._forget_last(entry)
                raise
        return dict(entry)

    def add_images_from_folder(self, folder: str | Path, allowed_root: str | Path) -> tuple[list[dict], list[str]]:
        """Add the image files (by suffix, not recursive) of `folder`, which must lie inside `allowed_root`.

        Returns (index entries added, one message per file that was refused); ValueError when the folder
        itself is not allowed or not a folder.
        """
        root = Path(allowed_root).resolve()
        src = Path(folder).expanduser().resolve()
        if not src.is_relative_to(root):
            raise ValueError(f"{folder}: only folders inside {root} can be imported from")
        if not src.is_dir():
            raise ValueError(f"{folder}: not a folder")
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

        def read(path: Path) -> bytes:
            if not path.resolve().is_relative_to(root):
                raise ValueError(f"{path.name}: links outside the folder imported from")
            return _read_image_file(path)

        added, errors = [], []
        for _, result in self._add_many((p.name, lambda p=p: read(p), None) for p in files):
            if isinstance(result, str):
                errors.append(result)
            else:
                added.append(result)
        return added, errors

    def remove_image(self, image_id: str) -> None:
        """Remove an image: its file, its annotations and its index entry."""
        with self._locked():
            entry = self._entry(image_id)
            path = self.image_path(image_id)
            self._state.index = [e for e in self._state.index if e["id"] != image_id]
            self._state.reindex()
            try:
                self._flush_index()
            except BaseException:
                self._reload()
                raise
            (self.annotations_dir / f"{image_id}.json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            logger.info("%s: removed image %s (%s)", self.name, image_id, entry["file_name"])

    # ----- annotations ---------------------------------------------------------------------------------------

    def save(self, image_id: str, base_revision: int, instances: list, status: str | None = None) -> dict:
        """Store the instances of an image if it is still at `base_revision`; returns {"revision", "status",
        "warnings"}.

        PayloadError for bad instances, ConflictError (nothing written) when the image was saved elsewhere
        since `base_revision`. Without `status`: "in_progress" when instances exist and it was "unlabelled",
        "unlabelled" when there are none and it is not "done", else unchanged; "in_progress" without any
        instance is stored as "unlabelled". Warnings: instances without
        any mask (not saved), parts that cross themselves or have no area (repaired on export), and, under
        the rule `secondary_inside_primary`, instances whose second mask is not inside their first.

        The payload is checked and serialised before the lock is taken (against the classes as they were; when
        they changed meanwhile so that it uses one no longer there, it is checked again, which names it).
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if isinstance(base_revision, bool) or not isinstance(base_revision, int) or base_revision < 0:
            raise PayloadError(f"base_revision must be a non-negative integer, got {base_revision!r}")
        dropped: list[str] = []
        entry, names = self._entry(image_id), self.mask_names
        clean = validate_instances(
            instances,
            classes=self.classes,
            mask_names=names,
            width=entry["width"],
            height=entry["height"],
            dropped=dropped,
        )
        body = orjson.dumps(clean)  # about 5x faster than json for large payloads
        with self._locked():
            entry, meta = self._entry(image_id), self._state.meta
            if not {inst["class"] for inst in clean} <= set(meta["classes"]):  # renamed meanwhile: raises,
                validate_instances(
                    instances,
                    classes=meta["classes"],
                    mask_names=names,  # naming the class
                    width=entry["width"],
                    height=entry["height"],
                )
            current, old = self._head(image_id)
            if current != base_revision:
                raise ConflictError(image_id, current, base_revision)
            old = old or entry["status"]
            new = status or (
                "in_progress" if clean and old == "unlabelled" else "unlabelled" if not clean and old != "done" else old
            )
            if new == "in_progress" and not clean:  # every instance deleted: nothing is in progress
                new = "unlabelled"
            revision = base_revision + 1
            atomic_write_bytes(self.annotations_dir / f"{image_id}.json", _annotation_bytes(revision, new, body))
            if entry["status"] != new:
                self._set_status(entry, new)
            rules = dict(meta["rules"])
        positions = {inst["id"]: k for k, inst in enumerate(instances)}  # ids checked unique above
        return {
            "revision": revision,
            "status": new,
            "warnings": dropped + _geometry_warnings(clean, names, rules, positions),
        }

    # ----- classes -------------------------------------------------------------------------------------------

    def add_class(self, name: str) -> None:
        """Add a class; ValueError for an empty, invalid or existing name."""
        name = check_class_name(name)
        with self._locked():
            classes = self._state.meta["classes"]
            if name in classes:
                raise ValueError(f"class {name!r} already exists")
            self._write_meta({**self._state.meta, "classes": [*classes, name]})

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class in dataset.json and in every annotations file that uses it (each written atomically,
        its revision increased, so an editor still holding the old version gets a ConflictError).

        The new name is added first and the old one removed last, so an interruption leaves a usable dataset.
        """
        new = check_class_name(new)
        with self._locked():
            classes = list(self._state.meta["classes"])
            if old not in classes:
                raise ValueError(f"there is no class {old!r} (classes: {classes})")
            if new in classes:
                raise ValueError(f"class {new!r} already exists")
            self._write_meta({**self._state.meta, "classes": [*classes, new]})
            for entry in list(self._state.index):
                path = self.annotations_dir / f"{entry['id']}.json"
                if not path.is_file():
                    continue
                doc = self._read_annotations(entry["id"])
                if any(inst["class"] == old for inst in doc["instances"]):
                    for inst in doc["instances"]:
                        if inst["class"] == old:
                            inst["class"] = new
                    atomic_write_json(path, {**doc, "revision": doc["revision"] + 1, "saved_at": _now()})
            self._write_meta({**self._state.meta, "classes": [new if c == old else c for c in classes]})

    # ----- export --------------------------------------------------------------------------------------------

    def export(
        self,
        out_dir: str | Path,
        val_fraction: float = 0.2,
        seed: int = 0,
        only_done: bool = False,
        report: Report | None = None,
    ) -> dict[str, Path]:
        """Write `train.json` and `val.json` (multimask COCO format) to `out_dir`; returns their paths.

        Exported images: those with instances, and those marked "done" without any (checked negatives);
        images without instances that are not "done" are not labelled yet and are left out. With
        `only_done`, only "done" images. The split is by image: images are ordered by a hash of (seed, image
        id) and the first round(n * val_fraction) go to val, so one seed always gives the same split and
        adding images moves few others. `file_name`s are relative to `out_dir` (pointing into this dataset's
        images/). Polygons that cross themselves are repaired on the way (recorded in `report`).
        """
        check_val_fraction(val_fraction)
        report = report if report is not None else Report()
        with self._state.lock:
            entries = [dict(e) for e in self._state.index]
            classes, names = self.classes, self.mask_names
        if not classes:
            raise ValueError(f"dataset {self.name!r} has no classes yet: add one before exporting")
        out_dir = Path(out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        chosen = []
        for e in entries:
            if only_done and e["status"] != "done":
                continue
            instances = self._read_annotations(e["id"])["instances"]
            if instances or e["status"] == "done":
                chosen.append((e, instances))
        val_ids = seeded_val_ids([e["id"] for e, _ in chosen], val_fraction, seed)
        cat_ids = {c: i + 1 for i, c in enumerate(classes)}
        categories = [{"id": i, "name": c} for c, i in cat_ids.items()]
        paths = {}
        for split in ("train", "val"):
            images, anns = [], []
            for e, instances in chosen:  # index order within a split
                if (e["id"] in val_ids) != (split == "val"):
                    continue
                h, w = e["height"], e["width"]
                image_num = len(images) + 1
                images.append(
                    {
                        "id": image_num,
                        "file_name": os.path.relpath(self.image_path(e["id"]), out_dir),
                        "height": h,
                        "width": w,
                        "label_id": e["id"],
                    }
                )
                for k, inst in enumerate(instances):
                    where = f"{self.name} image {e['id']} instance {k} (id {inst['id']!r})"
                    if inst["class"] not in cat_ids:
                        report.add("skipped annotations", where, f"unknown class {inst['class']!r}")
                        continue
                    masks = {
                        n: clean_polygons(inst["masks"].get(n, []), h, w, f"{where} mask '{n}'", report) for n in names
                    }
                    if not any(masks.values()):
                        report.add("skipped annotations", where, "no usable mask")
                        continue
                    anns.append(make_annotation(len(anns) + 1, image_num, cat_ids[inst["class"]], masks, h, w, names))
            paths[split] = out_dir / f"{split}.json"
            write_multimask_json(
                paths[split],
                images,
                categories,
                anns,
                names,
                info={
                    "description": f"exported from labelling dataset {self.name} ({split})",
                    "seed": seed,
                    "val_fraction": val_fraction,
                },
            )
        if report:
            logger.warning("%s export: %s", self.name, report.summary())
        return paths

    # ----- import --------------------------------------------------------------------------------------------

    def import_multimask(
        self,
        json_file: str | Path,
        image_root: str | Path | None = None,
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> Report:
        """Add the images and instances of a multimask JSON (see datasets/README.md).

        Its mask names must be this dataset's (any order), else ValueError naming both lists. Images go
        through the `add_image_bytes` checks; RLE masks are traced to polygons (holes are lost: reported);
        unknown classes are added. Imported images with instances are marked "done", others "unlabelled".
        With `allowed_roots` (the app's), an image whose path, links resolved, lies outside all of them is
        skipped and reported by its file name (None: no check, for the command line). Returns what was
        skipped or repaired.
        """
        report = Report()
        dicts, meta = load_multimask_json(json_file, image_root, report=report, check_images=False)
        if set(meta["mask_names"]) != set(self.mask_names):
            raise ValueError(
                f"{json_file}: its mask names {meta['mask_names']} differ from this dataset's {self.mask_names}"
            )
        self._import_dicts(dicts, meta["thing_classes"], str(json_file), report, allowed_roots)
        return report

    def import_coco_fields(
        self,
        json_file: str | Path,
        field_map: MapPairs,
        image_root: str | Path | None = None,
        drop_classes: Sequence[str] = (),
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> ImportReport:
        """Add a COCO JSON keeping each mask in its own field (`field_map`: fields -> mask names, see
        `multimask.data.convert.import_coco_fields`). Mask names must be this dataset's (ValueError naming
        both lists otherwise); a dataset mask name no field maps to stays empty. Images are looked up under
        `image_root`, by default the JSON's folder. As `import_multimask` otherwise; returns the import report.
        """
        self._check_targets(build_map(field_map, "field map", allow_class=False).mask_names, "field map")
        return self._import_converted(
            json_file,
            lambda out, report: convert.import_coco_fields(
                json_file, out, field_map, image_root=image_root, drop_classes=drop_classes, report=report
            ),
            allowed_roots,
        )

    def import_coco(
        self,
        json_file: str | Path,
        mask_name: str | None = None,
        image_root: str | Path | None = None,
        drop_classes: Sequence[str] = (),
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> ImportReport:
        """Add a plain COCO JSON: each `segmentation` becomes mask `mask_name` (default: this dataset's first).
        As `import_coco_fields` otherwise."""
        name = mask_name or self.mask_names[0]
        self._check_targets([name], "mask name")
        return self._import_converted(
            json_file,
            lambda out, report: convert.import_coco(
                json_file, out, name, image_root=image_root, drop_classes=drop_classes, report=report
            ),
            allowed_roots,
        )

    def import_labelme(
        self,
        folder: str | Path,
        label_map: MapPairs | None = None,
        default_class: str | None = None,
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> ImportReport:
        """Add a folder of labelme JSON files (see `multimask.data.convert.import_labelme`).

        The mask names that `label_map` maps to must be this dataset's (ValueError naming both lists
        otherwise); the class comes from `CLASS:MASK` targets or `default_class`. Without a map, labels
        "class/mask" are read and shapes of other mask names are skipped (reported). As `import_multimask`
        otherwise; returns the import report.
        """
        if label_map is not None:
            self._check_targets(build_map(label_map, "label map").mask_names, "label map")
        return self._import_converted(
            folder,
            lambda out, report: convert.import_labelme(
                folder, out, label_map, default_class=default_class, mask_names=self.mask_names, report=report
            ),
            allowed_roots,
        )

    def _import_converted(
        self,
        source: str | Path,
        convert_to: Callable[[Path, ImportReport], Any],
        allowed_roots: Sequence[str | Path] | None,
    ) -> ImportReport:
        """Convert `source` into a temporary multimask JSON (its images resolve from there), then add it."""
        report = ImportReport()
        with tempfile.TemporaryDirectory(prefix="multimask-import-") as tmp:
            out = Path(tmp) / "multimask.json"
            convert_to(out, report)
            dicts, meta = _load_converted(out, None, source, report)
            self._import_dicts(dicts, meta["thing_classes"], str(source), report, allowed_roots)
        return report

    # ----- internals -----------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the dataset's lock: the thread lock, and (outermost only) the file lock, after which dataset.json
        and index.json are re-read when another process wrote them."""
        state = self._state
        with state.lock:
            if state.depth == 0:
                fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                state.lock_fd = fd
            state.depth += 1
            try:
                if state.depth == 1:
                    self._follow_disk()
                yield
            finally:
                state.depth -= 1
                if state.depth == 0:
                    fd, state.lock_fd = state.lock_fd, None
                    os.close(fd)  # releases the file lock

    def _follow_disk(self) -> None:
        """Re-read dataset.json and index.json if the lock file's token or the files changed since this process
        read or wrote them (file lock held); index entries this process added but has not written yet stay."""
        token = os.pread(self._state.lock_fd, 64, 0)
        if token == self._state.token and self._state.signature == self._signature():
            return
        state = self._state
        pending = state.index[len(state.index) - state.unflushed :] if state.unflushed else []
        self._reload()
        kept = [e for e in pending if e["id"] not in state.pos]
        if kept:
            state.index += kept
            state.reindex()
            state.unflushed = len(kept)
        state.token = token

    def _reconcile(self) -> None:
        """Undo what a crash left (file lock held, once per process): temporary files, and index statuses
        older than their annotations file (those files modified since index.json was written are read)."""
        for folder in (self.folder, self.images_dir, self.annotations_dir):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        since = (self.folder / "index.json").stat().st_mtime_ns
        read, fixed = 0, []
        with os.scandir(self.annotations_dir) as files:
            for f in files:
                i = self._state.pos.get(f.name.removesuffix(".json"))
                if i is None or not f.name.endswith(".json") or f.stat().st_mtime_ns < since:
                    continue
                read += 1
                entry, status = self._state.index[i], self._head(f.name.removesuffix(".json"))[1]
                if status is not None and status != entry["status"]:
                    entry["status"] = status
                    fixed.append(entry["id"])
        if read:  # written again even when nothing changed: the next process reads no file
            self._flush_index()
        if fixed:
            logger.warning(
                "%s: status of %d image(s) taken from their annotations after an interrupted save: %s",
                self.name,
                len(fixed),
                ", ".join(fixed[:10]),
            )
        self._state.reconciled = True

    def _head(self, image_id: str) -> tuple[int, str | None]:
        """(revision, status or None) of an image's annotations file ((0, None) when never saved), from its
        first bytes when `save` wrote it."""
        path = self.annotations_dir / f"{image_id}.json"
        try:
            with open(path, "rb") as f:
                m = HEAD_RE.match(f.read(64))
        except FileNotFoundError:
            return 0, None
        if m:
            return int(m[1]), m[2].decode("ascii")
        doc = self._read_annotations(image_id)
        return doc["revision"], doc.get("status") if doc.get("status") in STATUSES else None

    def _shown(self, path: Path) -> str:
        """`path` relative to the data root, for messages."""
        return Path(os.path.relpath(path, self.folder.parent)).as_posix()

    def _read(self, path: Path) -> Any:
        """read_json, its message naming the file relative to the data root."""
        try:
            return read_json(path)
        except DatasetError as e:
            raise DatasetError(str(e).replace(str(path), self._shown(path), 1)) from None

    def _reload(self) -> None:
        """Read dataset.json and index.json into the shared state (caller holds the lock)."""
        meta = self._read(self.folder / "dataset.json")
        where = self._shown(self.folder / "dataset.json")
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("classes"), list)
            or not all(isinstance(c, str) for c in meta["classes"])
        ):
            raise DatasetError(f"{where}: needs a 'classes' list of names")
        names = meta.get("mask_names")
        if not isinstance(names, list) or not names or not all(is_valid_mask_name(n) for n in names):
            raise DatasetError(f"{where}: needs a 'mask_names' list of valid mask names")
        meta["rules"] = {**DEFAULT_RULES, **(meta.get("rules") if isinstance(meta.get("rules"), dict) else {})}
        index = self._read(self.folder / "index.json")
        where = self._shown(self.folder / "index.json")
        if not isinstance(index, dict) or not isinstance(index.get("images"), list):
            raise DatasetError(f"{where}: needs an 'images' list")
        for i, e in enumerate(index["images"]):
            if not (
                isinstance(e, dict)
                and isinstance(e.get("id"), str)
                and IMAGE_ID_RE.fullmatch(e["id"])
                and isinstance(e.get("file_name"), str)
                and e.get("status") in STATUSES
                and isinstance(e.get("width"), int)
                and isinstance(e.get("height"), int)
            ):
                raise DatasetError(
                    f"{where} images[{i}]: needs a safe 'id', 'file_name', integer 'width' and "
                    f"'height', and a status among {STATUSES}"
                )
        self._state.meta, self._state.index = meta, index["images"]
        self._state.reindex()
        self._state.unflushed = 0
        self._state.signature = self._signature()

    def _signature(self) -> tuple:
        out = []
        for name in ("dataset.json", "index.json"):
            try:
                st = (self.folder / name).stat()
                out.append((st.st_size, st.st_mtime_ns, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _position(self, image_id: Any) -> int:
        if not isinstance(image_id, str) or IMAGE_ID_RE.fullmatch(image_id) is None:
            raise ValueError(f"invalid image id {image_id!r}")
        i = self._state.pos.get(image_id)
        if i is None:
            raise ValueError(f"image {image_id!r} is not in dataset {self.name!r}")
        return i

    def _entry(self, image_id: Any) -> dict:
        with self._state.lock:
            return self._state.index[self._position(image_id)]

    def _read_annotations(self, image_id: str) -> dict:
        path = self.annotations_dir / f"{image_id}.json"
        if not path.is_file():
            return {"revision": 0, "instances": []}
        doc = self._read(path)
        if not (
            isinstance(doc, dict) and isinstance(doc.get("revision"), int) and isinstance(doc.get("instances"), list)
        ):
            raise DatasetError(f"{self._shown(path)}: needs an integer 'revision' and an 'instances' list")
        return doc

    def _flush_index(self) -> None:
        atomic_write_json(self.folder / "index.json", {"images": self._state.index})
        self._state.unflushed = 0
        self._written()

    def _written(self) -> None:
        """After this process wrote dataset.json or index.json (lock held): a new token tells other processes."""
        self._state.signature = self._signature()
        self._state.token = secrets.token_hex(8).encode("ascii")
        os.pwrite(self._state.lock_fd, self._state.token, 0)

    def _set_status(self, entry: dict, status: str) -> None:
        old, entry["status"] = entry["status"], status
        try:
            self._flush_index()
        except BaseException:
            entry["status"] = old
            raise

    def _write_meta(self, meta: dict) -> None:
        data = {k: meta[k] for k in ("name", "classes", "mask_names", "rules", "created") if k in meta}
        atomic_write_json(self.folder / "dataset.json", data, indent=2)
        self._state.meta = meta
        self._written()

    def _new_image_id(self) -> str:
        while True:
            image_id = secrets.token_hex(6)
            if image_id not in self._state.pos and not (self.annotations_dir / f"{image_id}.json").exists():
                return image_id

    def _store_image(self, filename: str, data: bytes, width: int, height: int, suffix: str) -> dict:
        """Copy a checked image into images/ and append its entry to the index, unflushed (lock held).

        ValueError (naming both files, ending in DUPLICATE_NOTE) when the dataset holds the same bytes already.
        """
        digest = hashlib.sha256(data).hexdigest()
        same = self._digests().get(digest)
        if same is not None:
            raise DuplicateImageError(f"{_display_name(filename)}: the same image as {same}, {DUPLICATE_NOTE}")
        stem = _safe_stem(filename)
        taken = {e["file_name"].lower() for e in self._state.index}
        name, n = f"{stem}{suffix}", 1
        while name.lower() in taken or (self.images_dir / name).exists():
            n += 1
            name = f"{stem}_{n}{suffix}"
        atomic_write_bytes(self.images_dir / name, data)
        entry = {
            "id": self._new_image_id(),
            "file_name": name,
            "width": width,
            "height": height,
            "status": "unlabelled",
            "sha256": digest,
        }
        self._state.index.append(entry)
        self._state.digests[digest] = name
        self._state.pos[entry["id"]] = len(self._state.index) - 1
        self._state.unflushed += 1
        return entry

    def _digests(self) -> dict[str, str]:
        """{sha256 of the stored bytes: file name} of every image (lock held); entries from before the index
        kept digests get theirs from their file, once."""
        if self._state.digests is None:
            digests = {}
            for e in self._state.index:
                if not (isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64):
                    try:
                        e["sha256"] = hashlib.sha256(self.image_path(e["id"]).read_bytes()).hexdigest()
                    except (OSError, ValueError):
                        continue
                digests[e["sha256"]] = e["file_name"]
            self._state.digests = digests
        return self._state.digests

    def _forget_last(self, entry: dict) -> None:
        """Undo `_store_image` of `entry` (lock held) after index.json could not be written."""
        self._state.index = [e for e in self._state.index if e is not entry]
        self._state.reindex()
        self._state.unflushed = max(0, self._state.unflushed - 1)
        (self.images_dir / entry["file_name"]).unlink(missing_ok=True)

    def _add_many(
        self, items: Iterable[tuple[str, Callable[[], bytes], Any]], after: Callable[[dict, Any], None] | None = None
    ) -> Iterator[tuple[str, dict | str]]:
        """Add images one by one (checked outside the lock), rewriting index.json every FLUSH_EVERY images.

        `items` are (filename, read the bytes, extra); `after(entry, extra)` runs under the lock once the
        image is stored. Yields (filename, index entry) or (filename, error message naming the file).
        """
        try:
            for filename, read, extra in items:
                try:
                    width, height, suffix, data = _check_image(filename, read())
                except (OSError, ValueError) as e:
                    msg, label = str(e), _display_name(filename)
                    yield filename, msg if msg.startswith(label) else f"{label}: {msg}"
                    continue
                with self._locked():
                    try:
                        entry = self._store_image(filename, data, width, height, suffix)
                    except DuplicateImageError as e:
                        entry = str(e)
                    else:
                        if after is not None:
                            after(entry, extra)
                        if self._state.unflushed >= FLUSH_EVERY:
                            self._flush_index()
                        entry = dict(entry)
                yield filename, entry
        finally:
            with self._locked():
                if self._state.unflushed:
                    self._flush_index()

    def _check_targets(self, targets: list, what: str) -> None:
        unknown = [t for t in targets if t not in self.mask_names]
        if unknown:
            raise ValueError(
                f"{what} maps to mask names {list(dict.fromkeys(targets))}; this dataset's mask names "
                f"are {self.mask_names} ({unknown} unknown)"
            )

    def _import_dicts(
        self,
        dicts: list[dict],
        classes: list[str],
        source: str,
        report: Report,
        allowed_roots: Sequence[str | Path] | None = None,
    ) -> None:
        """Copy the images of loaded dataset dicts in and write their instances (see `import_multimask`)."""
        roots = None if allowed_roots is None else [Path(r).resolve() for r in allowed_roots]
        names = self.mask_names
        class_map: list[str | None] = []
        for cls in classes:
            try:
                cls = check_class_name(cls)
            except ValueError as e:
                report.add("skipped classes", source, f"{e}: its instances are skipped")
                class_map.append(None)
                continue
            with self._locked():
                if cls not in self._state.meta["classes"]:
                    self.add_class(cls)
            class_map.append(cls)

        def items() -> Iterator[tuple[str, Callable[[], bytes], tuple[str, list[dict]]]]:
            for rec in dicts:
                path, where = Path(rec["file_name"]), f"{source} image {rec['image_id']!r}"
                if roots is not None and not any(path.resolve().is_relative_to(r) for r in roots):
                    yield path.name, _refuse_outside, (where, [])
                    continue
                instances = _instances_of(rec, class_map, names, where, report)
                yield path.name, lambda p=path: _read_image_file(p), (where, instances)

        def write(entry: dict, extra: tuple[str, list[dict]]) -> None:
            where, instances = extra
            try:
                instances = validate_instances(
                    instances,
                    classes=self._state.meta["classes"],
                    mask_names=names,
                    width=entry["width"],
                    height=entry["height"],
                )
            except PayloadError as e:
                report.add("skipped annotations", where, str(e))
                instances = []
            status = "done" if instances else "unlabelled"
            atomic_write_bytes(
                self.annotations_dir / f"{entry['id']}.json", _annotation_bytes(1, status, orjson.dumps(instances))
            )
            entry["status"] = status

        for _, result in self._add_many(items(), after=write):
            if isinstance(result, str):
                report.add("skipped images", source, result)


def _load_converted(
    tmp_json: Path, image_root: str | Path | None, source: str | Path, report: Report
) -> tuple[list[dict], dict]:
    """Load a converter's temporary output; its problems go to `report` under the source's name."""
    mine = Report()
    dicts, meta = load_multimask_json(tmp_json, image_root, report=mine)
    for kind, n in mine.counts.items():
        report.counts[kind] = report.counts.get(kind, 0) + n
    report.messages += [m.replace(str(tmp_json), str(source)) for m in mine.messages]
    return dicts, meta


def _refuse_outside() -> bytes:
    raise ValueError("outside the folders this app may read: skipped")


def _annotation_bytes(revision: int, status: str, instances_json: bytes) -> bytes:
    """An annotations file (revision and status first, as HEAD_RE reads them) around serialised instances."""
    head = json.dumps({"revision": revision, "status": status})[:-1].encode("utf-8")
    return b'%s, "instances": %s, "saved_at": "%s"}' % (head, instances_json, _now().encode("ascii"))


def _read_image_file(path: Path) -> bytes:
    """The bytes of an image file, refused (ValueError) before reading when it is not a file or too large."""
    if not path.is_file():
        raise ValueError(f"{path.name}: not a file")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"{path.name}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
    return path.read_bytes()


def _check_image(filename: str, data: bytes) -> tuple[int, int, str, bytes]:
    """(width, height, file suffix, bytes to store) of image bytes; ValueError naming the file when they are
    refused. What browsers cannot show as training sees it, TIFF and images of more than 8 bits, is stored as
    an 8-bit PNG, mapped to 8 bits by `to_uint8` as `read_image_bgr` maps it."""
    label = _display_name(filename)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{label}: expected the file's bytes")
    if not data:
        raise ValueError(f"{label}: the file is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{label}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
    try:  # the header first, so that a huge image is refused before it is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                (w, h), fmt = im.size, im.format
    except Image.DecompressionBombError:
        w, h, fmt = math.inf, math.inf, None
    except Exception:  # PIL raises several kinds for data it cannot identify
        raise ValueError(f"{label}: not a readable image") from None
    if fmt is not None and fmt not in FORMAT_SUFFIXES:
        raise ValueError(f"{label}: {fmt} images are not supported (use {', '.join(FORMAT_SUFFIXES)})")
    if w * h > MAX_IMAGE_PIXELS:
        size = "over 178 million pixels" if w == math.inf else f"{w}x{h}"
        raise ValueError(f"{label}: {size} is larger than {MAX_IMAGE_PIXELS} pixels")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        img = None
    if img is None:
        raise ValueError(f"{label}: not a readable image")
    height, width = img.shape[:2]  # after EXIF orientation, as the model and the browser see it
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{label}: {width}x{height} is larger than {MAX_IMAGE_PIXELS} pixels")
    suffix = Path(_basename(filename)).suffix.lower()
    if suffix not in FORMAT_SUFFIXES[fmt]:  # missing or wrong: the suffix of what the bytes are
        suffix = FORMAT_SUFFIXES[fmt][0]
    if suffix in BROWSER_UNSUPPORTED or img.dtype != np.uint8:
        try:
            data, suffix = cv2.imencode(".png", to_uint8(img))[1].tobytes(), ".png"
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
    return int(width), int(height), suffix, bytes(data)


def _basename(filename: str) -> str:
    return str(filename).replace("\\", "/").rsplit("/", 1)[-1]


def _display_name(filename: Any) -> str:
    name = _basename(str(filename))[:100]
    return (name if name.isprintable() else repr(name)) or "(no name)"


def _safe_stem(filename: str) -> str:
    base = _basename(filename)
    stem = Path(base).stem if Path(base).suffix.lower() in IMAGE_SUFFIXES else base
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:MAX_STEM]
    return stem or "image"


def _geometry_warnings(
    instances: list[dict], names: list[str], rules: dict, positions: dict[str, int] | None = None
) -> list[str]:
    """Parts that cross themselves or have no area, a later mask without the first one, and (per the rules)
    secondaries outside their primary. Instances are numbered from 1, as the editor lists them.

    `positions` maps instance ids to their index in the list the caller was given (default: this list's).
    At most MAX_WARNINGS are listed, then a note; the checks stop there (a payload of crossing polygons costs
    a bounded time).
    """
    out = list(itertools.islice(_geometry_problems(instances, names, rules, positions or {}), MAX_WARNINGS + 1))
    if len(out) > MAX_WARNINGS:
        out[MAX_WARNINGS:] = [f"only the first {MAX_WARNINGS} problems are listed: there may be more"]
    return out


def _geometry_problems(
    instances: list[dict], names: list[str], rules: dict, positions: dict[str, int]
) -> Iterator[str]:
    """The warnings of `_geometry_warnings`, found lazily."""
    for i, inst in enumerate(instances):
        where = f"instance #{positions.get(inst['id'], i) + 1} (id {inst['id']!r}, {inst['class']})"
        repairable = True
        for name in names:
            for j, part in enumerate(inst["masks"][name]):
                problem = _part_problem(part)
                if problem:
                    yield f"{where}, mask {name!r}, part {j + 1} {problem}"
                    repairable = repairable and len(part) // 2 <= EXACT_REPAIR_POINTS
        primary = inst["masks"][names[0]]
        if not primary:
            later = [n for n in names[1:] if inst["masks"][n]]
            if later:
                yield (
                    f"{where} has a {later[0]!r} mask but no {names[0]!r} mask: select the instance and "
                    f"draw its {names[0]!r}"
                )
            continue
        if (
            len(names) < 2 or not rules.get("secondary_inside_primary") or not inst["masks"][names[1]] or not repairable
        ):  # (a large crossing part, reported above, costs too much to repair)
            continue
        sec = parts_union(inst["masks"][names[1]])
        if sec.area <= 0:
            continue
        outside = sec.difference(parts_union(primary)).area
        if outside > INSIDE_TOLERANCE * sec.area:
            yield (f"{where}: {outside / sec.area:.0%} of its {names[1]!r} mask lies outside its {names[0]!r} mask")


def _part_problem(part: list[float]) -> str | None:
    """None for a valid polygon part, else whether it has no area or crosses itself (see EXACT_REPAIR_POINTS)."""
    poly = Polygon(np.asarray(part, dtype=np.float64).reshape(-1, 2))
    if poly.is_valid:
        return None
    area = shapely.make_valid(poly).area if len(part) // 2 <= EXACT_REPAIR_POINTS else abs(poly.area)
    return "has no area: exports leave it out" if area <= 0 else "crosses itself: exports repair it"


def _clip_parts(parts: list[list[float]], width: int, height: int) -> list[list[float]]:
    """Polygon parts cut to the image [0, width] x [0, height]; parts left without area are dropped."""
    frame, out = box(0, 0, width, height), []
    for part in parts:
        for p in polygon_parts(flat_polygon(part).intersection(frame)):
            coords = np.asarray(p.exterior.coords)[:-1]
            if len(coords) >= 3:
                out.append([round(float(v), 2) for v in coords.reshape(-1)])
    return out


def _rle_to_polygons(rle: dict, height: int, width: int) -> tuple[list[list[float]], int]:
    """Outer contours of an RLE mask as polygons (pixel centres) and the number of holes they lose."""
    return mask_to_polygons(mask_util.decode(to_rle(rle, height, width)), CONTOUR_EPSILON)


def _fit_limits(parts: list[list[float]], where: str, report: Report) -> list[list[float]]:
    """Parts within the editor's limits: at most MAX_PARTS (the largest kept), MAX_POINTS points each."""
    if len(parts) > MAX_PARTS:
        parts = sorted(parts, key=lambda p: -Polygon(np.asarray(p).reshape(-1, 2)).area)[:MAX_PARTS]
        report.add("repaired masks", where, f"more than {MAX_PARTS} parts: the {MAX_PARTS} largest kept")
    out = []
    for part in parts:
        if len(part) // 2 > MAX_POINTS:
            poly, tol = max(polygon_parts(flat_polygon(part)), key=lambda p: p.area), 0.5
            coords = np.asarray(poly.exterior.coords)[:-1]
            while len(coords) > MAX_POINTS:
                coords = np.asarray(poly.simplify(tol).exterior.coords)[:-1]
                tol *= 2
            report.add("repaired masks", where, f"a part with {len(part) // 2} points simplified to {len(coords)}")
            part = [float(v) for v in coords.reshape(-1)]
        out.append(part)
    return out


def _instances_of(rec: dict, classes: list[str | None], names: list[str], where: str, report: Report) -> list[dict]:
    """Instance documents of one loaded dataset dict (RLE traced to polygons, editor limits applied)."""
    h, w = rec["height"], rec["width"]
    anns = rec["annotations"]
    if len(anns) > MAX_INSTANCES:
        report.add("skipped annotations", where, f"{len(anns) - MAX_INSTANCES} instances beyond {MAX_INSTANCES}")
        anns = anns[:MAX_INSTANCES]
    out = []
    for ann in anns:
        here = f"{where} annotation id={ann.get('id')}"
        cls = classes[ann["category_id"]]
        if cls is None:
            continue  # its class was reported
        masks = {}
        for name in names:
            segm = ann["multimask"].get(name) or []
            if isinstance(segm, dict):
                segm, holes = _rle_to_polygons(segm, h, w)
                if holes:
                    report.add(
                        "masks with holes lost",
                        f"{here} mask '{name}'",
                        f"{holes} hole(s) filled: the editor's polygons have no holes",
                    )
                if not segm:
                    report.add("skipped masks", f"{here} mask '{name}'", "a speck has no polygon")
            masks[name] = [
                [round(min(max(v, 0.0), float(w if j % 2 == 0 else h)), 2) for j, v in enumerate(p)]
                for p in _fit_limits(segm, f"{here} mask '{name}'", report)
            ]
        if not any(masks.values()):
            report.add("skipped annotations", here, "no usable mask left")
            continue
        out.append({"id": f"i{len(out) + 1}", "class": cls, "masks": masks})
    return out
