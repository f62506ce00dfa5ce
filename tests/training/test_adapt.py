"""The adaptation stage: the learned metric retrieves the generator's copies better than pixels, is cross-fitted,
is saved as a checked artefact, and gives the same metric under a real 2-process launch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fingerprint.core.config import ConfigError
from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.membership.profile import flat, read_split
from fingerprint.training.adapt import AdaptConfig, kissme, load_metric, pseudo_pairs, run_adapt
from launch import TWO_CPU_PROCESSES, cpu_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from copies import make_copies  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    info = make_copies(root / "data", n_real=24, n_gen=150, strength=1.0, seed=1)
    for split in ("dev", "test"):
        pack(root / "data" / split, root / "shards" / split, image_size=64, max_count=40)
    return root, info


@pytest.fixture(scope="module")
def metric_dir(data):
    root, _ = data
    cfg = AdaptConfig(shards=(root / "shards" / "dev", root / "shards" / "test"), out=root / "metric", threads=2)
    run_adapt(cfg)
    return root / "metric"


def _vectors(root: Path):
    splits = {s: read_split(root / "shards" / s, [32], 64, "raise") for s in ("dev", "test")}
    real_keys = splits["dev"].real_keys + splits["test"].real_keys
    reals = np.concatenate([flat(splits[s].real[32], True) for s in ("dev", "test")])
    gen_keys = [(s, k) for s in ("dev", "test") for k in splits[s].gen_keys]
    gens = np.concatenate([flat(splits[s].gen[32], True) for s in ("dev", "test")])
    return real_keys, reals, gen_keys, gens


def _own_copy_recall(real_keys, reals, gen_keys, gens, sources, space) -> float:
    """Share of the used reals with copies whose nearest generated image (of both pools) is one of its copies."""
    hits = []
    for i, key in enumerate(real_keys):
        copies = {j for j, (s, g) in enumerate(gen_keys) if sources[s][g] == key}
        if copies:
            r, g = space(reals[i : i + 1], i), space(gens, i)
            hits.append(int(np.argmin(((g - r) ** 2).sum(1))) in copies)
    return float(np.mean(hits))


def test_adaptation_retrieves_own_copies_better_than_the_untrained_space(data, metric_dir):
    root, info = data
    vecs = _vectors(root)
    metric = load_metric(metric_dir)
    held_out = [metric.fold_of[k] for k in vecs[0]]  # each real measured in the metric that never saw its pairs
    pixels = _own_copy_recall(*vecs, info["sources"], lambda x, i: x)
    learned = _own_copy_recall(*vecs, info["sources"], lambda x, i: metric.transform(x, held_out[i]))
    assert pixels < 0.7
    assert learned >= pixels + 0.2, (pixels, learned)


def test_metric_is_cross_fitted_and_checked(metric_dir, tmp_path):
    meta = json.loads((metric_dir / "metric.json").read_text())
    folds = meta["folds"]
    assert len(meta["metrics"]) == folds + 1 and meta["metrics"][-1]["held_out_fold"] is None
    counts = np.bincount(list(meta["fold_of"].values()), minlength=folds)
    for m, stats in enumerate(meta["metrics"][:folds]):
        assert stats["n_real"] == len(meta["fold_of"]) - counts[m]  # fold m's reals never shape metric m
    assert load_metric(metric_dir).projection.shape[0] == folds + 1
    copy = tmp_path / "copy"
    shutil.copytree(metric_dir, copy)
    (copy / "metric.safetensors").write_bytes((copy / "metric.safetensors").read_bytes()[:-8] + b"0" * 8)
    with pytest.raises(FingerprintError, match="sha256"):
        load_metric(copy)


def test_pseudo_pairs_never_use_a_held_out_real():
    rng = np.random.default_rng(0)
    zr = rng.normal(size=(10, 4))
    zg = np.repeat(zr, 3, axis=0) + rng.normal(0, 0.01, (30, 4))  # three copies of each real
    allowed = np.arange(10) % 2 == 0
    found = pseudo_pairs(zr, zg, allowed, 0.95, "cpu")
    assert allowed[found["nn"]].all()
    assert np.isinf(found["real_min"].numpy()[~allowed]).all() and np.isfinite(found["real_min"].numpy()[allowed]).all()
    own = np.repeat(np.arange(10), 3)
    assert (found["nn"][allowed[own]] == own[allowed[own]]).all()  # copies of allowed reals find them


def test_kissme_ignores_the_directions_copies_vary_along():
    pos = np.diag([10.0, 10.0, 0.01, 0.01])  # copies differ a lot along the first two axes
    neg = np.eye(4)
    L = kissme(pos, neg, 0.0)
    M = L.T @ L
    assert M[0, 0] < 1e-9 and M[1, 1] < 1e-9 and M[2, 2] > 50


def test_config_errors_name_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"adapt\.ratio must be in \(0, 1\]"):
        AdaptConfig(shards=(tmp_path,), out=tmp_path, ratio=1.5)
    with pytest.raises(ConfigError, match=r"adapt\.folds must be >= 2"):
        AdaptConfig(shards=(tmp_path,), out=tmp_path, folds=1)
    with pytest.raises(ConfigError, match=r"adapt\.shrink must be below 1"):
        AdaptConfig(shards=(tmp_path,), out=tmp_path, shrink=1.0)


@pytest.mark.slow
def test_two_process_launch_learns_the_same_metric(data, metric_dir, tmp_path):
    root, _ = data
    cmd = [*TWO_CPU_PROCESSES, str(ROOT / "tests" / "_dist_adapt.py"), str(tmp_path / "m"), str(tmp_path / "report")]
    cmd += [str(root / "shards" / "dev"), str(root / "shards" / "test")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=cpu_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / "report" / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["world_size"] for x in ranks] == [2, 2] and "MULTI_CPU" in ranks[0]["distributed_type"]
    assert sum(x["local_images"] for x in ranks) == ranks[0]["summary"]["n_generated"] + ranks[0]["summary"]["n_real"]
    one, two = load_metric(metric_dir), load_metric(tmp_path / "m")
    assert one.meta["metrics"] == two.meta["metrics"] and one.fold_of == two.fold_of
    for m in range(len(one.projection)):
        a, b = (torch.from_numpy(x.projection[m]) for x in (one, two))  # PCA signs may differ; the metric may not
        assert torch.allclose(a.T @ a, b.T @ b, rtol=1e-4, atol=1e-6 * float((a.T @ a).abs().max()))
    assert np.allclose(one.mean, two.mean)
