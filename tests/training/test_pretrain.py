"""SSCD-style pretraining on tiny data: outputs the relation model and the profile can use, exact resume,
generator-like views, the losses, config errors."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fingerprint.training.pretrain as pre
from fingerprint.core.config import ConfigError
from fingerprint.data.pack import pack
from fingerprint.embedding.model_io import build_model, load_model
from fingerprint.embedding.models import ModelConfig
from fingerprint.membership.profile import ProfileConfig, load_profile, run_profile
from fingerprint.training.pretrain import PretrainConfig, generator_views, info_nce, koleo, run_pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from copies import make_copies  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    make_copies(root / "data", n_real=6, n_gen=24, seed=4)
    for split in ("dev", "test"):
        pack(root / "data" / split, root / "shards" / split, image_size=64)
    return root / "shards" / "dev", root / "shards" / "test"


def tiny(shards, out: Path, **kw) -> PretrainConfig:
    base = dict(image_size=32, epochs=2, steps_per_epoch=2, batch_size=8, threads=1, keep_checkpoints=1)
    return PretrainConfig(shards=shards, out=out, **{**base, **kw})


@pytest.fixture(scope="module")
def pretrained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "model"
    return out, run_pretrain(tiny(shards, out))


def test_outputs_feed_the_relation_model_and_the_profile(pretrained, shards, tmp_path):
    out, summary = pretrained
    assert summary["epochs"] == 2 and summary["steps"] == 4 and summary["n_pairs"] > 0
    model, meta = load_model(out)
    assert meta["pretrain"]["history"][-1]["epoch"] == 2 and model.cfg.image_size == 32
    relation = build_model(ModelConfig(image_size=32), weights=str(out / pre.BACKBONE_FILE))
    for k, v in relation.backbones["shared"].state_dict().items():
        assert torch.equal(v, model.backbones["shared"].state_dict()[k]), k
    cfg = ProfileConfig(dev=shards[0], test=shards[1], out=tmp_path / "p", spaces=("emb",), descriptor=out)
    run_profile(cfg)
    _, cols = load_profile(tmp_path / "p" / "dev.npz")
    assert np.isfinite(cols["emb:cal_1"]).all() and len(cols["emb:cal_1"]) == 12


def test_resume_ends_with_the_uninterrupted_weights(pretrained, shards, tmp_path, monkeypatch):
    _, reference = pretrained
    calls = {"n": 0}
    real = pre.info_nce

    def interrupt_in_epoch_2(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, second step
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(pre, "info_nce", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tiny(shards, tmp_path / "m"))
    monkeypatch.setattr(pre, "info_nce", real)
    assert not (tmp_path / "m" / "model.json").exists()
    resumed = run_pretrain(tiny(shards, tmp_path / "m", resume="latest"))
    assert resumed["weights_sha256"] == reference["weights_sha256"]


def test_views_and_losses():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 32)
    cfg = PretrainConfig(shards=(Path("s"),), out=Path("o"))
    v = generator_views(x, g, x.flip(0), cfg)
    again = generator_views(x, torch.Generator().manual_seed(0), x.flip(0), cfg)
    assert v.shape == x.shape and v.min() >= 0 and v.max() <= 1 and torch.equal(v, again)
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    assert info_nce(z, z, 0.1) < info_nce(z, z.roll(1, 0), 0.1)  # matching positives score better
    assert koleo(z) < koleo(torch.cat([z[:4], z[:4] + 1e-3]))  # spread-out embeddings pay less


def test_config_errors_name_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain\.pair_share must be below 1"):
        PretrainConfig(shards=(tmp_path,), out=tmp_path, pair_share=1.0)
    with pytest.raises(ConfigError, match=r"pretrain\.image_size must be >= 32"):
        PretrainConfig(shards=(tmp_path,), out=tmp_path, image_size=16)
    with pytest.raises(ConfigError, match=r"pretrain\.backbone must be one of"):
        PretrainConfig(shards=(tmp_path,), out=tmp_path, backbone="vgg")
