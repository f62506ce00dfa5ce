"""Input sources: unique dot-free keys, layout detection, image conversion to 8-bit gray."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_shards import gray, make_layout

from fingerprint.core.errors import FingerprintError
from fingerprint.data import sources
from fingerprint.core import intensity


def test_make_keys_unique_and_dot_free():
    imgs = [
        sources.SourceImage(Path("/x"), rel, "generated", "unknown")
        for rel in ["a/k.png", "b/k.png", "c/k_2.png", "d/k.png", "e/a.b.c.png"]
    ]
    keys = sources.make_keys(imgs)
    assert keys == ["k", "k_3", "k_2", "k_4", "a_b_c"]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)


def _img(rel: str, role: str) -> sources.SourceImage:
    return sources.SourceImage(Path("/in") / rel, rel, role, "unknown")


def test_real_images_keep_their_names_or_fail_naming_both_files():
    """A real image's key is its figure id: never renamed; a collision or an unusable name is an error."""
    keys = sources.make_keys([_img("generated_1/g.png", "generated"), _img("real_unknown_1/r_1.png", "real")])
    assert keys == ["g", "r_1"]
    collide = [
        _img("generated_1/real_unknown_0001.png", "generated"),
        _img("real_unknown_1/real_unknown_0001.png", "real"),
    ]
    with pytest.raises(FingerprintError) as e:
        sources.make_keys(collide)
    msg = str(e.value)
    assert "/in/generated_1/real_unknown_0001.png" in msg and "/in/real_unknown_1/real_unknown_0001.png" in msg
    with pytest.raises(FingerprintError, match=r"/in/b/x.png: same name as /in/a/x.png"):
        sources.make_keys([_img("a/x.png", "real"), _img("b/x.png", "real")])
    for bad in ("a,b.png", "a.b.png", "a b.png"):
        with pytest.raises(FingerprintError, match="cannot hold dots, commas, quotes or whitespace"):
            sources.make_keys([_img(bad, "real")])


def test_find_sources_lists_roles_and_labels(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=3, n_real=2)
    layout, images = sources.find_sources(tmp_path / "dev")
    assert layout == "dev" and len(images) == 7
    assert [i.rel for i in images] == sorted(i.rel for i in images)
    assert {(i.role, i.label) for i in images} == {("generated", "unknown"), ("real", "used"), ("real", "not_used")}


def test_load_image_converts_and_reports(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.stack([gray(1, 24)] * 3, -1)).save(buf, format="PNG")
    px, info, unchanged = sources.load_image(buf.getvalue(), 16)
    assert px.shape == (16, 16) and px.dtype == np.uint8 and not unchanged
    assert info["orig_mode"] == "RGB" and "RGB->L" in info["converted"]
    buf = io.BytesIO()
    Image.fromarray(gray(2, 16)).save(buf, format="PNG")
    px, info, unchanged = sources.load_image(buf.getvalue(), 16)
    assert unchanged and info["converted"] is None and np.array_equal(px, gray(2, 16))
    assert sources.encode_pixels(px, "npy")[:6] == b"\x93NUMPY"
    assert sources.pixel_sha256(px) == sources.pixel_sha256(px.copy())


def _png16(values: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format=fmt)
    return buf.getvalue()


def test_wide_images_keep_their_levels_by_their_own_depth():
    """12-bit values in a 16-bit container: scaled by 4095 and stored at 16 bits, every level kept."""
    ct = (np.arange(64 * 64) % 4081).reshape(64, 64)
    for fmt in ("PNG", "TIFF"):
        px, info, unchanged = sources.load_image(_png16(ct, fmt), 64)
        assert px.dtype == np.uint16 and len(np.unique(px)) == 4081 and not unchanged
        assert info["bit_depth"] == 12 and info["stored_bits"] == 16 and "12-bit (value/4095)" in info["converted"]
        np.testing.assert_array_equal(px, np.rint(ct * 65535 / 4095).astype(np.uint16))
    px8, info, _ = sources.load_image(_png16(ct), 64, store_bits=8)
    assert px8.dtype == np.uint8 and len(np.unique(px8)) == 255 and px8.max() == 254  # 4080/4095 of 255
    full, info, _ = sources.load_image(_png16(ct), 64, intensity=sources.Intensity("full"))
    assert info["bit_depth"] == 12 and full.max() == 4080  # value/65535: the container's range
    win, info, _ = sources.load_image(_png16(ct), 64, intensity=sources.Intensity(window=(1000.0, 2000.0)))
    assert win.min() == 0 and win.max() == 65535 and len(np.unique(win)) == 1001 and "window" in info["converted"]
    assert [intensity.significant_depth(v) for v in (256, 1023, 1024, 4095, 4096, 40000, 70000)] == [
        10, 10, 12, 12, 14, 16, 16]  # fmt: skip
    small, _, _ = sources.load_image(_png16(ct), 16)  # resized in 16 bits, not after quantising to 8
    assert small.dtype == np.uint16 and len(np.unique(small)) > 200


def test_parse_window_and_too_large():
    assert sources.parse_window("-160, 240") == (-160.0, 240.0) and sources.parse_window(None) is None
    for bad in ("1", "5,5", "a,b", "0,inf", "3,1"):
        with pytest.raises(ValueError):
            sources.parse_window(bad)
    data = _png16(np.zeros((100, 100)))
    with pytest.raises(sources.TooLarge, match="100x100 I;16 needs about 0 MiB"):
        sources.load_image(data, 16, max_bytes=1000)
    reason = sources.unreadable_reason(sources.TooLarge("x"))
    assert reason == "too large: x" and sources.unreadable_reason(MemoryError()) == "out of memory while decoding"


def test_links_are_followed_listed_or_refused(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=1)
    outside = tmp_path / "elsewhere"
    (tmp_path / "dev" / "generated").rename(outside)
    (tmp_path / "dev" / "generated").symlink_to(outside, target_is_directory=True)
    (tmp_path / "dev" / "used" / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "dev" / "used" / "loop.png").symlink_to(tmp_path / "dev" / "used" / "loop.png")
    (outside / "again").symlink_to(outside, target_is_directory=True)  # a folder cycle is walked once
    _, images = sources.find_sources(tmp_path / "dev")
    rels = {i.rel: i.problem for i in images}
    assert rels["generated/generated_0001.png"] is None and len([r for r in rels if r.startswith("generated/")]) == 2
    assert "broken link" in rels["used/gone.png"] and "cannot be followed" in rels["used/loop.png"]
    assert all(i.path.is_absolute() and str(i.path).startswith(str(tmp_path / "dev")) for i in images)
    _, images = sources.find_sources(tmp_path / "dev", links="inside")
    refused = [i for i in images if i.problem and "outside" in i.problem]
    assert [i.rel for i in refused] == ["generated"]
    with pytest.raises(FingerprintError, match="unknown links rule"):
        sources.find_sources(tmp_path / "dev", links="sometimes")


def test_quotes_cannot_be_figure_ids():
    with pytest.raises(FingerprintError, match="quotes"):
        sources.make_keys([_img('a"b.png', "real")])
    assert sources.make_keys([_img('g"1.png', "generated")]) == ["g_1"]
