"""A tiny membership data set whose generated images are known copies of used images (tests of the quality stages).

Real images are smooth random fields (64 px); a "generator" copies used images of both splits with a distortion
that fools pixel distance: a random brightness offset, a strong random shading ramp, slight blur and noise.
A share of the generated images copies nothing. `sources` maps each generated key (per split) to the real key
it copies (None for the free ones), which a real benchmark does not record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

SIZE = 64


def _field(rng: np.random.Generator) -> np.ndarray:
    x = gaussian_filter(rng.normal(size=(SIZE, SIZE)), 3.0)
    x = (x - x.min()) / (x.max() - x.min() + 1e-9)
    return 0.3 + 0.4 * x


def _shading() -> np.ndarray:
    """Smooth shading patterns (6, SIZE, SIZE): ramps, bowls, a saddle, a wave."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
    return np.stack([xx, yy, xx**2 - 1 / 12, yy**2 - 1 / 12, xx * yy, np.cos(2 * np.pi * xx) * 0.3])


def _copy(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    shade = np.tensordot(rng.normal(0, strength, 6), _shading(), 1)
    y = gaussian_filter(x, 0.7) + rng.normal(0, 0.05) + shade + rng.normal(0, 0.01, x.shape)
    return np.clip(y, 0, 1)


def _save(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"{name}.png")


def make_copies(
    root: Path, *, n_real: int = 12, n_gen: int = 60, free: float = 0.2, strength: float = 0.8, seed: int = 0
) -> dict:
    """dev/{used,not_used,generated}, test/{real_unknown_1,generated_1}, test_truth.csv under `root`.

    `n_real` used and `n_real` not-used images per split; each split's `n_gen` generated images copy random used
    images of either split (a share `free` copies nothing). Returns {"sources": {split: {gen key: real key}},
    "truth": {test key: 0|1}}.
    """
    rng = np.random.default_rng(seed)
    reals = {}
    for split, prefix in (("dev", None), ("test", "real_unknown")):
        for label in ("used", "not_used"):
            for i in range(n_real):
                reals[(split, label, i)] = (_field(rng), prefix)
    used = [(k, v[0]) for k, v in reals.items() if k[1] == "used"]
    keys, truth = {}, {}
    order = rng.permutation([k for k in reals if k[0] == "test"].__len__())
    test_keys = [k for k in reals if k[0] == "test"]
    for j, k in enumerate(test_keys):
        keys[k] = f"real_unknown_{order[j] + 1:04d}"
        truth[keys[k]] = int(k[1] == "used")
        _save(root / "test" / "real_unknown_1", keys[k], reals[k][0])
    for k in reals:
        if k[0] == "dev":
            keys[k] = f"{k[1]}_{k[2] + 1:04d}"
            _save(root / "dev" / k[1], keys[k], reals[k][0])
    sources: dict[str, dict[str, str | None]] = {"dev": {}, "test": {}}
    for split, folder in (("dev", "generated"), ("test", "generated_1")):
        for i in range(n_gen):
            name = f"generated_{i + 1:05d}"
            if rng.random() < free:
                _save(root / split / folder, name, _copy(_field(rng), rng, strength))
                sources[split][name] = None
                continue
            k, image = used[rng.integers(len(used))]
            _save(root / split / folder, name, _copy(image, rng, strength))
            sources[split][name] = keys[k]
    lines = ["figure_id,label"] + [f"{k},{v}" for k, v in sorted(truth.items())]
    (root / "test_truth.csv").write_text("\n".join(lines) + "\n")
    return {"sources": sources, "truth": truth}
