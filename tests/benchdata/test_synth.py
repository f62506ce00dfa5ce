"""Benchmark builder: the 2023 layout, truth outside test/, no near-copies, repeatability, real folders, CLI."""

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fingerprint.benchdata.difficulty import measure_difficulty
from fingerprint.benchdata.params import resolve_params
from fingerprint.benchdata.synth import LEVELS, build_benchmark
from fingerprint.cli.synth import main as synth_main
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation.metrics import read_truth
from launch import TWO_CPU_PROCESSES, cpu_env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "bench"
    info = build_benchmark(out, level="tiny", seed=0, progress=False)
    return out, info


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _hashes(root: Path, skip=("synth.json",)) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _load(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())])


def test_layout_and_counts(tiny):
    out, info = tiny
    p = LEVELS["tiny"]
    assert sorted(x.name for x in out.iterdir()) == ["dev", "real_sources.csv", "synth.json", "test", "test_truth.csv"]
    assert _pngs(out / "dev" / "generated") == [f"generated_{i:04d}.png" for i in range(1, p["dev_generated"] + 1)]
    assert _pngs(out / "dev" / "used") == [f"used_{i:04d}.png" for i in range(1, p["dev_used"] + 1)]
    assert _pngs(out / "dev" / "not_used") == [f"not_used_{i:04d}.png" for i in range(1, p["dev_not_used"] + 1)]
    assert _pngs(out / "test" / "generated_1") == [f"generated_{i:05d}.png" for i in range(1, p["test_generated"] + 1)]
    n_unknown = p["test_used"] + p["test_not_used"]
    assert _pngs(out / "test" / "real_unknown_1") == [f"real_unknown_{i:04d}.png" for i in range(1, n_unknown + 1)]
    for f in (out / "dev" / "used").iterdir():
        with Image.open(f) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (p["image_size"], p["image_size"])
    assert info["counts"]["test"]["real_unknown"] == n_unknown
    assert info["counts"]["generator_training_images"] == p["dev_used"] + p["test_used"]


def test_truth_is_beside_test_and_balanced(tiny):
    out, _ = tiny
    # nothing but the two image folders of PNGs inside test/
    assert sorted(x.name for x in (out / "test").iterdir()) == ["generated_1", "real_unknown_1"]
    assert all(f.suffix == ".png" for f in (out / "test").rglob("*") if f.is_file())
    lines = (out / "test_truth.csv").read_text().splitlines()
    assert lines[0] == "figure_id,label"
    truth = read_truth(out / "test_truth.csv")
    assert list(truth) == [p[:-4] for p in _pngs(out / "test" / "real_unknown_1")]
    assert sum(truth.values()) == LEVELS["tiny"]["test_used"]
    labels = list(truth.values())
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)  # shuffled


