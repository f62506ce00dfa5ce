"""Real images for a benchmark: any image converted to 8-bit gray; folders read with skips counted."""

import numpy as np
import pytest
from PIL import Image

from fingerprint.benchdata.params import resolve_params
from fingerprint.benchdata.realimages import folder_images, phantom_images, to_gray
from fingerprint.core.errors import FingerprintError


def test_to_gray_conversions():
    a, note = to_gray(Image.fromarray(np.full((20, 30, 3), 200, np.uint8)), 16)
    assert a.shape == (16, 16) and a.dtype == np.uint8 and "RGB to L" in note and "centre crop 30x20" in note
    b, note = to_gray(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 100), 16)
    assert b.min() == 0 and b.max() == 255 and "scaled to 0..255" in note
    c, note = to_gray(Image.fromarray(np.full((16, 16), 7, np.uint8)), 16)
    assert note is None and (c == 7).all()


def test_folder_and_phantom_sources(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(src / f"{i}.png")
    Image.fromarray(np.full((20, 20), 0, np.uint8)).save(src / "dup.png")  # the same pixels as 0.png
    (src / "broken.png").write_bytes(b"not an image")
    p = resolve_params("tiny", real_dir=src, dev_used=1, dev_not_used=1, test_used=1, test_not_used=1, image_size=64)
    real = folder_images(p)
    assert real.images.shape == (4, 64, 64) and len(set(real.sources)) == 4 and list(real.group) == [0, 1, 2, 3]
    assert len({a.tobytes() for a in real.images}) == 4  # the duplicate is never taken twice
    p = resolve_params("tiny", real_dir=src, dev_used=3, dev_not_used=1, test_used=1, test_not_used=1, image_size=64)
    with pytest.raises(FingerprintError, match=r"5 usable images \(1 unreadable, 1 duplicates skipped\), need 6"):
        folder_images(p)  # every file read: the skips are counted
    p = resolve_params("tiny", dev_used=3, dev_not_used=3, test_used=3, test_not_used=3)
    ph = phantom_images(p)
    assert ph.images.shape == (12, 64, 64) and ph.sources[0].startswith("phantom:patient=")
