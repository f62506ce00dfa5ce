"""Feature export: Features files, embed_shards on tiny shards, bf16 path, and the 2-process launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fingerprint.cli import embed as embed_cli
from fingerprint.embed import Features, embed_shards, merge
from fingerprint.models import ModelConfig, build_model, save_model
from fingerprint.shards import pack
from fingerprint.stream import StreamConfig, load_all
from fingerprint.utils import FingerprintError

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
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_features_roundtrip_select_merge(tmp_path):
    f = Features(
        ["b", "a"], ["real", "generated"], ["used", "unknown"], np.eye(2, 3), np.ones((2, 4, 2, 2)), {"image_size": 32}
    )
    path = f.save(tmp_path / "f.npz")
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"keys", "roles", "labels", "embeddings", "fmaps", "meta"}
    g = Features.load(path)
    assert g.keys.tolist() == ["b", "a"] and g.fmaps.dtype == np.float16 and g.meta == {"image_size": 32}
    assert Features.load(path, fmaps=False).fmaps is None
    assert g.select(role="real").keys.tolist() == ["b"]
    assert g.select(label=("used", "unknown")).keys.tolist() == ["b", "a"]
    assert g.rows_of(["a"]).tolist() == [1]
    merged, dupes = merge([g, g.take([1])])
    assert merged.keys.tolist() == ["a", "b"] and dupes == 1
    with pytest.raises(FingerprintError, match="not in the features"):
        g.rows_of(["zz"])
    with pytest.raises(FingerprintError, match="keys"):
        Features(["a"], ["real", "real"], ["used"], np.zeros((1, 2)))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(FingerprintError, match="cannot read features"):
        Features.load(tmp_path / "bad.npz")


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
    from accelerate import Accelerator

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
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
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
