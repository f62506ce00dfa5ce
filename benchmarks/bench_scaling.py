"""How the out-of-core path grows with the generated set (10k -> 100k -> 1M images): time and peak memory.

For each size G, 200 real and G generated images' synthetic features are
written to disk as a features folder in shards of 10,000 rows, through the
real writer (`feature_store.write_part`, the format `fingerprint embed`
writes): unit embeddings (64-D) in clusters of ~100 around random modes
(cosine ~0.94 to the mode) and random fp16 feature maps of a
reduced-width model (ResNet-18 at 32 px: 512 x 1 x 1, 1 KB an image instead
of 16 KB at 128 px). Then, each in a fresh process (its own peak resident
memory, `ru_maxrss`):

- `index`: `run_index` with IVF1024,PQ16 (capped at G // 39 lists), trained
  on a seeded sample of 50,000 and filled part by part, recall@10 on 200
  queries against exact search (part by part);
- `score`: `run_score` of the relation scorer (top-16 from that index, the
  16 neighbours' maps read from the memory-mapped parts, relation head);
- `in_memory` (the way it was before, for comparison): every feature loaded
  into memory (`Features.load`), a Flat index built over all generated
  embeddings, `relation_scores` on the in-memory arrays.

A process that only imports the same libraries gives the memory floor.
Growth exponents are least-squares slopes of log(time or memory) on log(G).
Writes benchmarks/results/scaling.json.

`--fused SIZES` measures the scorer that writes run.csv on images instead:
the benchmark builder's generator (vae family, tiny preset), trained on the
used phantoms at 64 px, is sampled straight into npy shards (half of each
size per split, 360 labelled/unknown real images), and `fingerprint run
--dev-shards --test-shards` (comparators, clustering, report off) runs on
them in its own process: wall time, generated images/s from shards to
run.csv, peak RSS (the run's process and its largest reader worker), stage
seconds, the profile's path and index recall, test ROC-AUC. The rows go to
scaling.json under "fused", written after every size.

    nice python benchmarks/bench_scaling.py [--quick|--tiny]
    nice python benchmarks/bench_scaling.py --fused 10000,100000,1000000
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import (
    RESULTS_DIR,
    BenchArgs,
    check_device,
    finish,
    fit_exponent,
    headline,
    load_average,
    machine_info,
    peak_rss_mb,
    portable,
    random_unit,
    ratio,
    set_threads,
    standalone_main,
    write_json,
)

log = logging.getLogger(__name__)

NAME = "scaling"
N_REAL = 200
K = 16
DIM = 64
IMAGE_SIZE = 32  # ResNet-18 at 32 px: 512 x 1 x 1 feature maps (the reduced width)
PART = 10_000  # rows per shard part
FACTORY = "IVF1024,PQ16"
TRAIN_SIZE = 50_000
LIMIT_MB = 2048
TOLERANCE = 0.1
MODE_SIZE = 100  # embeddings come in clusters of ~100 around random modes (near-copies cluster; pure noise does not)
SPREAD = 0.25  # noise per coordinate relative to a unit mode / sqrt(DIM): cosine to the mode ~0.94
HERE = Path(__file__).resolve()


def clustered(n: int, modes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors, each a random mode plus noise (ANN indexes are built for clustered data; uniform
    random vectors are their worst case and unlike image embeddings)."""
    x = modes[rng.integers(0, len(modes), n)] + rng.standard_normal((n, modes.shape[1]), dtype=np.float32) * (
        SPREAD / np.sqrt(modes.shape[1])
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_folder(folder: Path, g: int, channels: int, seed: int) -> dict:
    """200 real + g generated rows of synthetic features as a features folder of PART-row parts; its stats."""
    from fingerprint.embedding.features import Features, finish_store, write_part

    rng = np.random.default_rng(seed)
    modes = random_unit(max(1, g // MODE_SIZE), DIM, np.random.default_rng(seed + 1))
    record = {"model_sha256": None, "image_size": IMAGE_SIZE, "fmaps": True}
    names, t0 = [], time.perf_counter()
    n_parts = max(1, -(-g // PART))
    for p in range(n_parts):
        gen = min(PART, g - p * PART)
        real = N_REAL // n_parts + (p < N_REAL % n_parts)
        keys = [f"generated_{p * PART + i:07d}" for i in range(gen)] + [f"real_{p:05d}_{i:03d}" for i in range(real)]
        n = gen + real
        roles = ["generated"] * gen + ["real"] * real
        labels = ["unknown"] * gen + ["used" if i % 2 else "not_used" for i in range(real)]
        fmaps = rng.random((n, channels, 1, 1), dtype=np.float32).astype(np.float16)
        feats = Features(keys, roles, labels, clustered(n, modes, rng), fmaps)
        names.append(f"shard-{p:06d}")
        write_part(folder, names[-1], feats, record)
    finish_store(folder, names, {"image_size": IMAGE_SIZE, "fmaps": True, "shards": "synthetic"})
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"write_s": round(seconds, 2), "features_mb": round(size / 2**20, 1), "parts": n_parts}


def child(stage: str, work: Path, seed: int) -> dict:
    """One stage in this (fresh) process; returns its seconds (imports excluded), peak RSS and what it reports."""
    import faiss  # noqa: F401  (imports first: the stage's seconds are its work)
    import torch  # noqa: F401

    from fingerprint.core.distributed import set_threads as threads
    from fingerprint.embedding.index import IndexConfig, run_index
    from fingerprint.membership.score import ScoreConfig, run_score

    threads(None)
    t0 = time.perf_counter()
    out: dict = {}
    if stage == "index":
        cfg = IndexConfig(features=work / "features", out=work / "index.faiss", index_factory=FACTORY,
                          train_size=TRAIN_SIZE, recall_queries=N_REAL, seed=seed, force=True)  # fmt: skip
        meta = run_index(cfg)
        out = {"factory": meta["factory"], "recall_at_10": round(meta["recall"]["value"], 4),
               "recall_at_10_refined": round(meta["recall"].get("refined", meta["recall"]["value"]), 4),
               "index_mb": round((work / "index.faiss").stat().st_size / 2**20, 2), **meta["seconds"]}  # fmt: skip
    elif stage == "score":
        out_csv = work / "scores" / "relation.csv"
        cfg = ScoreConfig(scorer="relation", features=work / "features", index=work / "index.faiss", k=K,
                          model=work / "model", threshold=0.5, out=out_csv, force=True)  # fmt: skip
        out = {"scored": run_score(cfg)["n"]}
    elif stage == "in_memory":
        out = _in_memory(work)
    return {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": peak_rss_mb(), **out}


def _in_memory(work: Path) -> dict:
    """The pre-out-of-core way: every row in memory, a Flat index over all generated embeddings, score."""
    from fingerprint.embedding.features import Features
    from fingerprint.embedding.index import build_index
    from fingerprint.embedding.inference import relation_scores
    from fingerprint.embedding.model_io import load_model

    model, _ = load_model(work / "model")
    feats = Features.load(work / "features")
    real, gen = feats.select(role="real"), feats.select(role="generated")
    del feats
    result = relation_scores(model, real, gen, build_index(gen.embeddings, "Flat"), k=K)
    return {"scored": len(result.keys), "held_mb": round((gen.embeddings.nbytes + gen.fmaps.nbytes) / 2**20, 1)}


def run_child(stage: str, work: Path, seed: int) -> dict:
    cmd = [sys.executable, str(HERE), "--child", stage, str(work), str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling: {stage} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(g: int, work: Path, channels: int, seed: int, in_memory: bool) -> dict:
    """Write the features of size g, then index, score (and the in-memory way) in fresh processes."""
    row = {"generated": g, "real": N_REAL, "k": K, **write_folder(work / "features", g, channels, seed)}
    for stage in ("index", "score") + (("in_memory",) if in_memory else ()):
        row[stage] = run_child(stage, work, seed)
        done = row[stage]
        log.info("scaling: G=%d %s %.1f s, peak RSS %.0f MB", g, stage, done["seconds"], done["peak_rss_mb"])
    shutil.rmtree(work / "features")
    return row


def run(args: BenchArgs) -> dict:
    """Every size in turn; growth exponents; the report."""
    from fingerprint.embedding.model_io import build_model, save_model
    from fingerprint.embedding.models import ModelConfig, describe

    check_device(args.device)
    started, load_before = time.perf_counter(), load_average()
    threads = set_threads()
    sizes = args.pick((2_000, 8_000), (10_000, 30_000, 100_000), (10_000, 100_000, 1_000_000))
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        model = build_model(ModelConfig(image_size=IMAGE_SIZE, embed_dim=DIM)).eval()
        save_model(model, work / "model", extra={})
        floor = run_child("floor", work, args.seed)
        rows = [measure(g, work, model.channels, args.seed, in_memory=True) for g in sizes]
    report = _report(rows, floor, describe(model), threads, sizes)
    kept = RESULTS_DIR / f"{NAME}.json"  # the fused rows (`--fused`) are measured separately: keep them
    if kept.is_file() and "fused" in json.loads(kept.read_text()):
        report["fused"] = json.loads(kept.read_text())["fused"]
    return finish(NAME, args, report, load_before=load_before, started=started)


def _report(rows: list[dict], floor: dict, model: str, threads: int, sizes: tuple) -> dict:
    gs = [r["generated"] for r in rows]
    exps = {
        stage: {
            "time": round(fit_exponent(gs, [r[stage]["seconds"] for r in rows]), 3),
            "peak_rss": round(fit_exponent(gs, [r[stage]["peak_rss_mb"] for r in rows]), 3),
        }
        for stage in ("index", "score", "in_memory")
    }
    peaks = {s: max(r[s]["peak_rss_mb"] for r in rows) for s in ("index", "score")}
    flat = all(p < LIMIT_MB for p in peaks.values()) and all(exps[s]["peak_rss"] < 0.1 for s in ("index", "score"))
    linear = all(exps[s]["time"] <= 1 + TOLERANCE for s in ("index", "score"))
    last = rows[-1]
    return {
        "what": f"index (IVF-PQ, part by part) and relation scoring of {N_REAL} real images from a features folder "
        f"on disk as G grows {gs[0]:,} -> {gs[-1]:,}, each stage in a fresh process; vs everything in memory",
        "threads": threads,
        "model": model,
        "feature_width": {"embedding_dim": DIM, "fmap": "512 x 1 x 1 fp16 (ResNet-18 at 32 px)", "part_rows": PART},
        "factory": FACTORY,
        "train_size": TRAIN_SIZE,
        "import_floor": floor,
        "rows": rows,
        "exponents": {**exps, "tolerance": TOLERANCE},
        "peak_rss_mb": peaks,
        "memory_flat": flat,
        "at_most_linear": linear,
        "rates": _rates(last),
        "notes": [
            "synthetic features: clustered unit embeddings and random fp16 maps (reduced width); the embedding "
            "stage is not part of this benchmark (its rate is in embed.json); recall@10 is on these synthetic "
            "clusters, not on real image embeddings",
            "index time = training on a sample of at most 50,000 (a fixed cost) + adding every vector part by part",
            "peak_rss_mb is the stage process's ru_maxrss, imports included (import_floor: the same imports alone)",
            "in_memory is the pre-out-of-core way (all features in RAM, Flat index): the comparison",
            "the machine is shared (2 cores); the benchmark ran under nice: expect noisy times",
        ],
        "headline": _headline(rows, exps, peaks, flat, linear, sizes),
    }


def _rates(row: dict) -> dict:
    """Per-stage rates at the largest size (what docs/scale.md extrapolates from)."""
    g = row["generated"]
    return {
        "write_rows_per_s": round((g + N_REAL) / row["write_s"], 1),
        "write_mb_per_s": round(row["features_mb"] / row["write_s"], 1),
        "index_train_s": row["index"]["train"],
        "index_add_vectors_per_s": round(g / row["index"]["add"], 1),
        "score_real_per_s": round(N_REAL / row["score"]["seconds"], 2),
        "bytes_per_image_on_disk": round(row["features_mb"] * 2**20 / (g + N_REAL), 1),
    }


def _headline(rows: list[dict], exps: dict, peaks: dict, flat: bool, linear: bool, sizes: tuple) -> list[dict]:
    first, last = rows[0], rows[-1]
    span = f"{sizes[0]:,} -> {sizes[-1]:,}"
    mem_ratio = ratio(last["in_memory"]["peak_rss_mb"], last["score"]["peak_rss_mb"], 2)
    return [
        headline(f"scaling: index + score peak RSS at G={sizes[-1]:,} (MB)", max(peaks.values()),
                 target=f"< {LIMIT_MB} and flat", met=flat,
                 note=f"peak RSS exponents: index {exps['index']['peak_rss']}, score {exps['score']['peak_rss']} "
                 f"({span})"),
        headline(f"scaling: time exponent in G ({span}), index / score",
                 f"{exps['index']['time']} / {exps['score']['time']}", target="<= 1 (linear)", met=linear,
                 note=f"index {first['index']['seconds']:.1f} -> {last['index']['seconds']:.1f} s; score "
                 f"{first['score']['seconds']:.1f} -> {last['score']['seconds']:.1f} s"),
        headline("scaling: in-memory / out-of-core peak RSS of scoring at the largest G", mem_ratio,
                 note=f"in-memory peak RSS exponent {exps['in_memory']['peak_rss']}"),
    ]  # fmt: skip


def table(report: dict) -> list[str]:
    """Markdown rows for the README."""
    lines = [
        "| generated | features MB on disk | write s | index s (train + add) | index peak RSS MB | "
        "recall@10 (x4 re-ranked) | score s | score peak RSS MB | in-memory s | in-memory peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        ix = r["index"]
        lines.append(
            f"| {r['generated']:,} | {r['features_mb']:,.1f} | {r['write_s']:.1f} | {ix['seconds']:.1f} "
            f"({ix['train']:.1f} + {ix['add']:.1f}) | "
            f"{ix['peak_rss_mb']:,.0f} | {ix['recall_at_10']} ({ix['recall_at_10_refined']}) | "
            f"{r['score']['seconds']:.1f} | "
            f"{r['score']['peak_rss_mb']:,.0f} | {r['in_memory']['seconds']:.1f} | "
            f"{r['in_memory']['peak_rss_mb']:,.0f} |"
        )
    e = report["exponents"]
    lines += [
        "",
        f"Import floor (the same imports alone): {report['import_floor']['peak_rss_mb']:,.0f} MB. Exponents "
        f"(slope of log y on log G): index time {e['index']['time']}, memory {e['index']['peak_rss']}; score time "
        f"{e['score']['time']}, memory {e['score']['peak_rss']}; in-memory time {e['in_memory']['time']}, memory "
        f"{e['in_memory']['peak_rss']}. Memory flat: {report['memory_flat']}; at most linear: "
        f"{report['at_most_linear']}.",
    ]
    return lines


# ----------------------------------------------------------------------------- the fused scorer on images

#: real images of the fused benchmark: the builder's phantoms at 64 px (dev 80 + 80 labelled, test 100 + 100)
FUSED_REALS = {"dev_used": 80, "dev_not_used": 80, "test_used": 100, "test_not_used": 100}
FUSED_SIDE = 64
SHARD_COUNT = 10_000  # samples per shard of the sampled pools
RATE_GOAL = 2_000  # generated images per second, shards to run.csv, 2 cores
#: runs the CLI, then prints its peak RSS (MB): the process's own and its largest reader worker's
PEAK_WRAPPER = (
    "import json, resource, sys\n"
    "from fingerprint.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "mb = lambda who: round(resource.getrusage(who).ru_maxrss / 1024, 1)\n"
    "print(json.dumps({'self': mb(resource.RUSAGE_SELF), 'workers': mb(resource.RUSAGE_CHILDREN)}), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def train_generator(seed: int):
    """The benchmark builder's generator (vae family, tiny preset) trained on the used phantoms at 64 px; and the
    real images with their roles."""
    from fingerprint.benchdata.benchmark import _split
    from fingerprint.benchdata.generators import family_accelerator, get_family
    from fingerprint.benchdata.params import resolve_params
    from fingerprint.benchdata.realimages import phantom_images

    p = resolve_params("tiny", seed=seed, image_size=FUSED_SIDE, **FUSED_REALS)
    real = phantom_images(p)
    split = _split(p, real)
    used = np.concatenate([split["dev_used"], split["test_used"]])
    gen, _ = get_family(p.family).train(
        real.images[used], p.generator, seed=p.seed, accelerator=family_accelerator(p.generator), progress=False
    )
    return gen, real.images, split


def write_pool(folder: Path, reals: list[tuple[str, str, str, np.ndarray]], gen, n_gen: int, seed: int) -> float:
    """Shards of `reals` (key, role, label, pixels) and `n_gen` images drawn from `gen` straight into the tars
    (npy, as `fingerprint pack` writes them), with the manifest; returns the seconds."""
    from fingerprint.core.files import write_json as write
    from fingerprint.data.pack import PackConfig, _manifest, _ShardSink
    from fingerprint.data.sources import encode_pixels, pixel_sha256

    t0, counts = time.perf_counter(), {}
    folder.mkdir(parents=True)
    sink, rng = _ShardSink(folder, SHARD_COUNT, 1 << 40), np.random.default_rng(seed)

    def put(key: str, role: str, label: str, px: np.ndarray) -> None:
        record = {"key": key, "role": role, "label": label, "path": f"{key}.npy", "format": "generated",
                  "mode": "L", "converted": None, "pixel_sha256": pixel_sha256(px), "size": list(px.shape)}  # fmt: skip
        sink.write(key, {"json": json.dumps(record, sort_keys=True).encode(), "npy": encode_pixels(px, "npy")},
                   f"{role}/{label}")  # fmt: skip
        counts[(role, label)] = counts.get((role, label), 0) + 1

    for key, role, label, px in reals:
        put(key, role, label, px)
    for start in range(0, n_gen, 4096):
        for i, px in enumerate(gen.draw(min(4096, n_gen - start), rng)):
            put(f"generated_{start + i:07d}", "generated", "unknown", px)
    sink.close()
    cfg = PackConfig(src=Path("generator"), out=folder, image_size=FUSED_SIDE, max_count=SHARD_COUNT)
    write(folder / "manifest.json", _manifest(cfg, "manifest", sink, folder, Counter(counts), [], 0))
    return time.perf_counter() - t0


def fused_size(g: int, work: Path, gen, images: np.ndarray, split: dict, seed: int) -> dict:
    """Sample g generated images (half per split) into shards; time `fingerprint run` on them in a fresh process."""
    test = np.concatenate([split["test_used"], split["test_not_used"]])
    truth = {f"real_unknown_{i:04d}": int(j < len(split["test_used"])) for i, j in enumerate(range(len(test)))}
    dev = [(f"used_{i:04d}", "real", "used", images[j]) for i, j in enumerate(split["dev_used"])]
    dev += [(f"not_used_{i:04d}", "real", "not_used", images[j]) for i, j in enumerate(split["dev_not_used"])]
    tst = [(k, "real", "unknown", images[j]) for k, j in zip(truth, test)]
    write_s = write_pool(work / "dev", dev, gen, g // 2, seed + 1) + write_pool(work / "test", tst, gen, g - g // 2,
                                                                               seed + 2)  # fmt: skip
    (work / "truth.csv").write_text("figure_id,label\n" + "".join(f"{k},{v}\n" for k, v in truth.items()))
    args = ["run", "--out", str(work / "run"), "--dev-shards", str(work / "dev"), "--test-shards", str(work / "test"),
            "--truth", str(work / "truth.csv"), "--seed", str(seed), "--no-compare", "--no-cluster", "--no-report",
            "--n-boot", "100"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *args], capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"scaling: fingerprint run at G={g} failed: {proc.stderr[-2000:]}")
    peak = json.loads(proc.stderr.strip().splitlines()[-1])
    summary = json.loads((work / "run" / "run.json").read_text())
    metrics = json.loads((work / "run" / "metrics.json").read_text())["scorers"]["fused"]
    profile = [json.loads(x) for x in (work / "run" / "log.jsonl").read_text().splitlines()]
    profile = next(r for r in reversed(profile) if r.get("stage") == "profile")
    row = {"generated": g, "real": len(dev) + len(tst), "shards_write_s": round(write_s, 1), "run_s": round(wall, 1),
           "peak_rss_mb": peak["self"], "peak_rss_mb_reader_workers": peak["workers"],
           "generated_per_s": round(g / wall, 1),
           "stage_seconds": summary["stage_seconds"], "profile_path": profile.get("path"),
           "recall_at_16": profile.get("index"), "test_roc_auc": metrics["roc_auc"]["value"],
           "test_kappa": metrics["kappa"]["value"],
           "command": "fingerprint " + " ".join(map(portable, args))}  # fmt: skip
    log.info("scaling fused: G=%d run %.0f s (%.0f generated/s), peak RSS %.0f MB, ROC-AUC %.3f",
             g, wall, g / wall, peak["self"], row["test_roc_auc"])  # fmt: skip
    return row


def fused_child(sizes: list[int], seed: int) -> list[dict]:
    """Train the generator once, then every size (each `fingerprint run` in its own process)."""
    gen, images, split = train_generator(seed)
    rows = []
    for g in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-scaling-fused-") as tmp:
            rows.append(fused_size(g, Path(tmp), gen, images, split, seed))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def child_env() -> dict:
    """The environment of a child process: this checkout first on the import path."""
    return {**os.environ, "PYTHONPATH": str(HERE.parents[1])}


def commit() -> str:
    """The checkout's commit."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE.parent).stdout.strip()


def run_fused(sizes: list[int], seed: int, out: Path) -> dict:
    """The fused rows at each size (one child trains the generator, each run in its own process), merged into
    scaling.json under "fused" after every size (a run stopped early keeps the sizes done)."""
    started, load_before = time.perf_counter(), load_average()
    cmd = [sys.executable, str(HERE), "--fused-child", ",".join(map(str, sizes)), str(seed)]
    rows: list[dict] = []
    report: dict = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env()) as proc:
        for line in proc.stdout:
            if line.startswith("{"):
                rows.append(json.loads(line))
                report = fused_report(rows, load_before, started)
                full = json.loads(out.read_text()) if out.is_file() else {}
                write_json(out, {**full, "fused": report})
    if proc.returncode != 0:
        raise RuntimeError(f"scaling: fused {sizes} failed (exit {proc.returncode})")
    return report


def fused_report(rows: list[dict], load_before: list[float] | None, started: float) -> dict:
    gs = [r["generated"] for r in rows]
    return {
        "what": "fingerprint run (fused scorer writes run.csv; comparators, clustering, report off; default "
        "baselines) on shards sampled from the benchmark builder's generator at 64 px, half the generated images "
        "in each split; each run in its own process",
        "commit": commit(),
        "rows": rows,
        "time_exponent": round(fit_exponent(gs, [r["run_s"] for r in rows]), 3) if len(rows) > 1 else None,
        "rate_goal_generated_per_s": RATE_GOAL,
        "peak_rss_goal_mb": LIMIT_MB,
        "load_avg": {"before": load_before, "after": load_average()},
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info("cpu"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], Path(argv[2]), int(argv[3]))))
        return 0
    if argv[:1] == ["--fused-child"]:
        fused_child([int(x) for x in argv[1].split(",")], int(argv[2]))
        return 0
    if argv[:1] == ["--fused"]:
        sizes = [int(x) for x in (argv[1] if len(argv) > 1 else "10000,100000").split(",")]
        report = run_fused(sizes, 0, RESULTS_DIR / f"{NAME}.json")
        for r in report["rows"]:
            print(f"fused G={r['generated']:,}: {r['run_s']} s, {r['generated_per_s']} generated/s, "
                  f"peak RSS {r['peak_rss_mb_max_process']} MB, test ROC-AUC {r['test_roc_auc']:.3f}")  # fmt: skip
        return 0
    return standalone_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