def test_real_images_are_all_different_and_sourced(tiny):
    out, info = tiny
    real = np.concatenate(
        [_load(out / "dev" / "used"), _load(out / "dev" / "not_used"), _load(out / "test" / "real_unknown_1")]
    )
    assert len({r.tobytes() for r in real}) == len(real)
    with open(out / "real_sources.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(real)
    assert {r["folder"] for r in rows} == {"dev/used", "dev/not_used", "test/real_unknown_1"}
    assert all(r["source"].startswith("phantom:patient=") for r in rows)
    assert info["source"] == "phantom" and info["real_images"]["groups"] == len(real)


def test_no_synthetic_image_nearly_equals_a_real_one(tiny):
    out, info = tiny
    real = (
        np.concatenate(
            [_load(out / "dev" / "used"), _load(out / "dev" / "not_used"), _load(out / "test" / "real_unknown_1")]
        )
        .reshape(-1, 64 * 64)
        .astype(float)
    )
    gen = (
        np.concatenate([_load(out / "dev" / "generated"), _load(out / "test" / "generated_1")])
        .reshape(-1, 64 * 64)
        .astype(float)
    )

    def unit(x):
        x = x - x.mean(1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    corr = unit(gen) @ unit(real).T
    assert corr.max() <= 0.99
    assert info["near_duplicates"]["max_correlation"] == 0.99
    assert info["near_duplicates"]["dev"]["max_kept_correlation"] <= 0.99


def test_strict_threshold_rejects_and_resamples(tmp_path):
    """With a low bound many samples are rejected; they are redrawn and counted, never kept."""
    out = tmp_path / "b"
    info = build_benchmark(out, level="tiny", seed=0, progress=False, max_correlation=0.91, epochs=30)
    nd = info["near_duplicates"]
    assert nd["rejected"] > 0
    assert nd["dev"]["drawn"] == LEVELS["tiny"]["dev_generated"] + nd["dev"]["rejected"]
    assert nd["dev"]["max_kept_correlation"] <= 0.91 and nd["test"]["max_kept_correlation"] <= 0.91
    assert len(_pngs(out / "dev" / "generated")) == LEVELS["tiny"]["dev_generated"]


def test_synth_json_records_everything(tiny):
    out, info = tiny
    assert json.loads((out / "synth.json").read_text()) == info
    assert info["format"] == "fingerprint-synth/1" and info["level"] == "tiny" and info["seed"] == 0
    assert info["params"]["generator"]["epochs"] == LEVELS["tiny"]["generator"]["epochs"]
    curve = info["generator"]["curve"]
    assert len(curve) == LEVELS["tiny"]["generator"]["epochs"] and curve[-1]["loss"] < curve[0]["loss"]
    assert info["generator"]["upsampler_curve"]
    assert info["generator"]["world_size"] == 1
    assert {"real_images", "training", "sampling", "realism", "writing", "difficulty", "total"} <= set(info["timings"])
    realism = info["realism"]  # fingerprint.benchdata.realism, on the images written
    assert realism["hf_ratio"] > 0 and realism["frechet"]["real_vs_real"] > 0 and realism["frechet"]["ratio"] > 1
    for split in ("dev", "test"):
        leak = realism["splits"][split]
        assert leak["pixel_nn_auc"] == info["difficulty"]["pixel_nn_auc"][split]
        assert 0 <= leak["ssim_nn_auc"] <= 1 and 0 <= leak["share_nearest_used"] <= 1
    auc = info["difficulty"]["pixel_nn_auc"]
    assert auc == measure_difficulty(out)  # measured on the files written
    assert 0.0 <= auc["dev"] <= 1.0 and 0.0 <= auc["test"] <= 1.0


def test_same_seed_same_files_other_seed_different(tiny, tmp_path):
    out, info = tiny
    again = tmp_path / "again"
    info2 = build_benchmark(again, level="tiny", seed=0, progress=False)
    assert _hashes(out) == _hashes(again)

    def strip(i):
        return {k: v for k, v in i.items() if k not in ("timings", "generator")}

    assert strip(info) == strip(info2) and info["generator"]["curve"] == info2["generator"]["curve"]
    other = build_benchmark(tmp_path / "other", level="tiny", seed=1, progress=False)
    h0, h1 = _hashes(out), _hashes(tmp_path / "other")
    assert h0.keys() == h1.keys()
    assert sum(h0[k] != h1[k] for k in h0) > 0.9 * len(h0)
    assert other["seed"] == 1


def test_refuses_existing_output_and_force_replaces(tiny, tmp_path):
    out, _ = tiny
    with pytest.raises(FingerprintError, match="already exists"):
        build_benchmark(out, level="tiny", seed=0, progress=False)
    target = tmp_path / "t"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    build_benchmark(target, level="tiny", seed=2, progress=False, force=True, dev_generated=5, test_generated=7)
    assert not (target / "stale.txt").exists()
    assert len(_pngs(target / "test" / "generated_1")) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no temporary folder left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(FingerprintError, match="not a folder"):
        build_benchmark(tmp_path / "file", level="tiny", progress=False, force=True)


def test_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(FingerprintError, match="keeps reproducing"):
        build_benchmark(out, level="tiny", seed=0, progress=False, max_correlation=0.01)
    assert list(tmp_path.iterdir()) == []


def test_params_resolution():
    p = resolve_params("tiny", seed=5, epochs=3, dev_used=4, temperature=None)
    assert p.generator.epochs == 3 and p.dev_used == 4 and p.seed == 5
    assert p.generator.temperature == LEVELS["tiny"]["generator"]["temperature"]
    for level in ("easy", "medium", "hard"):
        q = resolve_params(level)
        assert (q.image_size, q.dev_generated, q.dev_used, q.dev_not_used) == (256, 500, 80, 80)
        assert (q.test_generated, q.test_used, q.test_not_used) == (2000, 100, 100)
    # the levels differ in how closely the generator fits its training set
    e, m, h = (resolve_params(lv).generator for lv in ("easy", "medium", "hard"))
    assert e.epochs > m.epochs > h.epochs and e.components > m.components > h.components
    with pytest.raises(FingerprintError, match="unknown level"):
        resolve_params("extreme")
    with pytest.raises(FingerprintError, match="unknown benchmark parameter"):
        resolve_params("tiny", colour="red")
    with pytest.raises(FingerprintError, match="multiple of the generator resolution"):
        resolve_params("tiny", image_size=48)
    with pytest.raises(FingerprintError, match="synth.threads must be >= 1"):
        resolve_params("tiny", threads=0)
    with pytest.raises(FingerprintError, match="synth.temperature must be >= 0"):
        resolve_params("tiny", temperature=-1.0)
    with pytest.raises(FingerprintError, match="synth.dev_used must be >= 1"):
        resolve_params("tiny", dev_used=0)
    with pytest.raises(FingerprintError, match="phantom source only"):
        resolve_params("tiny", real_dir=".", slices_per_patient=2)
    with pytest.raises(FingerprintError, match="not found"):
        resolve_params("tiny", real_dir="/nonexistent/folder")


def test_slices_per_patient_puts_siblings_across_roles(tmp_path):
    info = build_benchmark(tmp_path / "b", level="tiny", seed=0, progress=False, slices_per_patient=4)
    n_real = sum(LEVELS["tiny"][k] for k in ("dev_used", "dev_not_used", "test_used", "test_not_used"))
    assert info["real_images"]["groups"] == -(-n_real // 4)
    assert info["real_images"]["not_used_with_used_sibling"] > 0
    with open(tmp_path / "b" / "real_sources.csv") as f:
        patients = [r["source"].split(",")[0] for r in csv.DictReader(f)]
    assert len(set(patients)) == -(-n_real // 4)


def _make_real_dir(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    sub = root / "nested"
    sub.mkdir(parents=True)
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        yy, xx = np.mgrid[:h, :w]
        base = (128 + 100 * np.sin(xx / (3 + i) + i) * np.cos(yy / (4 + i % 5))).clip(0, 255)
        kind = i % 4
        if kind == 0:
            Image.fromarray(base.astype(np.uint8)).save(root / f"img{i}.png")
        elif kind == 1:
            rgb = np.stack([base, base[::-1], 255 - base], -1).astype(np.uint8)
            Image.fromarray(rgb).save(sub / f"img{i}.jpg", quality=95)
        elif kind == 2:
            Image.fromarray((base * 200).astype(np.uint16)).save(sub / f"img{i}.png")
        else:
            rgba = np.dstack([base, base, base, np.full_like(base, 200)]).astype(np.uint8)
            Image.fromarray(rgba, "RGBA").save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "copy.png").write_bytes((root / "img0.png").read_bytes())
    (root / "notes.txt").write_text("not an image")


def test_real_dir_builds_the_same_layout(tmp_path):
    src = tmp_path / "mine"
    _make_real_dir(src, 48)
    out = tmp_path / "bench"
    info = build_benchmark(out, level="tiny", seed=0, real_dir=src, progress=False)
    assert info["source"] == "real_dir" and info["params"]["real_dir"] == str(src)
    assert info["real_images"]["skipped"] == {"unreadable": 1, "duplicate": 1}
    for f in (out / "dev" / "used").iterdir():
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (64, 64)
    with open(out / "real_sources.csv") as f:
        sources = {r["source"] for r in csv.DictReader(f)}
    assert all((src / s).is_file() for s in sources)
    assert "broken.png" not in sources


def test_real_dir_with_too_few_images(tmp_path):
    src = tmp_path / "few"
    _make_real_dir(src, 8)
    with pytest.raises(FingerprintError, match=r"few: 8 usable images .* need 44"):
        build_benchmark(tmp_path / "b", level="tiny", real_dir=src, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FingerprintError, match="no image files"):
        build_benchmark(tmp_path / "b", level="tiny", real_dir=empty, progress=False)


def test_cli_builds_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = synth_main(
        [
            str(out),
            "--level",
            "tiny",
            "--seed",
            "1",
            "--dev-generated",
            "8",
            "--test-generated",
            "9",
            "--epochs",
            "5",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "pixel-NN AUC dev" in capsys.readouterr().out
    info = json.loads((out / "synth.json").read_text())
    assert info["params"]["generator"]["epochs"] == 5 and info["params"]["dev_generated"] == 8
    rc = synth_main([str(out), "--level", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_cli_config_file(tmp_path, capsys):
    cfg = tmp_path / "synth.toml"
    cfg.write_text('level = "tiny"\n[synth]\ndev-generated = 6\ntest-generated = 6\nepochs = 3\n')
    rc = synth_main([str(tmp_path / "o"), "--config", str(cfg), "--no-progress"])
    assert rc == 0
    assert len(_pngs(tmp_path / "o" / "dev" / "generated")) == 6


@pytest.mark.slow
def test_two_process_launch(tmp_path):
    """Generator training under `accelerate launch` with two gloo processes; rank 0 writes."""
    out = tmp_path / "mp"
    env = cpu_env()
    cmd = [
        *TWO_CPU_PROCESSES,
        "-m",
        "fingerprint",
        "synth",
        str(out),
        "--level",
        "tiny",
        "--seed",
        "0",
        "--epochs",
        "10",
        "--no-progress",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "synth.json").read_text())
    assert info["generator"]["world_size"] == 2
    assert len(_pngs(out / "test" / "real_unknown_1")) == 20
    assert res.stdout.count("pixel-NN AUC dev") == 1  # one report, from rank 0


def test_widen_writes_wide_values_that_map_back_to_the_8_bit_image():
    from fingerprint.benchdata.layout import widen

    img = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    img[0, 0], img[0, 1] = 0, 255
    for bits in (12, 16):
        wide = widen(img, bits, (1, 2, 3))
        top = (1 << bits) - 1
        assert wide.dtype == np.uint16 and wide.max() <= top and len(np.unique(wide)) > 256
        np.testing.assert_array_equal(np.rint(wide / top * 255).astype(np.uint8), img)
        np.testing.assert_array_equal(wide, widen(img, bits, (1, 2, 3)))  # seeded
