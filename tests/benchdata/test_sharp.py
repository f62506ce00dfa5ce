"""The sharp generator family: registry and presets, determinism by seed, sharper and closer to the reals than vae,
realism in synth.json, the CLI flag."""

import json

import numpy as np
import pytest

from fingerprint.benchdata.generators import families, get_family
from fingerprint.benchdata.generators.sharp import LEVELS, SharpConfig, train_sharp
from fingerprint.benchdata.params import resolve_params
from fingerprint.benchdata.phantom import PhantomConfig, generate
from fingerprint.benchdata.synth import build_benchmark
from fingerprint.cli.synth import main as synth_main
from fingerprint.core.errors import FingerprintError

FAST = {"epochs": 20, "latent_dim": 8, "hidden": 64, "refiner_steps": 30, "refiner_warmup": 10, "refiner_crop": 32,
        "refiner_width": 8, "d_width": 8, "deform_steps": 10}  # fmt: skip
#: a small 128 px build (coarse stage at 32 px), long enough a refiner to be judged on sharpness
SMALL = {"image_size": 128, "dev_used": 20, "dev_not_used": 20, "test_used": 20, "test_not_used": 20}


def test_registered_with_its_own_level_presets():
    assert families()["sharp"].config is SharpConfig and get_family("sharp").train is train_sharp
    p = resolve_params("medium", family="sharp")
    assert p.generator.epochs == 200 and p.generator.modes == LEVELS["medium"]["modes"]  # not the vae's 90 epochs
    assert p.generator.memorised_share == LEVELS["medium"]["memorised_share"]
    assert resolve_params("hard", family="sharp", modes=7).generator.modes == 7
    with pytest.raises(FingerprintError, match="unknown benchmark parameter 'components'"):
        resolve_params("tiny", family="sharp", components=3)
    with pytest.raises(FingerprintError, match="synth.refiner_steps"):
        SharpConfig(refiner_steps=0)


@pytest.fixture(scope="module")
def trained():
    imgs = generate(10, seed=0, config=PhantomConfig(size=64)).images
    return imgs, *train_sharp(imgs, SharpConfig(**FAST), seed=0, progress=False)


def test_draws_are_determined_by_the_seed(trained):
    imgs, gen, history = trained
    again, _ = train_sharp(imgs, SharpConfig(**FAST), seed=0, progress=False)
    a = gen.draw(6, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (6, 64, 64)
    np.testing.assert_array_equal(a, again.draw(6, np.random.default_rng(3)))
    assert not np.array_equal(a, gen.draw(6, np.random.default_rng(4)))
    assert len(history["refiner_curve"]) and history["deformation"]["components"] > 0
    with pytest.raises(FingerprintError, match="divisible by 16"):
        train_sharp(imgs[:, :60, :60], SharpConfig(**FAST), progress=False)


def test_memorised_share_and_modes_set_where_samples_come_from(trained):
    _, gen, _ = trained
    slots = gen.slots(4000, np.random.default_rng(0))
    gen.cfg = SharpConfig(**FAST, memorised_share=0.0, modes=2)
    assert len(set(gen._sources(slots, slots["u"] < 0.0))) == 2  # novel samples collapsed onto 2 modes
    memorised = slots["u"] < 0.25
    assert abs(memorised.mean() - 0.25) < 0.03
    counts = np.bincount(gen._sources(slots, memorised)[memorised], minlength=10)
    assert (counts > 0).sum() >= 8 and counts.max() > 4 * np.median(counts)  # Zipf: uneven over all used images
    gen.cfg = SharpConfig(**FAST)


def test_calibration_sets_the_knobs_for_levels_with_a_target(trained):
    imgs, gen, _ = trained
    real = np.concatenate([imgs, generate(10, seed=5, config=PhantomConfig(size=64)).images])
    labels = np.r_[np.ones(10), np.zeros(10)].astype(int)
    assert gen.calibrate(real, labels, level="tiny", n=50, seed=0) is None  # no target at tiny
    gen.cfg = SharpConfig(**FAST)
    out = gen.calibrate(real, labels, level="medium", n=100, seed=0)
    assert out["target"] == 0.75 and out["modes"] == gen.cfg.modes and out["modes"] <= 10
    assert 0 <= out["memorised_share"] == gen.cfg.memorised_share <= gen.cfg.max_memorised_share
    assert out["modes_curve"][-1]["modes"] == out["modes"]
    gen.cfg = SharpConfig(**FAST, calibrate=False)
    assert gen.calibrate(real, labels, level="medium", n=100, seed=0) is None
    gen.cfg = SharpConfig(**FAST)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("families")
    return {f: build_benchmark(tmp / f, level="tiny", seed=0, progress=False, family=f, **SMALL,
                               **({"refiner_steps": 600} if f == "sharp" else {}))
            for f in ("vae", "sharp")}  # fmt: skip


@pytest.mark.slow
def test_sharp_is_sharper_and_closer_to_the_reals_than_vae(small):
    r = {f: small[f]["realism"] for f in small}
    assert r["sharp"]["hf_ratio"] >= 3 * r["vae"]["hf_ratio"]
    assert all(np.isfinite(v["frechet"]["generated"]) and v["frechet"]["real_vs_real"] > 0 for v in r.values())
    assert r["sharp"]["frechet"]["generated"] < r["vae"]["frechet"]["generated"]
    for split in ("dev", "test"):
        assert small["sharp"]["difficulty"]["pixel_nn_auc"][split] == r["sharp"]["splits"][split]["pixel_nn_auc"]
    assert small["sharp"]["generator"]["family"] == "sharp" and small["sharp"]["generator"]["refiner_curve"]


def test_cli_generator_flag(tmp_path, capsys):
    args = [str(tmp_path / "b"), "--level", "tiny", "--generator", "sharp", "--no-progress", "--epochs", "20",
            "--refiner-steps", "20", "--modes", "3", "--memorised-share", "0.2"]  # fmt: skip
    assert synth_main(args) == 0
    info = json.loads((tmp_path / "b" / "synth.json").read_text())
    assert info["generator"]["family"] == "sharp" and info["params"]["generator"]["modes"] == 3
    assert info["generator"]["sampling"]["memorised_share"] == 0.2
    assert {"hf_ratio", "frechet", "splits"} <= set(info["realism"]) and "pixel-NN AUC" in capsys.readouterr().out
