"""Training steps: schedule, loss, frozen stages and modes, and validation through the scorer's inference."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fingerprint.embedding.features import Features
from fingerprint.embedding.inference import pooled_logits, relation_logits, relation_scores
from fingerprint.embedding.model_io import build_model
from fingerprint.embedding.models import ModelConfig
from fingerprint.training import loop as train_loop
from fingerprint.training.episodes import Bank
from fingerprint.training.train import TrainConfig


def test_warmup_cosine_schedule():
    f = train_loop.warmup_cosine(10, 2)
    assert [round(f(s), 3) for s in (0, 1, 2)] == [0.5, 1.0, 1.0] and f(10) == pytest.approx(0.0) and f(6) < f(3)
    assert train_loop.warmup_cosine(4, 0)(0) == 1.0


def test_episode_loss_modes():
    out = {"logit": torch.tensor([2.0, -2.0]), "pair_logits": torch.tensor([[2.0, 0.0], [-2.0, 0.0]])}
    y = torch.tensor([1.0, 0.0])
    nearest = train_loop.episode_loss(out, y, "nearest")
    pairs = train_loop.episode_loss(out, y, "pairs")
    assert nearest.item() == pytest.approx(np.log1p(np.exp(-2.0)))
    assert pairs.item() > nearest.item()  # the uninformative pairs cost log 2


def test_freeze_and_train_modes():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=32))
    frozen = train_loop.freeze_backbone(model, "layer2")
    bb = model.backbones["shared"]
    assert not any(p.requires_grad for p in bb.layer2.parameters()) and all(
        p.requires_grad for p in bb.layer3.parameters()
    )
    cfg = TrainConfig(shards="s", out="o", bn="frozen")
    train_loop.set_train_modes(model, cfg, frozen)
    assert model.training and not bb.bn1.training and not bb.layer1.training and model.relation.training
    assert train_loop.freeze_backbone(model, "none") == []


def test_validation_scores_what_the_scorer_scores():
    """evaluate's logits come from the same inference as relation_scores (exported maps are float16)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=32, embed_dim=16)).eval()
    g = torch.Generator().manual_seed(1)
    real, pool = torch.rand(5, 1, 32, 32, generator=g), torch.rand(12, 1, 32, 32, generator=g)
    cfg = TrainConfig(shards="s", out="o", image_size=32, k=4, batch_size=2)
    nocast = contextlib.nullcontext
    emb, fmap = train_loop.encode_images(model, pool, "generated", 4, nocast)
    run = SimpleNamespace(cfg=cfg, net=model, pool=pool, bank=Bank.build([f"g{i}" for i in range(12)], emb, fmap),
                          accelerator=SimpleNamespace(autocast=nocast, device=torch.device("cpu")))  # fmt: skip
    val = train_loop._val_logits(run, real)
    q_emb, q_fmap = train_loop.encode_images(model, real, "real", 2, nocast)
    rows = train_loop.nearest(run.bank, q_emb, 4)[1]
    np.testing.assert_array_equal(val, pooled_logits(model, relation_logits(model, q_fmap, fmap, rows, batch_size=2)))
    feats = Features(
        [f"r{i}" for i in range(5)] + [f"g{i}" for i in range(12)], ["real"] * 5 + ["generated"] * 12,
        ["used"] * 5 + ["unknown"] * 12, torch.cat([q_emb, emb]).numpy(), torch.cat([q_fmap, fmap]).numpy(),
    )  # fmt: skip
    scored = relation_scores(model, feats.select(role="real"), feats.select(role="generated"), k=4, batch_size=2)
    np.testing.assert_allclose(scored.score, 1 / (1 + np.exp(-val.astype(np.float64))), atol=2e-3)
