"""Packing: layouts, keys, conversion, skips, determinism, atomic output, shard sizes, the pack stage."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_shards import SIZE, gray, make_layout, read_back, write_png

import fingerprint.data.pack as packing
from fingerprint.cli import inspect as inspect_cli
from fingerprint.cli import pack as pack_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json, sha256_file
from fingerprint.data import shards, sources
from fingerprint.data.pack import PackConfig, pack, parse_size, run_pack


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_pack_roundtrip_every_pixel_and_key(tmp_path, encoding):
    pixels = make_layout(tmp_path / "dev", "dev")
    man = pack(tmp_path / "dev", tmp_path / "out", image_size=SIZE, encoding=encoding, max_count=5)
    got = read_back(tmp_path / "out")
    assert set(got) == set(pixels)
    for key, (px, rec) in got.items():
        np.testing.assert_array_equal(px, pixels[key])
        assert rec["key"] == key and rec["size"] == [SIZE, SIZE] and rec["converted"] is None
        assert rec["pixel_sha256"] == sources.pixel_sha256(pixels[key])
        assert rec["path"].endswith(f"{key}.png") and not Path(rec["path"]).is_absolute()
    assert got["used_0001"][1]["role"] == "real" and got["used_0001"][1]["label"] == "used"
    assert got["not_used_0002"][1]["label"] == "not_used"
    assert got["generated_0003"][1]["role"] == "generated"
    assert man["counts"]["role_label"] == {"real/used": 4, "real/not_used": 4, "generated/unknown": 8}
    assert man["encoding"] == encoding and man["count"] == 16
    assert [s["count"] for s in man["shards"]] == [5, 5, 5, 1]
    assert sum(sum(s["groups"].values()) for s in man["shards"]) == 16
    assert read_json(tmp_path / "out" / "manifest.json") == man
    if encoding == "png":  # unchanged 8-bit gray PNGs are stored byte for byte
        src = (tmp_path / "dev" / "used" / "used_0001.png").read_bytes()
        raw = next(
            s for u in shards.shard_urls(tmp_path / "out") for s in shards.iter_shard(u) if s["__key__"] == "used_0001"
        )
        assert raw["png"] == src


def test_shards_mix_roles_and_order_follows_seed(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=12, n_real=6)
    pack(tmp_path / "dev", tmp_path / "a", image_size=SIZE, max_count=6, seed=0)
    pack(tmp_path / "dev", tmp_path / "b", image_size=SIZE, max_count=6, seed=1)
    order = {d: [s["__key__"] for u in shards.shard_urls(tmp_path / d) for s in shards.iter_shard(u)] for d in "ab"}
    assert sorted(order["a"]) == sorted(order["b"]) and order["a"] != order["b"]
    assert order["a"] != sorted(order["a"])
    man = shards.read_manifest(tmp_path / "a")
    assert sum(len(s["groups"]) > 1 for s in man["shards"]) >= 2


@pytest.mark.parametrize("layout", ["dev", "test", "seed"])
def test_layouts_detected(tmp_path, layout):
    pixels = make_layout(tmp_path / "src", layout)
    assert sources.detect_layout(tmp_path / "src") == layout
    man = pack(tmp_path / "src", tmp_path / "out", image_size=SIZE)
    assert man["layout"] == layout
    got = read_back(tmp_path / "out")
    assert set(got) == set(pixels)
    if layout == "test":
        assert got["generated_00001"][1]["role"] == "generated"
        assert got["real_unknown_0001"][1]["label"] == "unknown" and got["real_unknown_0001"][1]["role"] == "real"
    if layout == "seed":
        assert got["used_0001"][1]["label"] == "used" and got["unused_0001"][1]["label"] == "not_used"


def test_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "stuff").mkdir()
    with pytest.raises(FingerprintError, match="no known layout"):
        sources.detect_layout(tmp_path / "empty")
    with pytest.raises(FingerprintError, match="not found"):
        sources.detect_layout(tmp_path / "missing")
    make_layout(tmp_path / "both", "dev")
    make_layout(tmp_path / "both", "seed")
    with pytest.raises(FingerprintError, match="several layouts"):
        sources.detect_layout(tmp_path / "both")
    man = pack(tmp_path / "both", tmp_path / "out", layout="seed", image_size=SIZE)
    assert man["layout"] == "seed"
    rc = pack_cli.main([str(tmp_path / "empty"), str(tmp_path / "o2")])
    assert rc == 2 and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_layout(tmp_path, fmt):
    src = tmp_path / "src"
    rows = [
        ("a/x.png", "real", "used"),
        ("a/y.png", "real", "not_used"),
        ("b/w.png", "generated", ""),
        ("c/w.png", "generated", "unknown"),
        ("b/z.v1.png", "generated", "unknown"),
    ]
    pix = {}
    for i, (p, _, _) in enumerate(rows):
        pix[p] = gray(i)
        write_png(src / p, pix[p])
    if fmt == "csv":
        text = "path,role,label\n" + "".join(f"{p},{r},{lab}\n" for p, r, lab in rows)
    else:
        text = "".join(json.dumps({"path": p, "role": r, "label": lab or None}) + "\n" for p, r, lab in rows)
    (src / f"manifest.{fmt}").write_text(text)
    assert sources.detect_layout(src) == "manifest"
    man = pack(src, tmp_path / "out", image_size=SIZE)
    got = read_back(tmp_path / "out")
    # generated images: a repeated stem 'w' keeps it on the first path, the second gets w_2; dots become
    # underscores; both renames are listed in the manifest (real images keep their names: test_sources)
    assert set(got) == {"x", "w", "w_2", "y", "z_v1"}
    assert got["w"][1]["path"] == "b/w.png" and got["w_2"][1]["path"] == "c/w.png"
    assert got["w"][1]["label"] == "unknown"
    np.testing.assert_array_equal(got["z_v1"][0], pix["b/z.v1.png"])
    assert man["layout"] == "manifest"
    assert man["renamed"] == [{"path": "b/z.v1.png", "key": "z_v1"}, {"path": "c/w.png", "key": "w_2"}]
    # the same file given with --manifest from elsewhere
    man2 = pack(tmp_path / "elsewhere", tmp_path / "out2", image_size=SIZE, manifest=src / f"manifest.{fmt}")
    assert man2["count"] == 5


def test_manifest_errors(tmp_path):
    src = tmp_path / "src"
    write_png(src / "a.png", gray(0))
    (src / "manifest.csv").write_text("path,role,label\na.png,realish,used\n")
    with pytest.raises(FingerprintError, match=r"manifest.csv: line 2: role 'realish'"):
        pack(src, tmp_path / "out")
    (src / "manifest.csv").write_text("path,role,label\n../a.png,real,used\n")
    with pytest.raises(FingerprintError, match="leaves the manifest's folder"):
        pack(src, tmp_path / "out")
    (src / "manifest.csv").write_text("file,role\na.png,real\n")
    with pytest.raises(FingerprintError, match="header with columns path,role,label"):
        pack(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_conversion_rgb_16bit_and_size(tmp_path):
    src = tmp_path / "dev"
    make_layout(src, "dev", n_gen=2, n_real=1)
    rgb = np.stack([gray(1, 24), gray(2, 24), gray(3, 24)], -1)
    write_png(src / "used" / "rgb.png", rgb)
    g16 = gray(4).astype(np.uint16) * 257
    Image.fromarray(g16).save(src / "used" / "deep.png")
    Image.fromarray(gray(5, 32)).save(src / "not_used" / "big.tif")
    man = pack(src, tmp_path / "out", image_size=SIZE, encoding="png")
    got = read_back(tmp_path / "out")
    assert man["converted"] == 3
    px, rec = got["rgb"]
    assert px.shape == (SIZE, SIZE) and rec["orig_size"] == [24, 24] and rec["orig_mode"] == "RGB"
    assert "RGB->L" in rec["converted"] and "24x24->16x16" in rec["converted"]
    px, rec = got["deep"]
    np.testing.assert_array_equal(px, g16)  # a full-range 16-bit image is stored at 16 bits, unchanged
    assert rec["orig_mode"].startswith("I;16") and "16-bit (value/65535)" in rec["converted"]
    assert rec["bit_depth"] == 16 and rec["stored_bits"] == 16
    assert man["intensity"] == {"rule": "depth", "stored_bits": 16, "depths": {"8": 6, "16": 1}, "mixed": True}
    pack(src, tmp_path / "out8", image_size=SIZE, encoding="png", bits=8)
    np.testing.assert_array_equal(read_back(tmp_path / "out8")["deep"][0], gray(4))  # v*257/257 is exact
    px, rec = got["big"]
    assert rec["orig_size"] == [32, 32] and "TIFF" in rec["converted"]
    assert rec["pixel_sha256"] == sources.pixel_sha256(px)
    assert rec["sha256"] == sha256_file(src / "not_used" / "big.tif")
    assert inspect_cli.main([str(tmp_path / "out"), "--verify"]) == 0


def test_corrupt_image_skipped_and_counted_or_strict(tmp_path, caplog, capsys):
    src = tmp_path / "dev"
    make_layout(src, "dev", n_gen=3, n_real=2)
    (src / "used" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (src / "used" / "used_0001.png").read_bytes()
    (src / "not_used" / "cut.png").write_bytes(good[: len(good) // 2])
    man = pack(src, tmp_path / "out", image_size=SIZE)
    assert man["n_skipped"] == 2 and man["count"] == 7
    assert {s["path"] for s in man["skipped"]} == {"used/broken.png", "not_used/cut.png"}
    assert "broken.png" in caplog.text and "cut.png" in caplog.text
    rc = pack_cli.main([str(src), str(tmp_path / "strict"), "--strict", "--image-size", str(SIZE)])
    err = capsys.readouterr().err
    assert rc == 2 and "unreadable image" in err and ("broken.png" in err or "cut.png" in err)
    assert not (tmp_path / "strict").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_same_seed_byte_identical(tmp_path):
    src = tmp_path / "dev"
    make_layout(src, "dev")
    write_png(src / "used" / "rgb.png", np.stack([gray(7)] * 3, -1))
    for enc in ("png", "npy"):
        a = pack(src, tmp_path / f"a_{enc}", image_size=SIZE, encoding=enc, max_count=4, seed=3)
        b = pack(src, tmp_path / f"b_{enc}", image_size=SIZE, encoding=enc, max_count=4, seed=3)
        assert a == b
        for s in a["shards"]:
            assert (tmp_path / f"a_{enc}" / s["name"]).read_bytes() == (tmp_path / f"b_{enc}" / s["name"]).read_bytes()
        with tarfile.open(tmp_path / f"a_{enc}" / a["shards"][0]["name"]) as tar:
            assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar.getmembers()} == {(0, 0, 0, "fingerprint")}


def test_existing_output_refused_unless_force(tmp_path, capsys):
    src = tmp_path / "dev"
    make_layout(src, "dev", n_gen=2, n_real=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert pack_cli.main([str(src), str(out), "--image-size", str(SIZE)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert pack_cli.main([str(src), str(out), "--image-size", str(SIZE), "--force"]) == 0
    assert not (out / "keep.txt").exists() and shards.read_manifest(out)["count"] == 4
    with pytest.raises(FingerprintError, match="must not be the input"):
        pack(src, tmp_path, force=True)


def test_interrupted_pack_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "dev"
    make_layout(src, "dev")
    calls = {"n": 0}
    real = packing.load_image

    def flaky(data, size, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(data, size, **kw)

    monkeypatch.setattr(packing, "load_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        pack(src, tmp_path / "out", image_size=SIZE, max_count=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev"]


def test_max_size_splits_shards(tmp_path):
    make_layout(tmp_path / "dev", "dev")
    man = pack(tmp_path / "dev", tmp_path / "out", image_size=SIZE, encoding="npy", max_size=700)
    # one npy sample is ~384 bytes + json; a shard closes once its payload reaches 700 bytes
    assert len(man["shards"]) > 2 and all(s["count"] <= 2 for s in man["shards"])
    assert parse_size("256M") == 256 << 20 and parse_size("1.5k") == 1536 and parse_size("99") == 99


def test_run_pack_and_inspect_library_entries(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=4, n_real=2)
    log = tmp_path / "log.jsonl"
    man = run_pack(PackConfig(src=tmp_path / "dev", out=tmp_path / "out", image_size=SIZE, log=log))
    assert man["count"] == 8 and man["seconds"] > 0 and "seconds" not in read_json(tmp_path / "out" / "manifest.json")
    assert json.loads(log.read_text())["stage"] == "pack"
    summary = shards.run_inspect(shards.InspectConfig(shards=tmp_path / "out", verify=True))
    assert summary["count"] == 8 and summary["verify"]["ok"] and summary["verify"]["checked"] == 8
    with pytest.raises(FingerprintError, match=r"out: already exists \(use pack.force"):
        run_pack(PackConfig(src=tmp_path / "dev", out=tmp_path / "out"))
    with pytest.raises(FingerprintError, match=r"pack.image_size must be >= 8, got 4"):
        PackConfig(src=tmp_path / "dev", out=tmp_path / "o", image_size=4)


def test_default_size_is_the_images_own(tmp_path):
    """Without pack.image_size, images keep their own size (no upscaling on disk); a chosen size is honoured."""
    src = make_layout(tmp_path / "dev", "dev", n_gen=3, n_real=2)
    man = pack(tmp_path / "dev", tmp_path / "out", encoding="png")
    got = read_back(tmp_path / "out")
    assert man["image_size"] == SIZE and set(got) == set(src)
    assert all(np.array_equal(got[k][0], px) for k, px in src.items())
    assert pack(tmp_path / "dev", tmp_path / "big", image_size=2 * SIZE)["image_size"] == 2 * SIZE
    assert {v[0].shape for v in read_back(tmp_path / "big").values()} == {(2 * SIZE, 2 * SIZE)}
