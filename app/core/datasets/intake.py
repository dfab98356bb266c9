"""Taking images into a labelling dataset: checks (decodable, size limits, duplicates by content), safe unique
file names, and TIFF or high-bit-depth images stored as 8-bit PNG that browsers show as training sees it.

`ImageIntake` holds these methods of `LabelDataset` (storage.py); they write under its lock.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import secrets
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from multimask.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, to_uint8
from multimask.io import atomic_write_bytes

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_STEM = 80  # characters kept of an uploaded file's stem
DUPLICATE_NOTE = "already in the dataset: skipped"  # ends the message of an image added twice
FLUSH_EVERY = 50  # images added in a batch before index.json is rewritten
# Image formats taken in (those of multimask.cli.IMAGE_SUFFIXES), with their suffixes; the first is the default.
BROWSER_UNSUPPORTED = (".tif", ".tiff")  # accepted, but browsers cannot display them
FORMAT_SUFFIXES = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
}


class ImageIntake:
    """Adding images to a `LabelDataset`."""

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
            return read_image_file(path)

        added, errors = [], []
        for _, result in self._add_many((p.name, lambda p=p: read(p), None) for p in files):
            if isinstance(result, str):
                errors.append(result)
            else:
                added.append(result)
        return added, errors

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


def refuse_outside() -> bytes:
    raise ValueError("outside the folders this app may read: skipped")


def read_image_file(path: Path) -> bytes:
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


class DuplicateImageError(ValueError):
    """An image whose bytes the dataset holds already (under any name)."""
