"""The vae generator family: it learns (loss goes down), samples reproducibly, and checks its inputs."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fingerprint.benchdata.anatomy import PhantomConfig
from fingerprint.benchdata.generators.vae import GeneratorConfig, LatentMixture, fit_latent_mixture, train_generator
from fingerprint.benchdata.phantom import generate
from fingerprint.core.errors import FingerprintError

TINY = dict(
    resolution=16,
    latent_dim=8,
    hidden=64,
    epochs=40,
    batch_size=8,
    components=4,
    upsampler_steps=30,
    upsampler_width=8,
    upsampler_patch=16,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny models, and a busy 2-core machine makes more threads 10x slower
    (conftest restores the count)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    return generate(16, seed=0, config=PhantomConfig(size=32)).images


def test_loss_goes_down_and_samples_have_the_image_format(images):
    gen, hist = train_generator(images, GeneratorConfig(**TINY), seed=0, progress=False)
    curve = [r["loss"] for r in hist["vae"]]
    assert len(curve) == TINY["epochs"]
    assert curve[-1] < 0.5 * curve[0]
    ups = [r["l1"] for r in hist["upsampler"]]
    assert len(ups) == 3 and ups[-1] < ups[0]
    assert hist["world_size"] == 1 and hist["mixture_components"] == 4
    out = gen.sample(6, seed=1)
    assert out.shape == (6, 32, 32) and out.dtype == np.uint8
    assert out.std() > 5  # images, not a constant
    assert np.array_equal(out, gen.sample(6, seed=1))
    assert not np.array_equal(out, gen.sample(6, seed=2))


def test_training_is_deterministic(images):
    cfg = GeneratorConfig(**{**TINY, "epochs": 5, "upsampler_steps": 5})
    a, ha = train_generator(images, cfg, seed=3, progress=False)
    b, hb = train_generator(images, cfg, seed=3, progress=False)
    c, _ = train_generator(images, cfg, seed=4, progress=False)
    assert ha["vae"] == hb["vae"]
    assert np.array_equal(a.sample(4, seed=0), b.sample(4, seed=0))
    assert not np.array_equal(a.sample(4, seed=0), c.sample(4, seed=0))


def test_longer_training_fits_the_training_images_closer(images):
    """What makes the difficulty levels: more epochs = the decoder reproduces its training set better."""
    short, hs = train_generator(images, GeneratorConfig(**{**TINY, "epochs": 5}), seed=0, progress=False)
    long, hl = train_generator(images, GeneratorConfig(**{**TINY, "epochs": 80}), seed=0, progress=False)
    assert hl["vae"][-1]["recon"] < 0.5 * hs["vae"][-1]["recon"]


def test_latent_mixture():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    codes = np.concatenate([c + 0.1 * rng.standard_normal((30, 2)) for c in centres])
    mix = fit_latent_mixture(codes, 3, seed=0)
    assert sorted(np.round(mix.means[:, 0]).tolist()) == [-5.0, 0.0, 5.0]
    assert np.isclose(mix.weights.sum(), 1.0)
    cold = mix.sample(50, np.random.default_rng(1), temperature=0.0)
    assert {tuple(r) for r in cold} <= {tuple(r) for r in mix.means}
    warm = mix.sample(500, np.random.default_rng(1), temperature=1.0)
    assert 0.05 < np.abs(warm - np.round(warm / 5) * 5).mean() < 0.2
    # never more components than codes
    assert len(fit_latent_mixture(codes[:2], 10).weights) == 2
    assert isinstance(mix, LatentMixture)


def test_bad_inputs(images):
    cfg = GeneratorConfig(**TINY)
    with pytest.raises(FingerprintError, match="uint8"):
        train_generator(images.astype(np.float32), cfg, progress=False)
    with pytest.raises(FingerprintError, match="multiple of the generator resolution"):
        train_generator(images[:, :30, :30], cfg, progress=False)
    with pytest.raises(FingerprintError, match="at least 2"):
        train_generator(images[:1], cfg, progress=False)
    with pytest.raises(FingerprintError, match="synth.mixed_precision must be one of"):
        GeneratorConfig(mixed_precision="fp8")
    with pytest.raises(FingerprintError, match="synth.temperature must be >= 0"):
        GeneratorConfig(temperature=-1.0)


BF16_SCRIPT = """
import numpy as np
import torch
torch.set_num_threads(1)
from fingerprint.benchdata.generators.vae import GeneratorConfig, train_generator
from fingerprint.benchdata.phantom import PhantomConfig, generate
ims = generate(8, seed=0, config=PhantomConfig(size=16)).images
cfg = GeneratorConfig(resolution=8, latent_dim=4, hidden=16, epochs=3, batch_size=4, components=2,
                      upsampler_steps=2, upsampler_width=4, upsampler_patch=8, mixed_precision="bf16", cpu=True)
gen, hist = train_generator(ims, cfg, progress=False)
out = gen.sample(3)
assert out.shape == (3, 16, 16) and out.dtype == np.uint8
assert all(np.isfinite(r["loss"]) for r in hist["vae"])
print("bf16 ok")
"""


@pytest.mark.slow
def test_bf16_path_runs_on_cpu():
    """The GPU mixed-precision path also runs on the CPU (tiny inputs: CPU bf16 is slow here)."""
    res = subprocess.run([sys.executable, "-c", BF16_SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bf16 ok" in res.stdout


def test_memorised_share_draws_at_the_used_images_codes(images):
    """memorised_share = 0 leaves sampling as it was; 1 draws every latent at a used image's posterior."""
    gen, _ = train_generator(images, GeneratorConfig(**{**TINY, "upsampler_steps": 5}), seed=0, progress=False)
    z0 = gen.sample_latents(50, np.random.default_rng(0))
    np.testing.assert_array_equal(z0, gen.mixture.sample(50, np.random.default_rng(0), gen.cfg.temperature))
    gen.cfg = GeneratorConfig(**{**TINY, "memorised_share": 1.0, "closeness": 0.0})
    z1 = gen.sample_latents(200, np.random.default_rng(0))
    d = np.linalg.norm(z1[:, None] - gen.memory.codes[None], axis=2)
    assert np.allclose(d.min(1), 0, atol=1e-5)
    counts = np.bincount(d.argmin(1), minlength=len(images))
    assert counts.max() > 4 * max(counts.min(), 1)  # Zipf: some used images far more often than others
    with pytest.raises(FingerprintError, match="synth.memorised_share"):
        GeneratorConfig(memorised_share=1.5)
