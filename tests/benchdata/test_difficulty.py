"""Benchmark difficulty: the pixel nearest-neighbour distance and its ROC-AUC, on arrays and on a written layout."""

import numpy as np
from PIL import Image

from fingerprint.benchdata.difficulty import measure_difficulty, nearest_distances, pixel_nn_auc


def test_nearest_distances_and_auc():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    gen = np.concatenate([real[:3], rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)])
    d = nearest_distances(real, gen, chunk=3)
    want = [min(np.linalg.norm((r.astype(float) - g) / 255.0) for g in gen) for r in real]
    np.testing.assert_allclose(d, want, atol=1e-5)
    assert np.allclose(d[:3], 0.0, atol=1e-3)
    assert pixel_nn_auc(real, np.array([1, 1, 1, 0, 0, 0]), gen) == 1.0


def test_measure_difficulty_on_a_layout(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {name: rng.integers(0, 256, (4, 8, 8), dtype=np.uint8) for name in ("used", "not_used")}
    folders = {"dev/used": ("used", imgs["used"]), "dev/not_used": ("not_used", imgs["not_used"]),
               "dev/generated": ("generated", imgs["used"]), "test/generated_1": ("generated", imgs["not_used"]),
               "test/real_unknown_1": ("real_unknown", np.concatenate([imgs["used"], imgs["not_used"]]))}  # fmt: skip
    for folder, (prefix, arrays) in folders.items():
        (tmp_path / folder).mkdir(parents=True)
        for i, a in enumerate(arrays, 1):
            Image.fromarray(a).save(tmp_path / folder / f"{prefix}_{i:04d}.png")
    assert measure_difficulty(tmp_path) == {"dev": 1.0}  # no truth: dev only
    keys = [f"real_unknown_{i:04d}" for i in range(1, 9)]
    (tmp_path / "test_truth.csv").write_text(
        "figure_id,label\n" + "".join(f"{k},{int(i < 4)}\n" for i, k in enumerate(keys))
    )
    assert measure_difficulty(tmp_path) == {"dev": 1.0, "test": 0.0}  # test generated copies the not-used ones
