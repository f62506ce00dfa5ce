"""Relation network: shapes, unit norm, pooling, seed configuration, precision, preserved train/eval modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.model_io import build_model
from fingerprint.embedding.models import FingerprintModel, ModelConfig, count_parameters, preserved_modes, seed_config

SMALL = dict(image_size=32)


def tiny(**kw) -> FingerprintModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **kw})).eval()


@pytest.mark.parametrize("shared", [True, False])
def test_shapes_and_unit_norm(shared):
    m = tiny(shared=shared, embed_dim=16, image_size=64)
    q, s = torch.rand(3, 1, 64, 64), torch.rand(3, 5, 1, 64, 64)
    with torch.no_grad():
        emb_mode = m(q)
        ep = m(q, s)
    assert emb_mode["emb"].shape == (3, 16) and emb_mode["fmap"].shape == (3, 512, m.fmap_size(), m.fmap_size())
    torch.testing.assert_close(emb_mode["emb"].norm(dim=1), torch.ones(3))
    assert ep["logit"].shape == (3,) and ep["pair_logits"].shape == (3, 5)
    assert ep["q_emb"].shape == (3, 16) and ep["s_emb"].shape == (3, 5, 16)
    torch.testing.assert_close(ep["s_emb"].norm(dim=-1), torch.ones(3, 5))
    # the same images through encode/relate/pool give the same logits as one forward
    _, qf = m.encode(q, "real")
    _, sf = m.encode(s.reshape(15, 1, 64, 64), "generated")
    with torch.no_grad():
        pl = m.relate(qf, sf.reshape(3, 5, *sf.shape[1:]))
        torch.testing.assert_close(m.pool(pl), ep["logit"])
        # precomputed support maps (memory bank) and a support function go through the same forward
        torch.testing.assert_close(m(q, support_fmap=sf.reshape(3, 5, *sf.shape[1:]))["logit"], ep["logit"])
        via_fn = m(q, support_fn=lambda e: (m.embed_fmap(sf).reshape(3, 5, -1), sf.reshape(3, 5, *sf.shape[1:])))
    torch.testing.assert_close(via_fn["pair_logits"], pl)
    assert (len(m.backbones) == 1) == shared


def test_seed_stem_keeps_4x_larger_maps():
    assert tiny(seed_stem=True, image_size=64).fmap_size() == 4
    assert tiny(image_size=64).fmap_size() == 2
    m = tiny(seed_stem=True, image_size=64)
    assert m(torch.rand(1, 1, 64, 64))["fmap"].shape[-1] == 4


def test_pooling_modes():
    pl = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(tiny(pool="max").pool(pl), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(tiny(pool="mean").pool(pl), torch.tensor([1 / 3, 1.0]))
    att = tiny(pool="attention")
    out = att.pool(pl)
    assert out[0] > pl[0].mean() and out[0] < pl[0].max()
    out.sum().backward()
    assert att.pool_temperature.grad is not None


def test_seed_relation_runs_on_small_input():
    m = tiny(relation="seed", seed_stem=True, shared=False, pool="mean", image_size=64)
    m.train()
    out = m(torch.rand(2, 1, 64, 64), torch.rand(2, 3, 1, 64, 64))
    assert out["pair_logits"].shape == (2, 3) and out["logit"].shape == (2,)
    out["logit"].sum().backward()
    assert m.relation.features[0].weight.shape == (512, 1024, 3, 3)  # 2C -> C, scaled to resnet18's C=512
    assert m.relation.fc[-1].out_features == 1  # a logit, no sigmoid/softmax


def test_seed_config_is_the_seed_run1_network():
    cfg = seed_config()
    assert (cfg.backbone, cfg.shared, cfg.relation, cfg.seed_stem, cfg.image_size) == (
        "resnet101",
        False,
        "seed",
        True,
        256,
    )
    with torch.device("meta"):
        m = FingerprintModel(cfg)
    assert m.relation.features[0].weight.shape == (2048, 4096, 3, 3)  # Conv3x3 4096 -> 2048
    assert m.fmap_size() == 16  # 2048 x 16 x 16 per image, as published
    # two ResNet-101 trunks + the relation head: 198.2M (the seed's 202M counted two unused 1000-way fc layers)
    assert 198.0e6 < count_parameters(m) - count_parameters(m.embed_head) < 198.5e6


def test_channels_last_matches():
    m = tiny(image_size=64)
    q, s = torch.rand(2, 1, 64, 64), torch.rand(2, 3, 1, 64, 64)
    with torch.no_grad():
        ref = m(q, s)["logit"]
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(q.contiguous(memory_format=torch.channels_last), s)["logit"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_on_cpu():
    m = tiny(image_size=32).train()
    q, s = torch.rand(2, 1, 32, 32), torch.rand(2, 2, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(q, s)
    assert torch.isfinite(out["logit"]).all()
    torch.nn.functional.binary_cross_entropy_with_logits(out["logit"].float(), torch.tensor([1.0, 0.0])).backward()
    assert m.embed_head.weight.grad is not None and m.embed_head.weight.grad.dtype == torch.float32


def test_a_few_steps_reduce_the_loss():
    m = tiny(image_size=32).train()
    g = torch.Generator().manual_seed(1)
    q, s = torch.rand(4, 1, 32, 32, generator=g), torch.rand(4, 3, 1, 32, 32, generator=g)
    s[:2] = q[:2, None] + 0.02 * torch.randn(2, 3, 1, 32, 32, generator=g)  # "used": near copies among its supports
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(q, s)["logit"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_config_is_a_clear_error():
    with pytest.raises(FingerprintError, match="unknown backbone"):
        ModelConfig(backbone="resnet9")
    with pytest.raises(FingerprintError, match="unknown pool"):
        ModelConfig(pool="median")


def test_preserved_modes_restores_every_flag():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    net.train()
    net[1].eval()
    with preserved_modes(net):
        net.eval()
    assert net.training and net[0].training and not net[1].training
