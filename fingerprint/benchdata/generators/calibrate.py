"""Calibrating a generator's memorisation so that a level's pixel-NN test ROC-AUC lands on its target.

The builder knows which real images were used, so it can measure the
difficulty of what it is about to write and set two scalars of the generator
(as a data-set author picks a training length to reach a difficulty):

- `modes` (how many used images novel samples start from): the largest value
  in `MODES_GRID` whose pixel-NN AUC is at most target - margin, leaving the
  memorised share room to bring the AUC up to the target;
- `memorised_share` (alpha): each slot j draws u_j once and is memorised iff
  u_j < alpha, so a larger alpha only swaps novel samples for memorised ones
  and the leakage is monotone in alpha; with the distances from every real
  image to both versions of every slot computed once, the AUC of any alpha is
  a min over columns (`auc_at`), and a grid costs almost nothing.

Both are measured on the generator's cheap coarse stage (no refiner) against
the reals area-downsampled to its size: on calibrated builds the coarse AUC lies
within 0.03 of the refined one, at ~1/1000 of the cost. The calibration never
chooses which images are memorised (that is a seeded ranking) and never looks
at a method under test; on calibrated builds the pixel-NN test AUC is a
controlled property of the level: report it as the level's reference, not as
a competitor.
"""

from __future__ import annotations

import numpy as np
import torch

from fingerprint.evaluation.metrics import roc_auc

#: pixel-NN test ROC-AUC target and range per level (tiny: none, not calibrated)
TARGETS = {"easy": (0.95, (0.90, 1.0)), "medium": (0.75, (0.70, 0.80)), "hard": (0.60, (0.55, 0.65))}
MODES_GRID = (180, 150, 120, 100, 80, 65, 50, 40, 30, 24, 18, 14, 10, 7, 5)


def distance_matrix(real: np.ndarray, generated: np.ndarray, chunk: int = 512) -> np.ndarray:
    """L2 distances (pixels in [0, 1]) of uint8 images real x generated -> (n_real, n_gen) float32."""
    r = torch.from_numpy(real.reshape(len(real), -1).astype(np.float32) / 255.0)
    g = torch.from_numpy(generated.reshape(len(generated), -1).astype(np.float32) / 255.0)
    return torch.cat([torch.cdist(r, g[i : i + chunk]) for i in range(0, len(g), chunk)], 1).numpy()


def auc_at(alpha: float, d_novel: np.ndarray, d_mem: np.ndarray, u: np.ndarray, labels: np.ndarray) -> float:
    """Pixel-NN ROC-AUC of the set in which slot j is memorised iff u_j < alpha."""
    return float(roc_auc(labels, -np.where((u < alpha)[None, :], d_mem, d_novel).min(1)))


def choose_modes(auc_of_modes, n: int, target: float, margin: float = 0.05) -> tuple[int, list[dict]]:
    """The largest grid value of modes (capped at n) whose AUC (`auc_of_modes(k)`) is <= target - margin."""
    curve, grid = [], sorted({min(m, n) for m in MODES_GRID}, reverse=True)
    for k in grid:
        curve.append({"modes": k, "auc": round(auc_of_modes(k), 4)})
        if curve[-1]["auc"] <= target - margin:
            return k, curve
    return grid[-1], curve


def choose_alpha(d_novel, d_mem, u, labels, target: float, alpha_max: float, grid: int = 201):
    """The alpha in [0, alpha_max] whose AUC is closest to the target (the smallest on ties) and the curve."""
    curve = [{"alpha": round(float(a), 5), "auc": round(auc_at(a, d_novel, d_mem, u, labels), 4)}
             for a in np.linspace(0.0, alpha_max, grid)]  # fmt: skip
    best = min(curve, key=lambda r: (abs(r["auc"] - target), r["alpha"]))
    return best["alpha"], curve[::10]
