"""The similarity profile: exact k-NN with the query excluded from its own reference, calibrated columns,
aligned evidence, the profile files of both splits (labels of dev only), and config errors."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fingerprint.core.config import ConfigError
from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.embedding.features import Features
from fingerprint.membership.align import aligned_ncc
from fingerprint.membership.profile import ProfileConfig, load_profile, run_profile
from fingerprint.membership.spaces import KS_GEN, drop_self, knn_profile, l2_knn
from fingerprint.training.adapt import AdaptConfig, run_adapt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from copies import make_copies  # noqa: E402


def test_reference_excludes_the_query_itself():
    x = np.eye(5, dtype=np.float32)
    cols = knn_profile(x, x + 0.01, x, np.arange(5), "s")
    assert np.allclose(cols["s:ref_1"], np.log(np.sqrt(2) + 1e-6), atol=1e-5)  # not 0: itself is left out
    assert np.allclose(cols["s:cal_1"], cols["s:ref_1"] + cols["s:ngen_1"])
    assert (cols["s:ngen_1"] > cols["s:ngen_3"]).all()  # oriented: closer = higher


def test_drop_self_keeps_k_neighbours_when_the_query_is_not_returned():
    d, ids = np.array([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]), np.array([[0, 4, 5], [7, 8, 9]])
    dd, ii = drop_self(d, ids, np.array([0, 1]))
    assert ii.tolist() == [[4, 5], [7, 8]] and dd.tolist() == [[1.0, 2.0], [1.0, 2.0]]


def test_l2_knn_is_exact():
    rng = np.random.default_rng(0)
    base, q = rng.normal(size=(50, 8)), rng.normal(size=(5, 8))
    d, ids = l2_knn(base, q, 3)
    full = np.sqrt(((q[:, None] - base[None]) ** 2).sum(-1))
    assert (ids == np.argsort(full, 1)[:, :3]).all() and np.allclose(d, np.sort(full, 1)[:, :3], atol=1e-4)


def _rotate(x: torch.Tensor, deg: float) -> torch.Tensor:
    a = math.radians(deg)
    th = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]]).repeat(len(x), 1, 1)
    grid = F.affine_grid(th, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def test_aligned_correlation_undoes_a_small_bend():
    g = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.rand(3, 1, 72, 72, generator=g), 5, 1)[..., :64, :64]
    bent = torch.roll(_rotate(x, 5.0), shifts=(2, -1), dims=(2, 3))
    rows = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    plain = aligned_ncc(x, bent, rows, angles=(0.0,), scales=(1.0,), shift=0)
    searched = aligned_ncc(x, bent, rows)
    assert (searched[:, 0] > plain[:, 0] + 0.05).all()  # the own bent copy, aligned
    assert (searched[:, 0] > searched[:, 1:].max(1)).all()  # still tells images apart
    assert aligned_ncc(x, x, np.array([[0], [1], [2]]))[:, 0] == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    make_copies(root / "data", n_real=8, n_gen=30, seed=2)
    for split in ("dev", "test"):
        pack(root / "data" / split, root / "shards" / split, image_size=64)
    cfg = ProfileConfig(dev=root / "shards" / "dev", test=root / "shards" / "test", out=root / "profile",
                        spaces=("px64", "pn32", "px16", "al64", "ff32"), align_candidates=4,
                        align_references=3)  # fmt: skip
    summary = run_profile(cfg)
    return root, cfg, summary


def test_profile_files_of_both_splits(profiled):
    root, cfg, summary = profiled
    dev, cols = load_profile(root / "profile" / "dev.npz")
    test, tcols = load_profile(root / "profile" / "test.npz")
    assert len(dev) == 16 and len(test) == 16 and set(cols) == set(tcols)
    assert set(dev.labels) == {"used", "not_used"} and set(test.labels) == {"unknown"}
    assert list(dev.keys) == sorted(dev.keys) and dev.meta["n_reference"] == 32
    for space in ("px64", "pn32", "px16", "al64", "ff32"):
        assert f"{space}:ngen_{KS_GEN[-1]}" in cols and f"{space}:cal_3" in cols
    with pytest.raises(ConfigError, match="already exists"):
        run_profile(cfg)


def test_profile_errors(tmp_path, profiled):
    root, _, _ = profiled
    with pytest.raises(ConfigError, match=r"profile\.metric must be given for space k32x"):
        ProfileConfig(dev=tmp_path, test=tmp_path, out=tmp_path)
    with pytest.raises(ConfigError, match=r"profile\.descriptor must be given"):
        ProfileConfig(dev=tmp_path, test=tmp_path, out=tmp_path, spaces=("emb",))
    with pytest.raises(ConfigError, match=r"profile\.spaces must be one of"):
        ProfileConfig(dev=tmp_path, test=tmp_path, out=tmp_path, spaces=("px99",))
    Features(["a"], ["real"], ["used"], np.zeros((1, 2)), None, {}).save(tmp_path / "f.npz")
    with pytest.raises(FingerprintError, match="not a profile file"):
        load_profile(tmp_path / "f.npz")
    with pytest.raises(FingerprintError, match=r"missing\.npz: profile file not found"):
        load_profile(tmp_path / "missing.npz")


def test_bounded_profile_equals_the_exact_one_on_tiny_data(profiled, tmp_path):
    """Flat index and a re-ranking depth that covers the pool: the bounded path gives the exact path's columns,
    every space (the learned metric's cross-fitted one included); its record reports the index's recall."""
    root, cfg, _ = profiled
    run_adapt(AdaptConfig(shards=(cfg.dev, cfg.test), out=tmp_path / "metric", threads=2))
    spaces = ("px64", "pn32", "px16", "k32x", "al64")  # ff32 takes al64's candidate path
    common = {"spaces": spaces, "metric": tmp_path / "metric", "align_candidates": 4, "align_references": 3}
    paths = {}
    for path in ("exact", "bounded"):
        c = replace(cfg, out=tmp_path / path, path=path, log=tmp_path / f"{path}.jsonl", **common)
        assert run_profile(c)["path"] == path
        paths[path] = [load_profile(tmp_path / path / f"{s}.npz") for s in ("dev", "test")]
    for (fe, ce), (fb, cb) in zip(paths["exact"], paths["bounded"]):
        assert list(fe.keys) == list(fb.keys) and list(fe.labels) == list(fb.labels) and set(ce) == set(cb)
        for name in ce:
            assert np.allclose(ce[name], cb[name], atol=1e-4), name
    record = json.loads((tmp_path / "bounded.jsonl").read_text().splitlines()[-1])
    assert record["index"]["px64"]["recall_at_16"] == {"dev": 1.0, "test": 1.0}
    assert not list((tmp_path / "bounded").glob(".pool*"))  # the memory-mapped parts are gone
    # a shallow re-ranking on a coarse code changes the neighbours: the comparison above can fail
    shallow = replace(cfg, out=tmp_path / "shallow", path="bounded", code_dim=1, rerank=1, spaces=("px64",))
    run_profile(shallow)
    _, cs = load_profile(tmp_path / "shallow" / "dev.npz")
    assert not np.allclose(cs["px64:ngen_8"], paths["exact"][0][1]["px64:ngen_8"], atol=1e-4)


def _pool(root: Path, n_gen: int, n_real: int = 10) -> Path:
    """A split's shards: n_real used + n_real not-used + n_gen generated 64 px images."""
    rng = np.random.default_rng(n_gen)
    for folder, n in (("generated", n_gen), ("used", n_real), ("not_used", n_real)):
        (root / "src" / folder).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            Image.fromarray(img).save(root / "src" / folder / f"{folder}_{i:05d}.png")
    pack(root / "src", root / "shards", encoding="npy")
    return root / "shards"


def _peak_rss_kb(dev: Path, test: Path, out: Path, path: str) -> int:
    """Peak resident memory (kB, the process's own VmHWM: getrusage's ru_maxrss keeps the forking parent's peak
    across exec) of a fresh process that runs the profile (px64, pn32) on dev and test (the bounded
    path's PCA sample and coding chunk at 256 images, below the pool sizes measured)."""
    code = (
        "from fingerprint.membership import bounded; "
        "from fingerprint.membership.profile import ProfileConfig, run_profile; "
        "bounded.PCA_SAMPLE = bounded.CHUNK = 256; "
        f"run_profile(ProfileConfig(dev='{dev}', test='{test}', out='{out}', path='{path}', "
        "spaces=('px64', 'pn32'), threads=1)); "
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(done.stdout.split()[-1])


def test_bounded_profile_memory_grows_far_less_than_the_exact_path(tmp_path):
    """A generated pool 10 times larger (300 -> 3,000 at 64 px): the exact path's peak RSS grows by about 150 MB,
    the bounded path's by less than half that (measured 34-42 MB: it still keeps some per-image state), fresh
    processes, VmHWM."""
    test = _pool(tmp_path / "test", 300)
    small, big = _pool(tmp_path / "small", 300), _pool(tmp_path / "big", 3000)
    bounded = [_peak_rss_kb(pool, test, tmp_path / f"b-{i}", "bounded") for i, pool in enumerate((small, big))]
    exact = [_peak_rss_kb(pool, test, tmp_path / f"e-{i}", "exact") for i, pool in enumerate((small, big))]
    assert exact[1] - exact[0] > 100_000, exact  # the pool is large enough to tell the paths apart
    assert bounded[1] - bounded[0] < (exact[1] - exact[0]) / 2, (bounded, exact)
