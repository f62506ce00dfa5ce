"""Input sources: unique dot-free keys, layout detection, image conversion to 8-bit gray."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_shards import gray, make_layout

from fingerprint import sources
from fingerprint.utils import FingerprintError


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
