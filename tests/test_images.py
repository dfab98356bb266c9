"""Images of more than 8 bits: mapped to 8 bits by their own range, the same way everywhere."""

import cv2
import numpy as np
import pytest

from app.views.predict import to_rgb
from multimask.data.images import RANGE_PERCENTILES, ImageTooLargeError, read_image_bgr, to_uint8


def _twelve_bit(h=60, w=80):
    """A 12-bit microscopy-like image stored in 16 bits: values 0..4095, a bright spot and two hot pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = (xx * 3000 // w + 200).astype(np.uint16)
    img[20:30, 30:40] = 4000
    img[0, 0] = img[0, 1] = 65535  # hot pixels must not set the scale
    return img


def test_a_12_bit_image_uses_the_whole_8_bit_range(tmp_path):
    path = tmp_path / "cells.png"
    raw = _twelve_bit()
    cv2.imwrite(str(path), raw)
    bgr = read_image_bgr(path)
    assert bgr.dtype == np.uint8 and bgr.shape == (60, 80, 3)
    # The spot (4000 of 4095) is white, not 4000 >> 8 = 15 as the top 8 bits gave; the ramp spans the range.
    assert bgr[25, 35, 0] == 255 and bgr[5, 0, 0] == 0 and bgr[5, 79, 0] > 190
    # The same pixels in training (the mapper reads with read_image_bgr), predict (files and arrays).
    assert np.array_equal(to_rgb(str(path)), bgr[:, :, ::-1])
    assert np.array_equal(to_rgb(raw), np.repeat(to_uint8(raw)[:, :, None], 3, axis=2))


def test_the_range_is_the_images_own_percentiles():
    raw = np.arange(10_000, dtype=np.uint16).reshape(100, 100) + 1000
    lo, hi = np.percentile(raw, RANGE_PERCENTILES)
    out = to_uint8(raw)
    assert out[raw <= lo].max() == 0 and out[raw >= hi].min() == 255
    mid = raw == 6000
    assert abs(int(out[mid][0]) - round((6000 - lo) * 255 / (hi - lo))) <= 1


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_a_flat_image_keeps_its_level_in_its_types_range(dtype):
    level = 0.5 if dtype == np.float32 else {np.uint16: 32768, np.int32: 2**30}[dtype]
    out = to_uint8(np.full((4, 4), level, dtype))
    assert out.dtype == np.uint8 and 126 <= out.max() == out.min() <= 129


def test_eight_bit_images_are_untouched_and_odd_types_are_refused():
    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    assert to_uint8(img) is img
    with pytest.raises(ValueError, match="unsupported pixel type complex"):
        to_uint8(np.zeros((2, 2), np.complex64))


def test_the_label_store_keeps_what_the_editor_can_show_as_training_sees_it(tmp_path):
    from app.core.datasets.storage import LabelStore

    raw = _twelve_bit()
    path = tmp_path / "cells.png"
    cv2.imwrite(str(path), raw)
    folder = tmp_path / "incoming"
    folder.mkdir()
    cv2.imwrite(str(folder / "cells16.tif"), raw[::-1])  # another image (the same one would be a duplicate)
    ds = LabelStore(tmp_path / "data").create("cells", ["cell"])
    uploaded = ds.add_image_bytes("cells.png", path.read_bytes())
    (from_folder,), errors = ds.add_images_from_folder(folder, tmp_path)
    assert errors == []
    for entry, original in ((uploaded, path), (from_folder, folder / "cells16.tif")):
        stored = ds.image_path(entry["id"])
        shown = cv2.imread(str(stored), cv2.IMREAD_UNCHANGED)
        assert stored.suffix == ".png" and shown.dtype == np.uint8, "a browser shows 8 bits"
        assert np.array_equal(shown, read_image_bgr(original)), "the pixels training reads from the original"


def test_a_huge_image_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    from app.views.predict import InputError
    from tests.test_label_store import _huge_png_header

    path = tmp_path / "huge.png"
    path.write_bytes(_huge_png_header(12000, 12000))
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageTooLargeError, match=r"huge\.png: 12000x12000 is larger than") as e:
        read_image_bgr(path)
    assert (e.value.width, e.value.height) == (12000, 12000)
    with pytest.raises(InputError, match=r"The image is 12000x12000 \(144,000,000 pixels\), over the limit"):
        to_rgb(str(path))
