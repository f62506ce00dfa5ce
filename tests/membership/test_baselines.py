"""Baseline scorers: SSIM against a reference, candidate pre-selection vs exhaustive, DCR, embedding and seed rules."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.signal import convolve2d

from fingerprint.cli import score as score_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.embedding.features import Features
from fingerprint.embedding.model_io import build_model
from fingerprint.embedding.models import ModelConfig
from fingerprint.evaluation.scorefiles import read_score_meta, read_scores
from fingerprint.imaging import similarity as sim
from fingerprint.membership import baselines as bl


def reference_ssim(x: np.ndarray, y: np.ndarray, win=11, sigma=1.5) -> float:
    """Wang et al. (2004) SSIM, written directly with scipy 2-D convolution (valid borders, L = 1)."""
    t = np.arange(win) - (win - 1) / 2
    g1 = np.exp(-(t**2) / (2 * sigma**2))
    w = np.outer(g1, g1) / np.outer(g1, g1).sum()
    f = lambda a: convolve2d(a, w, mode="valid")  # noqa: E731
    c1, c2 = 0.01**2, 0.03**2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def test_ssim_reference_cases():
    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(sim.ssim(x, x).numpy(), 1.0, atol=1e-12)
    a, b = torch.full((1, 1, 16, 16), 0.3), torch.full((1, 1, 16, 16), 0.6)
    # constant images: no variance, only the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    assert sim.ssim(a, b).item() == pytest.approx((2 * 0.3 * 0.6 + 1e-4) / (0.09 + 0.36 + 1e-4), rel=1e-6)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ours = sim.ssim(x, y).numpy()
    want = [reference_ssim(x[i, 0].double().numpy(), y[i, 0].double().numpy()) for i in range(3)]
    np.testing.assert_allclose(ours, want, rtol=1e-9)
    assert (ours < 1).all()
    with pytest.raises(FingerprintError, match="smaller than"):
        sim.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def near_copies(n_real=8, n_gen=40, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n_real, 1, size, size, generator=g)
    gen = torch.rand(n_gen, 1, size, size, generator=g)
    copies = torch.arange(0, n_real, 2)  # every other real image has a near-copy
    slots = torch.arange(len(copies)) * 3 + 5
    gen[slots] = (real[copies] + 0.03 * torch.randn(len(copies), 1, size, size, generator=g)).clamp(0, 1)
    return real, gen, copies, slots


def test_ssim_candidates_equal_exhaustive():
    real, gen, copies, slots = near_copies()
    exhaustive, best = sim.ssim_max(real, gen, candidates=None)
    fast, fast_best = sim.ssim_max(real, gen, candidates=8)
    np.testing.assert_allclose(fast, exhaustive, rtol=1e-12)
    assert (fast_best == best).all()
    assert (best[copies.numpy()] == slots.numpy()).all()
    # exhaustive really is the max over all pairs
    full = np.array(
        [[sim.ssim(real[i : i + 1], gen[j : j + 1]).item() for j in range(len(gen))] for i in range(len(real))]
    )
    np.testing.assert_allclose(exhaustive, full.max(axis=1), rtol=1e-12)


def test_dcr_ranks_near_copy_first():
    real, gen, copies, slots = near_copies()
    score, nearest = bl.dcr(real, gen)
    assert (nearest[copies.numpy()] == slots.numpy()).all()
    others = np.setdiff1d(np.arange(len(real)), copies.numpy())
    assert score[copies.numpy()].min() > score[others].max()  # closer = higher
    d = torch.cdist(real.reshape(len(real), -1).double(), gen.reshape(len(gen), -1).double())
    np.testing.assert_allclose(score, -d.min(dim=1).values.numpy(), rtol=1e-4)
    with pytest.raises(FingerprintError, match="score.pixel_size must be the same"):
        bl.dcr(real, torch.rand(3, 1, 8, 8))


def test_embedding_baselines_equal_numpy():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((5, 6)).astype(np.float32)
    g = rng.standard_normal((30, 6)).astype(np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    sims = r @ g.T
    s, rows = bl.emb_nn(r, g)
    np.testing.assert_allclose(s, sims.max(axis=1), atol=1e-6)
    assert (rows == sims.argmax(axis=1)).all()
    s, rows = bl.emb_topk(r, g, k=4)
    np.testing.assert_allclose(s, np.sort(sims, axis=1)[:, -4:].mean(axis=1), atol=1e-6)
    assert rows.shape == (5, 4)


def test_seed_rule_is_mean_over_all_pairs():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=32, embed_dim=8)).eval()
    x = torch.rand(9, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        emb, fmap = model.encode(x)
    f = Features([f"k{i}" for i in range(9)], ["real"] * 3 + ["generated"] * 6, ["used"] * 9, emb.numpy(), fmap.numpy())
    real, gen = f.select(role="real"), f.select(role="generated")
    score = bl.seed_rule(model, real, gen, gen_chunk=4)
    q = torch.from_numpy(real.fmaps.astype(np.float32))
    s = torch.from_numpy(gen.fmaps.astype(np.float32))
    with torch.no_grad():
        want = torch.sigmoid(model.relate(q, s.unsqueeze(0).expand(3, *s.shape))).mean(dim=1).numpy()
    np.testing.assert_allclose(score, want, rtol=1e-5)
    with pytest.raises(FingerprintError, match="exceeds the limit"):
        bl.seed_rule(model, real, gen, max_pairs=10)


def test_pixel_scorers_through_the_score_command(tmp_path):
    real, gen, copies, _ = near_copies(n_real=6, n_gen=12, size=32)
    for name, imgs in (("used", real[0::2]), ("not_used", real[1::2]), ("generated", gen)):
        (tmp_path / "dev" / name).mkdir(parents=True)
        for i, a in enumerate(imgs, 1):
            Image.fromarray((a[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "dev" / name / f"{name}_{i:04d}.png")
    pack(tmp_path / "dev", tmp_path / "shards", image_size=32, max_count=8)
    for scorer in ("dcr", "ssim"):
        out = tmp_path / f"{scorer}.csv"
        argv = [
            "--scorer",
            scorer,
            "--shards",
            str(tmp_path / "shards"),
            "--calibrate-on",
            str(tmp_path / "shards"),
            "--pixel-size",
            "32",
            "--ssim-candidates",
            "4",
            "--out",
            str(out),
        ]
        assert score_cli.main(argv) == 0
        t = read_scores(out)
        assert t.keys == ["not_used_0001", "not_used_0002", "not_used_0003", "used_0001", "used_0002", "used_0003"]
        assert t.labels.tolist() == [0, 0, 0, 1, 1, 1]  # the used ones have near-copies among the generated
        assert read_score_meta(out)["pixel_size"] == 32
