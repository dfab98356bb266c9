"""Reading image files, the one way every part of MultiMask does it (training, evaluation, predict, labelling).

OpenCV decodes the file with its EXIF orientation applied and converts it to 8-bit BGR: greyscale is repeated
to 3 channels, 16-bit images keep their top 8 bits. detectron2's own reader (PIL) clips a 16-bit greyscale
image to white instead, so a model trained through it never saw the pictures it was shown in the app.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 80_000_000


def read_image_bgr(path: str | Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 BGR pixels of an image file; ValueError naming the file when it cannot be used."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from e
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:
        img = None
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ValueError(f"{path}: {img.shape[1]}x{img.shape[0]} is larger than {max_pixels} pixels")
    return img
