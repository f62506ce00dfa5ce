"""Generator families: the registry, and a new family one registration away from building a benchmark."""

from dataclasses import dataclass

import numpy as np
import pytest

from fingerprint.benchdata.generators import families, get_family, register_family
from fingerprint.benchdata.generators.vae import GeneratorConfig, train_generator
from fingerprint.benchdata.params import resolve_params
from fingerprint.benchdata.synth import SynthConfig, build_benchmark
from fingerprint.core.errors import FingerprintError


@dataclass
class BlurConfig:
    spread: float = 25.0


class Blur:
    """A stand-in generator: the training images' mean plus noise (no training, so the test is fast)."""

    def __init__(self, images: np.ndarray, spread: float):
        self.mean, self.spread = images.astype(np.float64).mean(axis=0), spread

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.clip(self.mean + rng.normal(0, self.spread, (n, *self.mean.shape)), 0, 255).astype(np.uint8)


@register_family("blur", BlurConfig, help="mean image + noise (tests)")
def train_blur(images, cfg, *, seed=0, accelerator=None, progress=False):
    return Blur(images, cfg.spread), {"images": int(len(images))}


def test_registry_holds_the_vae_and_refuses_unknown_names():
    assert families()["vae"].config is GeneratorConfig and get_family("vae").train is train_generator
    with pytest.raises(FingerprintError, match="unknown generator family 'stylegan9'"):
        get_family("stylegan9")
    with pytest.raises(FingerprintError, match="synth.generator must be one of"):
        SynthConfig(out="x", generator="stylegan9")


def test_a_registered_family_builds_a_benchmark(tmp_path):
    p = resolve_params("tiny", family="blur", spread=5.0)
    assert p.family == "blur" and p.generator == BlurConfig(spread=5.0)  # the vae preset does not apply
    with pytest.raises(FingerprintError, match="unknown benchmark parameter 'epochs'"):
        resolve_params("tiny", family="blur", epochs=3)
    info = build_benchmark(tmp_path / "b", level="tiny", seed=0, progress=False, family="blur")
    assert info["params"]["family"] == "blur"
    assert info["generator"] == {"family": "blur", "images": 22, "traceability": None}  # no sources reported
    assert info["counts"]["test"]["generated"] == 60 and (tmp_path / "b" / "test_truth.csv").is_file()


def test_default_threads_per_family_and_launch(monkeypatch):
    """vae builds on one thread; sharp on the cores of each launched process, at most its cap; a given value wins."""
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_params("tiny").threads == 1
    assert resolve_params("tiny", family="sharp").threads == 4
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_params("tiny", family="sharp").threads == 2
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert resolve_params("tiny", family="sharp").threads == 1
    assert resolve_params("tiny", family="sharp", threads=3).threads == 3
