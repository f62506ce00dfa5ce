"""Phantom anatomy: patients are seeded draws, independent of the population, with validated options."""

import numpy as np
import pytest

from fingerprint.benchdata.anatomy import PhantomConfig, make_patient, slab_points


@pytest.mark.parametrize("bad", [dict(size=8), dict(slices_per_patient=0), dict(tb_fraction=1.5), dict(noise=-1)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        PhantomConfig(**bad)


def test_patients_are_seeded_draws():
    cfg = PhantomConfig(size=64)
    a, b, c = make_patient(0, 3, cfg), make_patient(0, 3, cfg), make_patient(0, 4, cfg)
    assert a.pose == b.pose and np.array_equal(a.vessels, b.vessels) and a.pose != c.pose
    assert a.index == 3 and 0.0 <= a.level <= 1.0 and a.vessels.shape[1] == 8


def test_slab_points_only_within_the_slab():
    seg = np.array([[0, 0, -1, 1, 0, 1, 0.05, 0], [0, 0, 5, 1, 0, 5, 0.05, 0]], np.float32)  # crosses z=0; far away
    pts = slab_points(seg, 0.0, 0.1, 0.01)
    assert len(pts) >= 1 and np.all(np.abs(pts[:, 0] - 0.5) < 0.2)
    assert len(slab_points(seg[1:], 0.0, 0.1, 0.01)) == 0
