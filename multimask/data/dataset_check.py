"""A dataset file's checks before a model is built: its metadata, and whether its image files exist."""

from __future__ import annotations

import logging
from pathlib import Path

from ..io import DatasetError, read_json
from .dataset_json import dataset_meta

logger = logging.getLogger(__name__)

LISTED = 3  # missing image names shown in a message


def check_dataset_file(json_file: str | Path, image_root: str | Path | None = None) -> dict:
    """Return `json_file`'s metadata (`dataset_meta`) after checking that its images exist under `image_root`
    (default: the file's folder).

    No image found (or none listed) raises DatasetError naming `json_file`; some missing logs a warning naming
    it, with the count and the first few names (the loader skips those images).
    """
    json_file = Path(json_file)
    data = read_json(json_file)
    meta = dataset_meta(data, json_file)
    root = Path(image_root) if image_root is not None else json_file.resolve().parent
    names = [
        img["file_name"] for img in data["images"] if isinstance(img, dict) and isinstance(img.get("file_name"), str)
    ]  # others: the loader's error
    missing = [n for n in names if not (root / n).is_file()]
    shown = ", ".join(missing[:LISTED]) + (", ..." if len(missing) > LISTED else "")
    if not names:
        raise DatasetError(f"{json_file}: lists no images")
    if len(missing) == len(names):
        raise DatasetError(
            f"{json_file}: none of its {len(names)} image files is under {root} ({shown}); image "
            "file names are relative to the image root (--image-root, default: the JSON's folder)"
        )
    if missing:
        logger.warning(
            "%s: %d of %d image files not found under %s, their images are skipped: %s",
            json_file,
            len(missing),
            len(names),
            root,
            shown,
        )
    return meta
