"""Feature export: embed_shards on tiny shards, the embed stage, bf16 path, and the 2-process launch."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from serve import serve

from fingerprint.cli import embed as embed_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.data.stream import StreamConfig, load_all
from fingerprint.embedding.embed import EmbedConfig, embed_shards, run_embed
from fingerprint.embedding.features import Features
from fingerprint.embedding.model_io import build_model, save_model
from fingerprint.embedding.models import ModelConfig
from launch import TWO_CPU_PROCESSES, cpu_env, two_machines

SIZE = 32


def make_dev_folder(root: Path, n_gen=10, n_used=3, n_not=3, seed=0) -> Path:
    """The 2023 dev layout with blocky random images; the first n_used generated are noisy copies of used."""
    rng = np.random.default_rng(seed)

    def img():
        return np.kron(rng.random((SIZE // 4, SIZE // 4)), np.ones((4, 4)))

    used = [img() for _ in range(n_used)]
    sets = {
        "used": used,
        "not_used": [img() for _ in range(n_not)],
        "generated": [np.clip(u + 0.02 * rng.standard_normal(u.shape), 0, 1) for u in used]
        + [img() for _ in range(n_gen - n_used)],
    }
    for name, arrays in sets.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays, 1):
            Image.fromarray((a * 255).astype(np.uint8)).save(root / name / f"{name}_{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    src = make_dev_folder(tmp / "dev")
    pack(src, tmp / "shards", image_size=SIZE, max_count=4)
    return tmp / "shards"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(image_size=SIZE, embed_dim=16)).eval()


@pytest.fixture
def fresh_accelerate():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_embed_shards_matches_direct_encode(shards, model):
    stats = {}
    feats = embed_shards(model, shards, batch_size=3, fmaps=True, stats=stats)
    assert feats.keys.tolist() == sorted(set(feats.keys.tolist())) and len(feats) == 16
    assert stats["world_size"] == 1 and stats["images"] == 16 and stats["duplicates"] == 0
    np.testing.assert_allclose(np.linalg.norm(feats.embeddings, axis=1), 1.0, atol=1e-5)
    assert feats.fmaps.dtype == np.float16 and feats.fmaps.shape == (16, 512, 1, 1)
    assert set(feats.roles.tolist()) == {"real", "generated"}
    assert feats.select(role="real", label="used").keys.tolist() == ["used_0001", "used_0002", "used_0003"]
    batch = load_all(shards, StreamConfig(image_size=SIZE))
    with torch.no_grad():
        emb, fmap = model.encode(batch["image"], role="real")
    rows = feats.rows_of(batch["key"])
    np.testing.assert_allclose(feats.embeddings[rows], emb.numpy(), atol=1e-5)
    np.testing.assert_allclose(feats.fmaps[rows].astype(np.float32), fmap.numpy(), rtol=2e-3, atol=2e-3)
    no_maps = embed_shards(model, shards, batch_size=16, fmaps=False)
    assert no_maps.fmaps is None
    np.testing.assert_allclose(no_maps.embeddings, feats.embeddings, atol=1e-5)


def test_embed_bf16_autocast_runs_on_cpu(shards, model, fresh_accelerate):
    ref = embed_shards(model, shards, batch_size=16)
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    feats = embed_shards(model, shards, batch_size=16, fmaps=True, accelerator=acc)
    assert feats.keys.tolist() == ref.keys.tolist() and feats.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats.embeddings, axis=1), 1.0, atol=1e-5)
    cos = (feats.embeddings * ref.embeddings).sum(axis=1)
    assert cos.min() > 0.98  # bf16 keeps ~3 significant digits


def test_embed_command_refuses_existing_output(shards, model, tmp_path, fresh_accelerate):
    save_model(model, tmp_path / "model", extra={})
    out = tmp_path / "f.npz"
    argv = [
        "--model",
        str(tmp_path / "model"),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--log",
        str(tmp_path / "log.jsonl"),
    ]
    assert embed_cli.main(argv) == 0
    feats = Features.load(out)
    assert feats.fmaps is None and len(feats) == 16
    assert feats.meta["model_sha256"] == json.loads((tmp_path / "model" / "model.json").read_text())["sha256"]
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["stage"] == "embed" and rec["world_size"] == 1 and rec["images"] == 16 and rec["images_per_s"] > 0
    assert embed_cli.main(argv) == 2
    assert (
        embed_cli.main(["--model", str(tmp_path / "nope"), "--shards", str(shards), "--out", str(tmp_path / "g.npz")])
        == 2
    )


@pytest.mark.slow
def test_two_processes_give_the_same_features(shards, model, tmp_path, fresh_accelerate):
    save_model(model, tmp_path / "model", extra={})
    common = ["--model", str(tmp_path / "model"), "--shards", str(shards), "--batch-size", "3", "--fmaps"]
    assert embed_cli.main([*common, "--out", str(tmp_path / "one.npz")]) == 0
    env = cpu_env()
    cmd = [
        *TWO_CPU_PROCESSES,
        "-m",
        "fingerprint",
        "embed",
        *common,
        "--threads",
        "1",
        "--out",
        str(tmp_path / "two.npz"),
        "--log",
        str(tmp_path / "log.jsonl"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["world_size"] == 2 and rec["distributed_type"].endswith("MULTI_CPU")
    assert len(rec["per_rank"]) == 2 and all(n > 0 for n in rec["per_rank"]) and sum(rec["per_rank"]) == 16
    one, two = Features.load(tmp_path / "one.npz"), Features.load(tmp_path / "two.npz")
    assert two.keys.tolist() == one.keys.tolist() and len(set(two.keys.tolist())) == len(two) == 16
    assert two.roles.tolist() == one.roles.tolist() and two.labels.tolist() == one.labels.tolist()
    np.testing.assert_allclose(two.embeddings, one.embeddings, atol=1e-5)
    np.testing.assert_allclose(two.fmaps.astype(np.float32), one.fmaps.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_run_embed_library_entry(shards, model, tmp_path, fresh_accelerate):
    save_model(model, tmp_path / "model", extra={})
    cfg = EmbedConfig(model=tmp_path / "model", shards=shards, out=tmp_path / "f.npz", fmaps=True, batch_size=5)
    stats = run_embed(cfg)
    assert stats["images"] == 16 and stats["world_size"] == 1
    feats = Features.load(cfg.out)
    assert feats.fmaps is not None and feats.meta["shards"] == str(shards) and feats.meta["fmaps"] is True
    with pytest.raises(FingerprintError, match=r"f.npz: already exists \(use embed.force"):
        run_embed(cfg)
    with pytest.raises(FingerprintError, match=r"embed.batch_size must be >= 1, got 0"):
        EmbedConfig(model=tmp_path / "model", shards=shards, out=tmp_path / "g.npz", batch_size=0)


# ----------------------------------------------------------------------------- per-shard output, resume, URLs, machines


def test_folder_output_one_part_per_shard_and_resume(shards, model, tmp_path, fresh_accelerate):
    """The default output: one memory-mappable part per shard, exactly embed_shards' rows; an interrupted export
    resumes, embedding only the shards whose part is missing."""
    save_model(model, tmp_path / "model", extra={})
    cfg = EmbedConfig(model=tmp_path / "model", shards=str(shards), out=tmp_path / "feats", fmaps=True, batch_size=5)
    stats = run_embed(cfg)
    n_shards = len(list(Path(shards).glob("*.tar")))
    parts = sorted(p.name for p in (tmp_path / "feats" / "parts").glob("*.json"))
    assert parts == [f"shard-{i:06d}.json" for i in range(n_shards)] and stats["resumed"] == 0
    got, ref = Features.load(tmp_path / "feats"), embed_shards(model, shards, batch_size=5, fmaps=True)
    assert got.keys.tolist() == ref.keys.tolist() and got.roles.tolist() == ref.roles.tolist()
    np.testing.assert_array_equal(got.embeddings, ref.embeddings)
    np.testing.assert_array_equal(got.fmaps, ref.fmaps)
    assert got.meta["model_sha256"] and got.meta["shards"] == str(shards) and got.meta["fmaps"] is True
    with pytest.raises(FingerprintError, match=r"feats: already exists \(use embed.force"):
        run_embed(cfg)
    (tmp_path / "feats" / "features.json").unlink()  # as if stopped before the last part was written
    (tmp_path / "feats" / "parts" / "shard-000002.json").unlink()
    again = run_embed(cfg)
    assert again["resumed"] == n_shards - 1 and again["images"] == 4 and again["unique"] == len(ref)
    resumed = Features.load(tmp_path / "feats")  # shard 2 alone in its batches: equal up to float rounding
    assert resumed.keys.tolist() == ref.keys.tolist()
    np.testing.assert_allclose(resumed.embeddings, ref.embeddings, atol=1e-5)
    np.testing.assert_allclose(resumed.fmaps.astype(np.float32), ref.fmaps.astype(np.float32), rtol=2e-3, atol=2e-3)
    (tmp_path / "feats" / "features.json").unlink()
    other = EmbedConfig(model=tmp_path / "model", shards=str(shards), out=tmp_path / "feats", image_size=64)
    with pytest.raises(FingerprintError, match=r"part shard-000000 was made with image_size=32, not 64"):
        run_embed(other)


def test_embed_reads_shards_by_http_url(shards, model, tmp_path, fresh_accelerate):
    save_model(model, tmp_path / "model", extra={})
    local = EmbedConfig(
        model=tmp_path / "model", shards=str(shards), out=tmp_path / "local", fmaps=True, batch_size=6, num_workers=2
    )
    run_embed(local)
    with serve(Path(shards).parent) as base:
        url = f"{base}/{Path(shards).name}/"
        stats = run_embed(EmbedConfig(model=tmp_path / "model", shards=url, out=tmp_path / "http", fmaps=True,
                                      batch_size=6, num_workers=2))  # fmt: skip
    assert stats["images"] == 16
    a, b = Features.load(tmp_path / "local"), Features.load(tmp_path / "http")
    assert a.keys.tolist() == b.keys.tolist()
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.fmaps, b.fmaps)
    assert b.meta["shards"] == url


@pytest.mark.slow
def test_two_machines_give_the_same_features(shards, model, tmp_path, fresh_accelerate):
    """Two "machines" on this host (machine rank 0 and 1, one process each): world size 2, each writes the parts
    of the shards it read, and the set equals the one-process export."""
    save_model(model, tmp_path / "model", extra={})
    common = ["--model", str(tmp_path / "model"), "--shards", str(shards), "--batch-size", "3", "--fmaps"]
    assert embed_cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    args = ["-m", "fingerprint", "embed", *common, "--threads", "1", "--out", str(tmp_path / "two"),
            "--log", str(tmp_path / "log.jsonl")]  # fmt: skip
    for r in two_machines(args, timeout=300):
        assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["world_size"] == 2 and rec["distributed_type"].endswith("MULTI_CPU")
    assert len(rec["per_rank"]) == 2 and all(n > 0 for n in rec["per_rank"]) and sum(rec["per_rank"]) == 16
    one, two = Features.load(tmp_path / "one"), Features.load(tmp_path / "two")
    assert two.keys.tolist() == one.keys.tolist() and two.labels.tolist() == one.labels.tolist()
    np.testing.assert_allclose(two.embeddings, one.embeddings, atol=1e-5)
    np.testing.assert_allclose(two.fmaps.astype(np.float32), one.fmaps.astype(np.float32), rtol=2e-3, atol=2e-3)
