"""The benchmark harness: a tiny end-to-end run of run.py (so the code cannot rot) and its helpers.

No timing assertions: only that the harness runs, writes the fields the
README table is built from, and that its helpers compute what they claim.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import run as bench_run  # noqa: E402
from bench_retrieval import numpy_topk, overlap  # noqa: E402
from bench_synth_families import summarize as families_summary  # noqa: E402
from bench_train import train_command  # noqa: E402


def test_run_retrieval_tiny_writes_json_and_table(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--tiny", "--only", "retrieval", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "retrieval.json").read_text())
    assert report["benchmark"] == "retrieval" and report["size"] == "tiny" and report["seed"] == 0
    for key in ("machine", "load_avg", "wall_s", "headline", "rows", "threads"):
        assert key in report
    for key in ("cpu", "cores", "torch", "faiss", "numpy"):
        assert report["machine"][key]
    assert len(report["load_avg"]["before"]) == 3
    assert [r["n"] for r in report["rows"]] == [2_000, 8_000]
    for row in report["rows"]:
        assert row["dim"] == 128 and row["k"] == 10
        assert row["numpy_vs_flat_agreement"] == pytest.approx(1.0, abs=0.02)  # both exact
        assert 0.0 <= row["ivf_recall_at_10"] <= 1.0
        assert set(row["ratios"]) == {"flat_vs_numpy", "ivf_vs_flat", "ivf_vs_numpy"}
        assert all(v > 0 for v in row["ratios"].values())
        assert row["ivf"]["nlist"] >= 1 and row["ivf"]["sweep"]
    assert {h["metric"].split(",")[0] for h in report["headline"]} == {
        "retrieval: FAISS Flat speed-up over numpy",
        "retrieval: IVF speed-up over Flat",
    }
    readme = (out / "README.md").read_text()
    assert bench_run.START in readme and bench_run.END in readme
    assert "| retrieval | retrieval: FAISS Flat speed-up over numpy" in readme
    assert "| 8,000 |" in readme
    assert "Not run: no GPU" in readme


def test_run_rejects_unknown_benchmark(tmp_path, capsys):
    assert bench_run.main(["--only", "retrieval,warp", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "warp" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_parse_only_keeps_pipeline_order_and_device_default():
    assert bench_run.parse_only("scaling,stream", "cpu") == ["stream", "scaling"]
    assert bench_run.parse_only(None, "cpu") == list(bench_run.ORDER)
    assert bench_run.parse_only(None, "cuda") == ["embed", "train"]


def _fake_result(path: Path, name: str, value: float, met: bool | None) -> None:
    path.write_text(
        json.dumps(
            {
                "benchmark": name,
                "size": "tiny",
                "seed": 0,
                "wall_s": 1.0,
                "what": "x",
                "load_avg": {"before": [1.0, 1.0, 1.0], "after": [1.0, 1.0, 1.0]},
                "machine": {
                    "cpu": "CPU-X",
                    "cpu_flags": ["avx2"],
                    "cores": 2,
                    "memory_gb": 4,
                    "torch": "t",
                    "torchvision": "v",
                    "faiss": "f",
                    "numpy": "n",
                    "python": "p",
                },
                "headline": [{"metric": f"{name} figure", "value": value, "target": ">= 2x", "met": met, "note": ""}],
                "results": [{"method": "files", "workers": 1, "images_per_s": 10.0}],
            }
        )
    )


def test_readme_regeneration_keeps_prose_and_is_idempotent(tmp_path):
    _fake_result(tmp_path / "stream.json", "stream", 3.5, True)
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\nHand-written intro.\n\n{bench_run.START}\nold table\n{bench_run.END}\n\nClosing prose.\n"
    )
    bench_run.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert text.startswith("# Title\n\nHand-written intro.\n\n") and text.endswith("\n\nClosing prose.\n")
    assert "old table" not in text
    assert "| stream | stream figure | 3.5 | >= 2x | yes |" in text and "Machine: CPU-X (avx2), 2 cores" in text
    bench_run.update_readme(readme, tmp_path)
    assert readme.read_text() == text
    _fake_result(tmp_path / "gpu_stream.json", "stream", 1.5, False)
    bench_run.update_readme(readme, tmp_path)
    assert "| gpu_stream | stream figure | 1.5 | >= 2x | **no** |" in readme.read_text()


def test_readme_without_markers_gets_a_section_appended(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Notes\n\nKeep me.\n")
    bench_run.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert text.startswith("# Notes\n\nKeep me.\n") and "No results yet" in text and bench_run.END in text


def test_numpy_topk_matches_a_full_sort():
    rng = np.random.default_rng(0)
    x = common.random_unit(500, 16, rng)
    q = common.random_unit(70, 16, rng)  # not a multiple of the chunk
    sims, ids = numpy_topk(x, q, 5, chunk=32)
    full = q @ x.T
    want = np.argsort(-full, axis=1)[:, :5]
    assert overlap(ids, want) == 1.0
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, axis=1), rtol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)  # best first


def test_fit_exponent_and_ratio():
    xs = [1_000, 10_000, 100_000]
    assert common.fit_exponent(xs, [3e-3 * x for x in xs]) == pytest.approx(1.0)
    assert common.fit_exponent(xs, [2 + 0 * x for x in xs]) == pytest.approx(0.0, abs=1e-9)
    assert common.fit_exponent(xs, [x**2 for x in xs]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        common.fit_exponent([1], [1])
    assert common.ratio(6.0, 3.0) == 2.0
    assert common.ratio(1.0, 0.0) is None


def test_time_interleaved_runs_each_way_in_turns():
    calls = []
    timed = common.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert set(timed) == {"a", "b"} and all(len(t.samples) == 3 and t.best >= 0 for t in timed.values())
    assert timed["a"].as_dict()["repeats"] == 3


def test_two_process_training_uses_a_real_multi_process_launch(tmp_path):
    cmd, env = train_command(
        tmp_path / "shards", tmp_path / "out", {"queries": 4, "augment": False}, processes=2, device="cpu"
    )
    assert Path(cmd[0]).name == "accelerate" and cmd[1] == "launch"
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    assert "--cpu" not in cmd  # `--cpu --num_processes 2` silently starts one process
    assert env["ACCELERATE_USE_CPU"] == "1"
    assert cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3] == ["fingerprint", "train"]
    assert "--no-augment" in cmd and cmd[cmd.index("--queries") + 1] == "4"
    one, env1 = train_command(tmp_path / "shards", tmp_path / "out", {}, processes=1, device="cpu")
    assert one[0] == sys.executable and "ACCELERATE_USE_CPU" not in env1


def test_write_dev_folder_layout(tmp_path):
    paths = common.write_dev_folder(tmp_path, n_generated=3, n_used=1, n_not_used=2, size=32, seed=1, unique=2)
    assert [p.name for p in paths["generated"]] == ["generated_0001.png", "generated_0002.png", "generated_0003.png"]
    assert len(paths["used"]) == 1 and len(paths["not_used"]) == 2
    with Image.open(paths["generated"][2]) as img:
        assert img.size == (32, 32) and img.mode == "L"
    # cycled: the third generated image repeats the first rendered one
    assert paths["generated"][2].read_bytes() == paths["generated"][0].read_bytes()


def test_scaling_writes_a_features_folder_and_renders_its_table(tmp_path):
    """The scaling benchmark's synthetic folder is a real features folder; its report renders (no timing)."""
    import bench_scaling

    from fingerprint.embedding.features import FeatureStore

    stats = bench_scaling.write_folder(tmp_path / "f", 250, channels=8, seed=0)
    store = FeatureStore.open(tmp_path / "f")
    assert store.count("generated") == 250 and store.count("real") == bench_scaling.N_REAL and stats["parts"] == 1
    emb = store.gallery().embeddings_at(np.arange(250))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    stage = {"seconds": 1.0, "peak_rss_mb": 800.0, "train": 0.5, "add": 0.5, "recall_at_10": 0.5,
             "recall_at_10_refined": 0.9}  # fmt: skip
    rows = [{"generated": g, "features_mb": 1.0, "write_s": 0.1, "index": stage, "score": stage, "in_memory": stage}
            for g in (1_000, 10_000)]  # fmt: skip
    report = bench_scaling._report(rows, {"peak_rss_mb": 700.0}, "m", 2, (1_000, 10_000))
    assert report["memory_flat"] and report["at_most_linear"] and report["exponents"]["score"]["time"] == 0.0
    assert "| 10,000 | 1.0 | 0.1 | 1.0 (0.5 + 0.5) | 800 | 0.5 (0.9) |" in "\n".join(bench_scaling.table(report))


