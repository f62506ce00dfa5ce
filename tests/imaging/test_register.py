"""Free-form registration (fingerprint.imaging.register): it undoes a smooth bend, and a pair's result is its own."""

import torch
import torch.nn.functional as F

from fingerprint.imaging.register import blur, dense_field, register, registered_rms, warp


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(n, 1, 40, 40, generator=g), 5, 1, padding=0)[..., :32, :32]


def _bend(n: int, seed: int, scale: float = 0.06) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(n, 2, 8, 8, generator=g), 3, 1, padding=1)[..., 1:7, 1:7] * scale * 3


def test_registration_undoes_a_smooth_bend_and_still_tells_images_apart():
    x = _images(6, 0)
    bent = warp(x, _bend(6, 1))
    rms_plain = (blur(x, 0.5) - blur(bent, 0.5)).square().flatten(1).mean(1).sqrt()
    own = registered_rms(x, bent, steps=80, sigma=0.5)
    other = registered_rms(x, bent.roll(1, 0), steps=80, sigma=0.5)
    assert (own < 0.6 * rms_plain).all()  # the bend is mostly undone
    assert (own < 0.5 * other).all()  # and another image is not bent into this one
    assert (registered_rms(x, x, steps=80, sigma=0.5) < 0.5 * own).all()  # Adam's first steps leave a small floor


def test_per_pair_fields_do_not_depend_on_the_batch():
    x, y = _images(8, 2), _images(8, 3)
    alone = register(x[:2], y[:2], steps=30, per_pair=True)
    together = register(x, y, steps=30, per_pair=True)
    assert torch.allclose(alone, together[:2], atol=1e-5)
    shared = register(x, y, steps=30)  # one mean over the batch: each pair's step shrinks with the batch
    assert not torch.allclose(alone, shared[:2], atol=1e-3)
    chunked = registered_rms(x, y, steps=30, chunk=3)
    assert torch.allclose(chunked, registered_rms(x, y, steps=30), atol=1e-5)


def test_separable_field_equals_bicubic_interpolation():
    ctrl = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(4)) * 0.1
    for size in (32, 64):
        assert torch.allclose(dense_field(ctrl, size, separable=True), dense_field(ctrl, size), atol=1e-6)
