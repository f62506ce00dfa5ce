"""The ddpm generator family: registered with CPU-sized tiny presets, a clear error without its optional extra,
and (where diffusers is installed) seeded training and sampling on a CPU at tiny sizes."""

import importlib.util

import numpy as np
import pytest

from fingerprint.benchdata.generators import families
from fingerprint.benchdata.generators.ddpm import DDPMConfig, train_ddpm
from fingerprint.benchdata.params import resolve_params
from fingerprint.benchdata.phantom import PhantomConfig, generate
from fingerprint.core.errors import FingerprintError

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
TINY = {"ddpm_width": 8, "ddpm_depth": 2, "layers_per_block": 1, "mid_attention": False, "ddpm_steps": 4,
        "batch_size": 4, "warmup": 1, "sample_steps": 2, "memorised_share": 0.5}  # fmt: skip


def test_registered_with_a_cpu_sized_tiny_preset():
    assert families()["ddpm"].config is DDPMConfig
    p = resolve_params("tiny", family="ddpm")
    assert p.generator.ddpm_steps == 20 and p.generator.ddpm_depth == 2
    assert resolve_params("medium", family="ddpm").generator.ddpm_steps == 20000


@pytest.mark.skipif(HAVE_DIFFUSERS, reason="diffusers is installed")
def test_without_the_extra_a_clear_error():
    with pytest.raises(FingerprintError, match=r"fingerprint\[gpu-gen\]"):
        train_ddpm(np.zeros((4, 32, 32), np.uint8), DDPMConfig(**TINY), progress=False)


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="needs the gpu-gen extra (diffusers)")
def test_trains_and_samples_by_seed_on_a_cpu():
    imgs = generate(8, seed=0, config=PhantomConfig(size=32)).images
    gen, history = train_ddpm(imgs, DDPMConfig(**TINY, cpu=True), seed=0, progress=False)
    again, _ = train_ddpm(imgs, DDPMConfig(**TINY, cpu=True), seed=0, progress=False)
    a = gen.draw(3, np.random.default_rng(1))
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8 and history["curve"][-1]["step"] == 4
    np.testing.assert_array_equal(a, again.draw(3, np.random.default_rng(1)))
    assert not np.array_equal(a, gen.draw(3, np.random.default_rng(2)))
    with pytest.raises(FingerprintError, match="needs a GPU for 128 px"):
        train_ddpm(np.zeros((4, 128, 128), np.uint8), DDPMConfig(**TINY, cpu=True), progress=False)
