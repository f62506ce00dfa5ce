"""Memorisation calibration: the AUC is monotone in alpha, the chosen alpha meets the target, modes are chosen
from the top of the grid."""

import numpy as np

from fingerprint.benchdata.generators.calibrate import auc_at, choose_alpha, choose_modes, distance_matrix


def _case(seed=0, n_real=40, n_gen=400):
    """Distances where a memorised slot sits right at a used image and a novel one is far from every real."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_real // 2), np.zeros(n_real // 2)].astype(int)
    d_novel = rng.uniform(5, 6, (n_real, n_gen))
    d_mem = rng.uniform(5, 6, (n_real, n_gen))
    src = rng.integers(0, n_real // 2, n_gen)  # each memorised slot copies one used image
    d_mem[src, np.arange(n_gen)] = rng.uniform(0, 1, n_gen)
    return d_novel, d_mem, rng.random(n_gen), labels


def test_distance_matrix_is_pixel_l2():
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.full((3, 4, 4), 255, np.uint8)
    np.testing.assert_allclose(distance_matrix(a, b), np.full((2, 3), 4.0), rtol=1e-6)


def test_auc_rises_with_alpha_and_the_target_is_met():
    d_novel, d_mem, u, labels = _case()
    aucs = [auc_at(a, d_novel, d_mem, u, labels) for a in (0.0, 0.01, 0.05, 0.5)]
    assert abs(aucs[0] - 0.5) < 0.2 and aucs == sorted(aucs) and aucs[-1] > 0.95
    for target in (0.6, 0.75):
        alpha, curve = choose_alpha(d_novel, d_mem, u, labels, target, alpha_max=0.5)
        assert abs(auc_at(alpha, d_novel, d_mem, u, labels) - target) < 0.03 and curve[0]["alpha"] == 0.0


def test_modes_are_the_largest_under_the_margin():
    auc = {k: 0.5 + 0.002 * k for k in range(200)}  # more modes = more leakage in this toy
    k, curve = choose_modes(auc.__getitem__, 100, target=0.75)
    assert k == 100 and len(curve) == 1  # 0.70 <= 0.70
    k, curve = choose_modes(auc.__getitem__, 180, target=0.70)
    assert k == 65 and [c["modes"] for c in curve][:3] == [180, 150, 120]  # 0.63 <= 0.65 < 0.66 (80)
    assert choose_modes(lambda k: 1.0, 180, target=0.6)[0] == 5  # never low enough: the fewest modes
