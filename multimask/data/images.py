"""Reading image files, the one way every part of MultiMask does it (training, evaluation, predict, labelling).

OpenCV decodes the file with its EXIF orientation applied, as BGR (greyscale is repeated to 3 channels). Images
of more than 8 bits (12- and 16-bit microscopy, float TIFFs) are mapped to 8 bits by their own range
(`to_uint8`): the values between the image's 0.1st and 99.9th percentiles spread over 0..255. Keeping the top 8
bits instead left a 12-bit image stored in 16 bits nearly black; detectron2's own reader (PIL) clips a 16-bit
greyscale image to white.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 80_000_000
RANGE_PERCENTILES = (0.1, 99.9)  # of an image of more than 8 bits: what becomes 0 and 255


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit pixels of an image of any depth: uint8 as it is, bool as 0/255; deeper integer and float images
    mapped linearly from their RANGE_PERCENTILES (over all channels) to 0..255, or from their type's range
    (floats: 0..1) when those are equal (a flat image). ValueError for other types."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:  # the common case: a histogram and a lookup table, no float copy
        counts = np.cumsum(np.bincount(image.ravel(), minlength=65536))
        lo, hi = (int(np.searchsorted(counts, q / 100 * counts[-1])) for q in RANGE_PERCENTILES)
        if hi <= lo:
            lo, hi = 0, 65535
        lut = np.clip(np.rint((np.arange(65536) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        return lut[image]
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"unsupported pixel type {image.dtype}")
    data = np.nan_to_num(image.astype(np.float32))
    lo, hi = (float(v) for v in np.percentile(data, RANGE_PERCENTILES))
    if hi <= lo:
        lo, hi = (0.0, 1.0) if np.issubdtype(image.dtype, np.floating) else (0.0, float(np.iinfo(image.dtype).max))
    return np.clip(np.rint((data - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


class ImageTooLargeError(ValueError):
    """An image with more pixels than allowed; `width` and `height` say how large it is."""

    def __init__(self, path: str | Path, width: int, height: int, max_pixels: int):
        super().__init__(f"{path}: {width}x{height} is larger than {max_pixels} pixels")
        self.width, self.height = width, height


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding its pixels (PIL); None when PIL cannot
    tell (OpenCV may still read the file)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:  # more than twice PIL's own limit: larger than ours too
        return (2**31 - 1, 2**31 - 1)
    except Exception:  # PIL raises several kinds for files it does not know
        return None


def read_image_bgr(path: str | Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 BGR pixels of an image file; ValueError naming the file when it cannot be used.

    With `max_pixels`, a larger image is refused from its header, before its pixels are decoded (a 12000 x
    12000 upload cost 825 MB before the refusal); ImageTooLargeError then.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from e
    size = header_size(data.tobytes()) if max_pixels is not None and data.size else None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(path, size[0], size[1], max_pixels)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
    except cv2.error:
        img = None
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageTooLargeError(path, img.shape[1], img.shape[0], max_pixels)
    try:
        return to_uint8(img)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
