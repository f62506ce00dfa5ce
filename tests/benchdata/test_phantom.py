"""Procedural CT-like slices: shapes, determinism, distinct patients, neighbouring slices, findings."""

import numpy as np

from fingerprint.benchdata.anatomy import PhantomConfig, make_patient
from fingerprint.benchdata.phantom import generate, render_slice


def _corr(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_generate_shapes_and_ids():
    ps = generate(5, seed=0, config=PhantomConfig(size=48))
    assert ps.images.shape == (5, 48, 48) and ps.images.dtype == np.uint8
    assert ps.patient.tolist() == [0, 1, 2, 3, 4]
    assert ps.slice.tolist() == [0] * 5
    # a CT slice: dark background and lungs, bright body and bone
    for im in ps.images:
        assert im.min() < 20 and im.max() > 230
        assert im[:3].mean() < 30  # air above the patient


def test_same_seed_same_pixels_other_seed_different():
    a = generate(4, seed=7, config=PhantomConfig(size=48)).images
    b = generate(4, seed=7, config=PhantomConfig(size=48)).images
    c = generate(4, seed=8, config=PhantomConfig(size=48)).images
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_patient_does_not_depend_on_population_size():
    a = generate(3, seed=1, config=PhantomConfig(size=48)).images
    b = generate(6, seed=1, config=PhantomConfig(size=48)).images
    assert np.array_equal(a, b[:3])


def test_patients_are_distinct():
    ps = generate(40, seed=2, config=PhantomConfig(size=64))
    c = _corr(ps.images)
    np.fill_diagonal(c, 0.0)
    # measured 0.88-0.91 over seeds 0-3; identical-looking patients would be > 0.98
    assert c.max() < 0.95


def test_neighbouring_slices_share_a_patient():
    cfg = PhantomConfig(size=64, slices_per_patient=3)
    ps = generate(9, seed=0, config=cfg)
    assert ps.patient.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ps.slice.tolist() == [0, 1, 2] * 3
    c = _corr(ps.images)
    same = ps.patient[:, None] == ps.patient[None, :]
    off = ~np.eye(9, dtype=bool)
    assert c[same & off].min() > c[~same].mean()
    assert not np.array_equal(ps.images[0], ps.images[1])  # neighbours differ
    assert ps.has_tb.reshape(3, 3).std(axis=1).max() == 0  # a patient's findings are the same in all slices


def test_partial_last_patient():
    ps = generate(5, seed=0, config=PhantomConfig(size=32, slices_per_patient=2))
    assert ps.patient.tolist() == [0, 0, 1, 1, 2]


def test_tb_findings_change_only_the_findings():
    with_tb = make_patient(3, 4, PhantomConfig(size=64, tb_fraction=1.0, noise=0.0))
    without = make_patient(3, 4, PhantomConfig(size=64, tb_fraction=0.0, noise=0.0))
    assert with_tb.has_tb and not without.has_tb
    cfg = PhantomConfig(size=64, noise=0.0)
    a, b = render_slice(with_tb, 0, cfg), render_slice(without, 0, cfg)
    assert not np.array_equal(a, b)
    assert _corr(np.stack([a, b]))[0, 1] > 0.9
    assert {f["kind"] for f in with_tb.findings} <= {"nodule", "cavity", "consolidation"}


def test_tb_fraction_controls_findings():
    assert not generate(10, seed=0, config=PhantomConfig(size=32, tb_fraction=0.0)).has_tb.any()
    assert generate(10, seed=0, config=PhantomConfig(size=32, tb_fraction=1.0)).has_tb.all()


def test_noise_scale():
    quiet = make_patient(0, 1, PhantomConfig(size=64, noise=0.0))
    noisy = make_patient(0, 1, PhantomConfig(size=64, noise=2.0))
    cfg = PhantomConfig(size=64)
    # without noise the render seed does not matter; with noise it does
    assert np.array_equal(render_slice(quiet, 0, cfg, seed=1), render_slice(quiet, 0, cfg, seed=2))
    a, b = render_slice(noisy, 0, cfg, seed=1), render_slice(noisy, 0, cfg, seed=2)
    assert (a.astype(float) - b).std() > 2.0
