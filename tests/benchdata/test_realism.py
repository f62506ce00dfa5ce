"""Realism, leakage and memorisation figures: definitions checked on data whose answer is known."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from fingerprint.benchdata.phantom import PhantomConfig, generate
from fingerprint.benchdata.realism import (
    frechet,
    frechet_distance,
    hf_energy,
    hf_ratio,
    measure_build,
    measure_splits,
    memorisation,
    nn_leakage,
    real_nn_distance,
    ssim_nn,
)
from fingerprint.imaging.similarity import ssim_max


@pytest.fixture(scope="module")
def reals():
    return generate(24, seed=0, config=PhantomConfig(size=64)).images


def _blur(imgs, sigma):
    return (
        np.stack([ndimage.gaussian_filter(im.astype(float), sigma) for im in imgs])
        .clip(0, 255)
        .round()
        .astype(np.uint8)
    )


def test_hf_energy_is_the_variance_above_the_cutoff():
    """Parseval: with cut-off 0 (only the mean removed) the energy is the pixel variance."""
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    np.testing.assert_allclose(hf_energy(x, cutoff=0.0), (x / 255.0).var(axis=(1, 2)), rtol=1e-4)
    assert np.all(hf_energy(x, cutoff=0.25) < hf_energy(x, cutoff=0.125))


def test_blur_lowers_the_hf_ratio_and_noise_raises_it(reals):
    assert 0.98 < hf_ratio(reals, reals) < 1.02
    assert hf_ratio(_blur(reals, 1.5), reals) < 0.2
    assert hf_ratio(_blur(reals, 1.5), reals) < hf_ratio(_blur(reals, 0.7), reals)
    noise = np.random.default_rng(1).integers(0, 256, reals.shape).astype(np.uint8)
    assert hf_ratio(noise, reals) > 3


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 5))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a, a + np.array([1.0, 2.0, 0.0, 0.0, 0.0])) - 5.0) < 1e-6
    # covariance term: N(0, I) vs N(0, 4I) in d dims -> d * (1 + 4 - 2 * 2) = d
    b = rng.standard_normal((20000, 5))
    assert abs(frechet_distance(b, 2 * rng.standard_normal((20000, 5))) - 5.0) < 0.3


def test_frechet_orders_identical_below_blurred_below_noise(reals):
    same = frechet(reals, reals, seed=0)
    blurred = frechet(_blur(reals, 1.5), reals, seed=0)
    noise = frechet(np.random.default_rng(1).integers(0, 256, reals.shape).astype(np.uint8), reals, seed=0)
    assert np.isfinite(blurred["generated"]) and blurred["real_vs_real"] > 0
    assert same["generated"] < blurred["generated"] < noise["generated"]
    assert blurred["generated"] > blurred["real_vs_real"] and blurred["ratio"] > 1
    assert frechet(_blur(reals, 1.5), reals, seed=0) == blurred  # seeded backbone and halves


def test_ssim_nn_equals_the_baseline_ssim_max(reals):
    gen = _blur(reals[12:], 0.8)
    ours = ssim_nn(reals[:12], gen, candidates=4)
    as_t = lambda x: torch.from_numpy(x).float().div(255).unsqueeze(1)  # noqa: E731
    ref, _ = ssim_max(as_t(reals[:12]), as_t(gen), candidates=4)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_leakage_and_memorisation_on_copies_vs_noise(reals):
    used, not_used = reals[:12], reals[12:]
    real = np.concatenate([used, not_used])
    labels = np.r_[np.ones(12), np.zeros(12)].astype(int)
    noise = np.random.default_rng(0).integers(-3, 4, used[:6].shape)
    copies = np.clip(used[:6].astype(int) + noise, 0, 255).astype(np.uint8)  # six of the twelve used, near-copied
    leak = nn_leakage(real, labels, copies, ssim_candidates=2)
    assert leak["share_nearest_used"] == 1.0 and leak["share_nearest_used_null"] == 0.5
    assert leak["pixel_nn_auc"] >= 0.75 and leak["ssim_nn_auc"] >= 0.75  # the 6 copies rank first
    mem = memorisation(real, labels, copies, real_nn=real_nn_distance(real))
    assert mem["share_reproduced_used"] == 0.5 and mem["share_reproduced_not_used"] == 0.0
    assert mem["median_ratio_reproduced"] < 0.2
    pure = np.random.default_rng(2).integers(0, 256, (12, 64, 64)).astype(np.uint8)
    assert memorisation(real, labels, pure)["share_reproduced_used"] == 0.0


def test_measure_splits_and_build(reals, tmp_path):
    from PIL import Image

    gen = _blur(reals[:12], 1.0)
    splits = {"dev": (reals[:24], np.r_[np.ones(12), np.zeros(12)].astype(int), gen)}
    out = measure_splits(splits, seed=0)
    assert out["hf_ratio"] < 1 and out["frechet"]["ratio"] > 1 and out["splits"]["dev"]["pixel_nn_auc"] > 0.9
    for folder, prefix, imgs in (("dev/used", "used", reals[:12]), ("dev/not_used", "not_used", reals[12:]),
                                 ("dev/generated", "generated", gen), ("test/generated_1", "generated", gen),
                                 ("test/real_unknown_1", "real_unknown", reals)):  # fmt: skip
        (tmp_path / folder).mkdir(parents=True)
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(tmp_path / folder / f"{prefix}_{i + 1:04d}.png")
    truth = "".join(f"real_unknown_{i + 1:04d},{int(i < 12)}\n" for i in range(24))
    (tmp_path / "test_truth.csv").write_text("figure_id,label\n" + truth)
    built = measure_build(tmp_path)
    # the same leakage from the files; memorisation differs: here the test reals duplicate the dev ones
    leak = {k: v for k, v in out["splits"]["dev"].items() if k != "memorisation"}
    assert {k: v for k, v in built["splits"]["test"].items() if k != "memorisation"} == leak
