"""The report's figures: PNG bytes, identical on a rerun."""

import numpy as np

from fingerprint.report.figures import roc_figure, sample_grid, training_figure

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_are_reproducible_pngs():
    curves = [(0.75, "a", np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]))]
    assert roc_figure(curves)[:8] == PNG and roc_figure(curves) == roc_figure(curves)
    steps = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 30)]
    epochs = [{"epoch": 1, "val_auc": 0.6, "val_loss": 0.7}, {"epoch": 2, "val_auc": 0.7, "val_loss": 0.6}]
    assert training_figure(steps, epochs)[:8] == PNG and training_figure(steps, []) == training_figure(steps, [])
    pixels = {"k1": np.zeros((8, 8), np.uint8), "k2": np.full((8, 8), 255, np.uint8)}
    assert sample_grid({"real, used": ["k1", "k2"], "generated": ["k2"]}, pixels, "dev")[:8] == PNG
