"""Labelling datasets under a data root, one folder each: their files, locks and revisions.

`LabelDataset` also takes images in (`intake.ImageIntake`) and exports and imports (`interchange.Interchange`).

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
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from multimask.config import check_mask_names, is_valid_mask_name
from multimask.data.geometry import (
    clip_parts,
    instance_warnings,
)
from multimask.io import DatasetError, atomic_write_bytes, atomic_write_json, read_json

from .intake import ImageIntake
from .interchange import Interchange
from .payload import PayloadError, validate_instances
from .records import DATASET_NAME_RE, HEAD_RE, STATUSES, annotation_bytes, check_class_name, check_dataset_name, now

logger = logging.getLogger(__name__)

DIRECTIONS = ("next", "prev", "next_unlabelled")
IMAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
DEFAULT_RULES = {"secondary_inside_primary": True}
LOCK_FILE = ".lock"  # in each dataset folder: the cross-process lock, holding the token of the last index write
WRITTEN_FOLDERS = ("images", "annotations", "thumbs")  # receive writes: a link leading elsewhere is refused


class ConflictError(RuntimeError):
    """A save whose base revision is not the stored one: the image was changed elsewhere."""

    def __init__(self, image_id: str, current: int, base: int):
        super().__init__(
            f"image {image_id!r} was changed elsewhere (e.g. in another tab): it is now at revision "
            f"{current}, this edit started from revision {base}. Reload the image; nothing was saved."
        )
        self.image_id, self.current_revision, self.base_revision = image_id, current, base


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
        names = check_mask_names(mask_names, "mask names")
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
            {"name": name, "classes": classes, "mask_names": names, "rules": dict(DEFAULT_RULES), "created": now()},
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


class LabelDataset(ImageIntake, Interchange):
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

    def previous_instances(self, image_id: str, sources: dict[str, str] | None = None) -> list[dict]:
        """The instances of the image just before `image_id` in index order, with fresh ids ([] for the first);
        `sources`, when given, gets each fresh id's instance id on the previous image.

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
                masks = {n: clip_parts(parts, cur["width"], cur["height"]) for n, parts in masks.items()}
                if not any(masks.values()):
                    continue
            new_id = secrets.token_hex(4)
            while new_id in used:
                new_id = secrets.token_hex(4)
            used.add(new_id)
            if sources is not None:
                sources[new_id] = inst["id"]
            out.append(
                {
                    "id": new_id,
                    "class": inst["class"],
                    "masks": {n: [list(p) for p in parts] for n, parts in masks.items()},
                }
            )
        return out

    # ----- images --------------------------------------------------------------------------------------------

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
            atomic_write_bytes(self.annotations_dir / f"{image_id}.json", annotation_bytes(revision, new, body))
            if entry["status"] != new:
                self._set_status(entry, new)
            rules = dict(meta["rules"])
        positions = {inst["id"]: k for k, inst in enumerate(instances)}  # ids checked unique above
        return {
            "revision": revision,
            "status": new,
            "warnings": dropped + instance_warnings(clean, names, rules, positions),
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
                    atomic_write_json(path, {**doc, "revision": doc["revision"] + 1, "saved_at": now()})
            self._write_meta({**self._state.meta, "classes": [new if c == old else c for c in classes]})

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
