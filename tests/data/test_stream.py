"""Streaming: pixels and keys round-trip, splits across ranks and workers, epochs, errors, augmentation."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from serve import serve
from test_shards import SIZE, make_layout

from fingerprint.core.errors import FingerprintError
from fingerprint.data import shards
from fingerprint.data.pack import pack
from fingerprint.data.stream import StreamConfig, augment_batch, dist_info, load_all, make_loader
from launch import TWO_CPU_PROCESSES, cpu_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """16 images (8 generated, 4 used, 4 not used) in 8 shards of 2."""
    root = tmp_path_factory.mktemp("stream")
    pixels = make_layout(root / "dev", "dev")
    pack(root / "dev", root / "out", image_size=SIZE, max_count=2, seed=0)
    return root / "out", pixels


def keys_of(loader) -> list[str]:
    return [k for b in loader for k in b["key"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_reproduces_every_pixel_and_key(packed, workers):
    out, pixels = packed
    seen = {}
    for batch in make_loader(out, StreamConfig(batch_size=5, num_workers=workers)):
        assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (1, SIZE, SIZE)
        assert len(batch["key"]) == len(batch["role"]) == len(batch["label"]) == batch["image"].shape[0]
        for k, img in zip(batch["key"], batch["image"]):
            assert k not in seen
            seen[k] = img
    assert set(seen) == set(pixels)
    for k, img in seen.items():
        np.testing.assert_array_equal((img[0] * 255).round().to(torch.uint8).numpy(), pixels[k])
    full = load_all(out, StreamConfig())
    assert full["key"] == sorted(pixels) and full["image"].shape == (16, 1, SIZE, SIZE)
    assert torch.equal(full["image"][full["key"].index("used_0003")], seen["used_0003"])


def test_select_roles_and_labels(packed):
    out, pixels = packed
    real = load_all(out, StreamConfig(roles=("real",)))
    assert real["key"] == sorted(k for k in pixels if not k.startswith("generated")) and set(real["role"]) == {"real"}
    used = load_all(out, StreamConfig(roles=("real",), labels=("used",)))
    assert used["key"] == [f"used_{i:04d}" for i in range(1, 5)] and set(used["label"]) == {"used"}
    gen = keys_of(make_loader(out, StreamConfig(roles=("generated",), batch_size=3)))
    assert sorted(gen) == sorted(k for k in pixels if k.startswith("generated"))
    with pytest.raises(FingerprintError, match="unknown role"):
        make_loader(out, StreamConfig(roles=("fake",)))


def test_two_ranks_two_workers_each_sample_once(packed):
    out, pixels = packed
    per_rank = []
    for rank in range(2):
        cfg = StreamConfig(batch_size=3, num_workers=2, shuffle=True, seed=5, epoch=1)
        per_rank.append(keys_of(make_loader(out, cfg, rank=rank, world_size=2)))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(pixels)


def test_shard_shuffle_follows_seed_and_epoch(packed):
    out, _ = packed

    def order(seed, epoch):
        return keys_of(make_loader(out, StreamConfig(batch_size=4, shuffle=True, seed=seed, epoch=epoch)))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and sorted(order(1, 0)) == sorted(order(1, 1))
    loader = make_loader(out, StreamConfig(batch_size=4, shuffle=True, seed=1))
    loader.set_epoch(1)
    assert keys_of(loader) == order(1, 1)
    buffered = keys_of(make_loader(out, StreamConfig(batch_size=4, shuffle=True, shuffle_buffer=6, seed=1)))
    assert sorted(buffered) == sorted(order(1, 0)) and buffered != order(1, 0)


def test_epoch_batches_equal_per_rank(tmp_path):
    make_layout(tmp_path / "dev", "dev", n_gen=9, n_real=3)  # 15 images in shards of 2: 8 shards, last holds 1
    pack(tmp_path / "dev", tmp_path / "out", image_size=SIZE, max_count=2)
    plain = [
        sum(1 for _ in make_loader(tmp_path / "out", StreamConfig(batch_size=2), rank=r, world_size=3))
        for r in range(3)
    ]
    assert len(set(plain)) > 1  # uneven without epoch_batches
    for workers in (0, 2):
        counts, seen = [], set()
        for r in range(3):
            cfg = StreamConfig(batch_size=2, num_workers=workers, shuffle=True, epoch_batches=7)
            batches = list(make_loader(tmp_path / "out", cfg, rank=r, world_size=3))
            counts.append(len(batches))
            assert all(len(b["key"]) == 2 for b in batches)  # no partial batch when repeating
            seen |= {k for b in batches for k in b["key"]}
        assert counts == [7, 7, 7]
        assert len(seen) == 15


def test_too_few_shards_is_a_clear_error(packed):
    out, _ = packed
    with pytest.raises(FingerprintError, match=r"8 shard\(s\).*fewer than 3 rank\(s\) x 3 worker\(s\)"):
        make_loader(out, StreamConfig(num_workers=3), rank=0, world_size=3)


def test_truncated_shard_named_or_skipped(tmp_path):
    make_layout(tmp_path / "dev", "dev")
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE, max_count=4)
    urls = shards.shard_urls(out)
    data = Path(urls[1]).read_bytes()
    Path(urls[1]).write_bytes(data[: len(data) // 2])
    with pytest.raises(FingerprintError, match=rf"{Path(urls[1]).name}: shard is \d+ bytes, manifest.json says"):
        make_loader(out, StreamConfig())
    skipped: dict[str, int] = {}
    batch = load_all(out, StreamConfig(on_error="skip"), skipped=skipped)
    assert len(batch["key"]) == 12 and skipped == {"shards": 1}  # the shard dropped on its size is counted
    loader = make_loader(out, StreamConfig(on_error="skip", batch_size=4))
    assert len(keys_of(loader)) == 12 and loader.skipped == {"shards": 1}
    loader = make_loader(out, StreamConfig(on_error="skip", batch_size=4), rank=1, world_size=2)
    assert loader.skipped == {}  # counted once, on rank 0
    # without a manifest to compare sizes, the tar reader names the shard
    lone = tmp_path / "lone.tar"
    lone.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(FingerprintError, match=r"lone.tar: (corrupt or truncated shard|holds)"):
        load_all([str(lone)], StreamConfig())
    skipped = {}
    load_all([str(lone)], StreamConfig(on_error="skip"), skipped=skipped)
    assert skipped == {"shards": 1}


def test_corrupt_sample_named_or_counted(tmp_path):

    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=1)
    out = tmp_path / "out"
    pack(tmp_path / "dev", out, image_size=SIZE, max_count=100, encoding="png")
    url = shards.shard_urls(out)[0]
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for m, d in members:
            if m.name == "used_0001.png":
                d = d[:40]
                m.size = len(d)
            tar.addfile(m, io.BytesIO(d))
    with pytest.raises(FingerprintError, match=r"bad.tar: sample used_0001: cannot decode image"):
        load_all([str(bad)], StreamConfig())
    for workers in (0, 1):
        loader = make_loader([str(bad)], StreamConfig(on_error="skip", num_workers=workers, batch_size=2))
        keys = keys_of(loader)
        assert len(keys) == len(set(keys)) == 3 and "used_0001" not in keys and loader.skipped == {"samples": 1}
    skipped: dict[str, int] = {}
    batch = load_all([str(bad)], StreamConfig(on_error="skip"), skipped=skipped)
    assert skipped == {"samples": 1} and "used_0001" not in batch["key"] and len(batch["key"]) == 3


def test_augment_seeded_and_in_range(packed):
    out, _ = packed

    def first(seed, augment=True):
        return next(iter(make_loader(out, StreamConfig(batch_size=8, augment=augment, seed=seed))))["image"]

    a, b, c, plain = first(1), first(1), first(2), first(1, False)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == plain.shape
    x = torch.rand(4, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, g, max_rotate=0, max_shift=0, max_scale=0, contrast=0, brightness=0)
    flipped = torch.isclose(y, x.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    assert bool((flipped | same).all())  # with everything else off only flips remain


def test_resize_on_the_fly(packed):
    out, _ = packed
    batch = load_all(out, StreamConfig(image_size=8, roles=("real",)))
    assert batch["image"].shape == (8, 1, 8, 8) and 0 <= float(batch["image"].min()) <= float(batch["image"].max()) <= 1


def test_dist_info(monkeypatch):
    assert dist_info(1, 4) == (1, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_info() == (1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(FingerprintError, match="bad rank"):
        dist_info()


@pytest.mark.slow
def test_real_two_process_launch(tmp_path):
    """2 gloo processes x 2 workers each: world size 2, each sample exactly once, equal batches with epoch_batches."""
    make_layout(tmp_path / "dev", "dev", n_gen=10, n_real=4)  # 18 images
    pack(tmp_path / "dev", tmp_path / "out", image_size=SIZE, max_count=2)  # 9 shards
    env = cpu_env()
    base = [
        *TWO_CPU_PROCESSES,
        str(ROOT / "tests" / "_dist_stream.py"),
        str(tmp_path / "out"),
    ]

    def launch(out: Path, *extra: str) -> list[dict]:
        proc = subprocess.run(
            base + [str(out), "--workers", "2", *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        recs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        assert [r["world_size"] for r in recs] == [2, 2] and [r["rank"] for r in recs] == [0, 1]
        assert all("MULTI_CPU" in r["distributed_type"] for r in recs)
        return recs

    recs = launch(tmp_path / "once")
    k0, k1 = recs[0]["keys"], recs[1]["keys"]
    assert len(k0) == len(set(k0)) and len(k1) == len(set(k1)) and not set(k0) & set(k1)
    assert sorted(k0 + k1) == sorted(make_layout(tmp_path / "again", "dev", n_gen=10, n_real=4))
    recs = launch(tmp_path / "equal", "--epoch-batches", "4")
    assert [r["batches"] for r in recs] == [4, 4]


@pytest.mark.parametrize("encoding", ["png", "npy"])
def test_stock_webdataset_reads_the_shards(tmp_path, encoding):
    """The shards are plain WebDataset: a stock pipeline decodes the same pixels and records."""

    pixels = make_layout(tmp_path / "dev", "dev", n_gen=3, n_real=2)
    pack(tmp_path / "dev", tmp_path / "out", image_size=SIZE, encoding=encoding, max_count=3)
    ds = wds.WebDataset(shards.shard_urls(tmp_path / "out"), shardshuffle=False, nodesplitter=wds.split_by_node).decode(
        "l8"
    )
    got = {s["__key__"]: s for s in ds}
    assert set(got) == set(pixels)
    for key, s in got.items():
        np.testing.assert_array_equal(s[encoding], pixels[key])
        assert s["json"]["key"] == key


# ----------------------------------------------------------------------------- shards by URL


def _same(a: dict, b: dict) -> None:
    assert a["key"] == b["key"] and a["role"] == b["role"] and a["label"] == b["label"]
    assert torch.equal(a["image"], b["image"])


def test_http_folder_url_streams_exactly_the_local_shards(packed):
    """A real HTTP server: folder URL (manifest beside the shards), node and worker split, equal batch counts."""
    out, pixels = packed
    local = load_all(out, StreamConfig())
    with serve(out.parent) as base:
        url = f"{base}/{out.name}/"
        found = shards.resolve(url)
        assert found.manifest == shards.read_manifest(out) and len(found.urls) == 8
        assert found.urls[0] == f"{base}/{out.name}/shard-000000.tar"
        _same(load_all(url, StreamConfig()), local)
        per_rank = [
            keys_of(
                make_loader(url, StreamConfig(batch_size=3, num_workers=2, shuffle=True, seed=5), rank=r, world_size=2)
            )
            for r in range(2)
        ]
        assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == sorted(pixels)
        local_ranks = [
            keys_of(
                make_loader(out, StreamConfig(batch_size=3, num_workers=2, shuffle=True, seed=5), rank=r, world_size=2)
            )
            for r in range(2)
        ]
        assert per_rank == local_ranks
        cfg = StreamConfig(batch_size=2, shuffle=True, epoch_batches=5)
        assert [len(list(make_loader(url, cfg, rank=r, world_size=3))) for r in range(3)] == [5, 5, 5]
        pattern = f"{base}/{out.name}/shard-{{000000..000007}}.tar"
        assert shards.resolve(pattern).manifest is not None
        _same(load_all(pattern, StreamConfig()), local)


def test_pipe_and_brace_pattern_urls(packed):
    out, _ = packed
    local = load_all(out, StreamConfig())
    piped = f"pipe:cat {out}/shard-{{000000..000007}}.tar"
    found = shards.resolve(piped)
    assert found.urls[1] == f"pipe:cat {out}/shard-000001.tar" and found.manifest is not None
    assert found.entry(found.urls[1])["name"] == "shard-000001.tar"
    _same(load_all(piped, StreamConfig()), local)
    _same(load_all(f"{out}/shard-{{000000..000007}}.tar", StreamConfig()), local)
    assert keys_of(make_loader(piped, StreamConfig(num_workers=2, batch_size=4))) != []
    with pytest.raises(FingerprintError, match=r"shard-000008.tar: shard not found"):
        load_all(f"{out}/shard-{{000008..000009}}.tar", StreamConfig())


def test_truncated_and_changed_shards_over_http_are_named(tmp_path):
    """Streamed shards are checked as they end (no seeking): truncation, changed bytes, missing shards."""
    make_layout(tmp_path / "dev", "dev")
    out = tmp_path / "site" / "dev"
    pack(tmp_path / "dev", out, image_size=SIZE, max_count=4)
    urls = shards.shard_urls(out)
    data = Path(urls[1]).read_bytes()
    Path(urls[1]).write_bytes(data[: len(data) - 2048])  # the manifest still lists the full size
    with serve(tmp_path / "site") as base:
        url = f"{base}/dev/shard-000001.tar"
        with pytest.raises(
            FingerprintError, match=rf"^{url}: (shard is \d+ bytes, manifest.json says|corrupt or trunc)"
        ):
            load_all(f"{base}/dev", StreamConfig())
        skipped: dict[str, int] = {}
        batch = load_all(f"{base}/dev", StreamConfig(on_error="skip"), skipped=skipped)
        assert skipped == {"shards": 1} and len(batch["key"]) >= 12
        changed = bytearray(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            pixel = next(m for m in tar.getmembers() if m.name.endswith(".npy")).offset_data + 200
        changed[pixel] ^= 0xFF  # one pixel: same size, still decodes, another sha256
        Path(urls[1]).write_bytes(bytes(changed))
        with pytest.raises(FingerprintError, match=rf"^{url}: shard sha256 differs from manifest.json$"):
            load_all(f"{base}/dev", StreamConfig())
        assert len(load_all(f"{base}/dev", StreamConfig(checksum=False))["key"]) == 16
        Path(urls[1]).unlink()
        with pytest.raises(FingerprintError, match=rf"^{url}: corrupt or truncated shard \(reader command exited"):
            load_all(f"{base}/dev", StreamConfig())
        with pytest.raises(FingerprintError, match=rf"^{base}/nothing/manifest.json: cannot read"):
            load_all(f"{base}/nothing", StreamConfig())


def test_collate_mixes_8_and_16_bit_images_on_one_scale():
    from fingerprint.data.stream import collate, to_float

    a = np.full((4, 4), 255, np.uint8)
    b = np.full((4, 4), 65535 // 2, np.uint16)
    batch = to_float(collate([{"key": k, "pixels": p, "role": "real", "label": "used", "shard": "s"}
                              for k, p in (("a", a), ("b", b))]))  # fmt: skip
    x = batch["image"]
    assert x.dtype == torch.float32 and x.shape == (2, 1, 4, 4)
    assert float(x[0].max()) == 1.0 and abs(float(x[1].max()) - 0.5) < 1e-4