def test_scaling_fused_pool_is_a_readable_shard_folder(tmp_path):
    """The fused scaling benchmark's sampled pool: shards with a manifest that `fingerprint` streams as packed."""
    import bench_scaling

    from fingerprint.data.stream import StreamConfig, make_loader

    class Drawn:
        def draw(self, n, rng):
            return rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)

    reals = [(f"used_{i}", "real", "used", np.full((64, 64), i, np.uint8)) for i in range(3)]
    bench_scaling.write_pool(tmp_path / "dev", reals, Drawn(), 5000, seed=0)
    man = json.loads((tmp_path / "dev" / "manifest.json").read_text())
    assert man["counts"]["role"] == {"real": 3, "generated": 5000} and man["image_size"] == 64
    batches = list(make_loader(tmp_path / "dev", StreamConfig(batch_size=1024), rank=0, world_size=1))
    assert sum(len(b["key"]) for b in batches) == 5003 and batches[0]["image"].shape[-1] == 64


def test_synth_families_summary_compares_the_families_per_level():
    def build(family, level, wall, hf, fd):
        return {"family": family, "level": level, "wall_s": wall, "cpu_s": wall / 2, "hf_ratio": hf,
                "frechet": {"ratio": fd}}  # fmt: skip

    out = families_summary([build("vae", "medium", 100.0, 0.05, 40.0), build("sharp", "medium", 400.0, 0.5, 4.0),
                            build("vae", "tiny", 10.0, 0.1, 10.0)])  # fmt: skip
    ratios = out["medium"]["sharp_over_vae"]
    assert ratios["wall_s"] == 4.0 and ratios["hf_ratio"] == 10.0 and ratios["frechet_ratio"] == 0.1
    assert out["medium"]["sharp"]["over_budget"] == 1 and out["medium"]["vae"]["over_budget"] == 0
    assert "sharp_over_vae" not in out["tiny"]
    gan = {**build("gan", "medium", 200.0, 0.2, 8.0), "cpu": "another CPU"}
    out = families_summary([build("vae", "medium", 100.0, 0.05, 40.0), gan])
    assert out["medium"]["gan"]["wall_s"] == 200.0 and "gan_over_vae" not in out["medium"]  # not across machines
    out = families_summary([build("vae", "medium", 100.0, 0.05, 40.0), build("gan", "medium", 200.0, 0.2, 8.0)])
    assert out["medium"]["gan_over_vae"]["wall_s"] == 2.0


def test_results_record_no_folder_outside_the_repository():
    """Paths in a result's command and fields: inside the repository relative to it, outside it by name only; and
    no committed result names a folder outside the repository."""
    inside = common.ROOT / "benchmarks" / "results"
    assert (
        common.portable(inside) == "benchmarks/results" and common.portable("/elsewhere/data/medium-s0") == "medium-s0"
    )
    assert common.portable("--n-boot") == "--n-boot" and common.portable("data/hard-s1") == "data/hard-s1"
    for path in sorted((common.ROOT / "benchmarks" / "results").glob("*.json")):
        absolute = re.findall(r"(?:^|[\"\s=:])(/(?:work|tmp|home|root|scratch)/[^\"\s]*)", path.read_text())
        assert absolute == [], f"{path.name} names a folder outside the repository ({absolute[0]})"
