"""The shard format: reading back, truncation and corruption named by file, inspect and --verify."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fingerprint.cli import inspect as inspect_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.data import shards, sources
from fingerprint.data.pack import pack

SIZE = 16


def gray(seed: int, size: int = SIZE) -> np.ndarray:
    """A small non-constant uint8 image, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = 100 + 60 * np.sin(x / 3.0 + seed) * np.cos(y / 4.0)
    return np.clip(base + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def make_layout(root: Path, layout: str = "dev", n_gen: int = 8, n_real: int = 4) -> dict[str, np.ndarray]:
    """Write a tiny image set in one of the layouts; returns {key: pixels}."""
    folders = {
        "dev": [
            ("generated", "generated_{:04d}", n_gen),
            ("used", "used_{:04d}", n_real),
            ("not_used", "not_used_{:04d}", n_real),
        ],
        "seed": [
            ("generated", "generated_{:04d}", n_gen),
            ("real_used", "used_{:04d}", n_real),
            ("real_unused", "unused_{:04d}", n_real),
        ],
        "test": [("generated_1", "generated_{:05d}", n_gen), ("real_unknown_1", "real_unknown_{:04d}", 2 * n_real)],
    }[layout]
    pixels = {}
    s = 0
    for folder, pattern, n in folders:
        for i in range(1, n + 1):
            s += 1
            key = pattern.format(i)
            pixels[key] = gray(s)
            write_png(root / folder / f"{key}.png", pixels[key])
    return pixels


def read_back(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    got = {}
    for url in shards.shard_urls(out):
        for sample in shards.iter_shard(url):
            key, px, rec = shards.decode_sample(sample)
            assert key not in got
            got[key] = (px, rec)
    return got


def _rewrite_member(path: Path, key: str, ext: str, mutate) -> None:
    """Rewrite one member of a tar in place (same size), keeping everything else."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            if m.name == f"{key}.{ext}":
                data = mutate(data)
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_inspect_and_verify(tmp_path, capsys):
    make_layout(tmp_path / "dev", "dev")
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE, max_count=4, encoding="npy")
    assert inspect_cli.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "16 images in 4 shards" in text and "real/used 4" in text and "npy" in text
    assert inspect_cli.main([str(out), "--verify", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verify"] == {"ok": True, "checked": 16, "problems": []}

    bad = next(u for u in shards.shard_urls(out) if any(s["__key__"] == "used_0002" for s in shards.iter_shard(u)))

    def flip_pixel(data: bytes) -> bytes:
        arr = np.load(io.BytesIO(data))
        arr[3, 3] ^= 0xFF
        return sources.encode_pixels(arr, "npy")

    _rewrite_member(Path(bad), "used_0002", "npy", flip_pixel)
    assert inspect_cli.main([str(out), "--verify"]) == 1
    cap = capsys.readouterr()
    assert f"{bad}: sample used_0002: pixel_sha256 mismatch" in cap.out
    assert "error:" in cap.err and Path(bad).name in cap.err


def test_verify_png_source_bytes(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=2)
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE, encoding="png", max_count=100)
    url = shards.shard_urls(out)[0]
    # re-encode the PNG with other zlib settings: same pixels, other bytes
    _rewrite_member(Path(url), "used_0001", "png", lambda d: _reencode(d))
    res = shards.verify(out)
    assert not res["ok"]
    assert any("used_0001: sha256 of stored source bytes mismatch" in p for p in res["problems"])
    assert not any("pixel_sha256" in p for p in res["problems"])


def _reencode(data: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def test_reading_errors_name_the_file(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=1)
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE)
    with pytest.raises(FingerprintError, match="no manifest.json"):
        shards.read_manifest(tmp_path / "dev")
    with pytest.raises(FingerprintError, match="no .tar shards"):
        shards.shard_urls(tmp_path / "dev")
    url = shards.shard_urls(out)[0]
    Path(url).write_bytes(Path(url).read_bytes()[:700])
    with pytest.raises(FingerprintError, match=rf"{Path(url).name}: corrupt or truncated shard"):
        list(shards.iter_shard(url))
    with pytest.raises(FingerprintError, match="sample k: cannot decode image"):
        shards.decode_sample({"__key__": "k", "__url__": "s.tar", "json": b"{}", "npy": b"junk"})
    Path(url).unlink()
    with pytest.raises(FingerprintError, match="missing"):
        shards.shard_urls(out)


def _retar(src: Path, dst: Path, rename: dict[str, str] | None = None, cut_after_last: bool = False) -> None:
    """A copy of shard `src` with members renamed, or cut right after its last member (no end-of-archive marker)."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        last = tar.getmembers()[-1]
    if cut_after_last:
        dst.write_bytes(src.read_bytes()[: last.offset_data + -(-last.size // 512) * 512])
        return
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            m.name = (rename or {}).get(m.name, m.name)
            tar.addfile(m, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../../x.json", "/etc/x.json", "a/x.json", ".x.json"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=1)
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE, max_count=100)
    url = Path(shards.shard_urls(out)[0])
    with tarfile.open(url) as tar:
        first = tar.getmembers()[0].name
    _retar(url, tmp_path / "x.tar", {first: name})
    (tmp_path / "x.tar").replace(url)
    with pytest.raises(FingerprintError, match=f"unsafe member name {re.escape(repr(name))}"):
        list(shards.iter_shard(str(url)))
    result = shards.verify(out)
    assert not result["ok"] and any("unsafe member name" in p for p in result["problems"])


def test_a_shard_cut_at_a_member_boundary_is_refused_without_a_manifest(tmp_path):
    """The cut removes exactly the end-of-archive blocks: every member reads fine, only the marker is missing."""
    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=1)
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE, max_count=100)
    url = Path(shards.shard_urls(out)[0])
    lone = tmp_path / "lone" / "shard-000000.tar"
    lone.parent.mkdir()
    _retar(url, lone, cut_after_last=True)
    with tarfile.open(lone) as tar:  # the plain tar reader sees nothing wrong
        assert len(tar.getmembers()) == 8
    with pytest.raises(FingerprintError, match="no end-of-archive marker after its last member"):
        list(shards.iter_shard(str(lone)))
