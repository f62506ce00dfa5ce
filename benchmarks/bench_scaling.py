"""How scoring grows with the number of generated images (1k -> 10k -> 100k), time and memory.

Embedding excluded (measured): 200 real images and G generated images as
random unit embeddings plus random float16 feature maps of the default
model's shape go through the scorer's real path: a FAISS Flat index over the
generated embeddings, then `relation_scores` (top-k search + relation head on
200 x k pairs). Embedding included (EXTRAPOLATION): plus (200 + G) images at
the model's images/s, measured here on a batch of random images.

Memory: the features held in memory (embeddings + fp16 maps, what
`Features.load` holds), the scorer's own peak allocations (tracemalloc), and
the process's peak RSS. The growth exponent is the least-squares slope of
log(time) on log(G); at most linear means slope <= 1 (+0.1 for noise).
Writes benchmarks/results/scaling.json.

    python benchmarks/bench_scaling.py [--quick|--tiny]
"""

from __future__ import annotations

import gc
import logging
import time
import tracemalloc

import numpy as np
import torch
from common import (
    BenchArgs,
    check_device,
    finish,
    fit_exponent,
    headline,
    load_average,
    peak_rss_mb,
    random_unit,
    ratio,
    set_threads,
    standalone_main,
    time_it,
)

log = logging.getLogger(__name__)

NAME = "scaling"
N_REAL = 200
K = 16
TOLERANCE = 0.1


def random_features(n: int, role: str, model, rng: np.random.Generator, *, chunk: int = 4096):
    """Features of n images: random unit embeddings and random non-negative fp16 maps of the model's shape."""
    from fingerprint.features import Features

    side = model.fmap_size()
    maps = np.empty((n, model.channels, side, side), np.float16)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        maps[i : i + m] = rng.random((m, model.channels, side, side), dtype=np.float32)
    prefix = "generated" if role == "generated" else "real_unknown"
    return Features(
        [f"{prefix}_{i:06d}" for i in range(n)],
        [role] * n,
        ["unknown"] * n,
        random_unit(n, model.cfg.embed_dim, rng),
        maps,
    )


def score_once(model, real, gen, k: int):
    """The scorer's path after embedding: Flat index over gen, then relation_scores."""
    from fingerprint.index import build_index
    from fingerprint.inference import relation_scores

    index = build_index(gen.embeddings, "Flat")
    return relation_scores(model, real, gen, index, k=k)


def embed_rate(model, device: str, *, batch: int, repeats: int, seed: int) -> float:
    """images/s of the model's embedding-mode forward on random images at its input size."""
    x = torch.rand(
        batch, 1, model.cfg.image_size, model.cfg.image_size, generator=torch.Generator().manual_seed(seed)
    ).to(device)

    def step():
        with torch.inference_mode():
            model(x)

    return batch / time_it(step, repeats=repeats, warmup=1, device=device).best


def run(args: BenchArgs) -> dict:
    """Score at each generated-set size; fit the growth; return and write the report."""
    from fingerprint.model_io import build_model
    from fingerprint.models import ModelConfig, describe

    check_device(args.device)
    started, load_before = time.perf_counter(), load_average()
    threads = set_threads()
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig()).eval().to(args.device)
    sizes = args.pick((500, 1_000, 2_000), (1_000, 3_000, 10_000), (1_000, 10_000, 100_000))
    repeats = args.pick(1, 2, 3)
    rng = np.random.default_rng(args.seed)
    real = random_features(N_REAL, "real", model, rng)
    ips = embed_rate(model, args.device, batch=args.pick(4, 16, 32), repeats=repeats, seed=args.seed)
    log.info("scaling: %s; embedding %.1f images/s at %d px", describe(model), ips, model.cfg.image_size)
    rows = []
    for g in sizes:
        gen = random_features(g, "generated", model, rng)
        score_once(model, real, gen, K)  # warm-up (and a check that it runs)
        t = time_it(lambda gen=gen: score_once(model, real, gen, K), repeats=repeats, warmup=0, device=args.device)
        gc.collect()
        tracemalloc.start()
        result = score_once(model, real, gen, K)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if len(result.keys) != N_REAL or result.neighbour_keys.shape != (N_REAL, K):
            raise RuntimeError(f"scaling: scorer returned {len(result.keys)} rows / {result.neighbour_keys.shape}")
        held = gen.embeddings.nbytes + gen.fmaps.nbytes
        index_bytes = gen.embeddings.nbytes  # a Flat index stores the G x D float32 vectors (outside tracemalloc)
        embed_s = (N_REAL + g) / ips
        rows.append(
            {
                "generated": g,
                "real": N_REAL,
                "k": K,
                "score": t.as_dict(),
                "embed_extrapolated_s": round(embed_s, 2),
                "total_extrapolated_s": round(t.best + embed_s, 2),
                "features_mb": round(held / 2**20, 1),
                "scorer_peak_alloc_mb": round(traced_peak / 2**20, 1),
                "index_mb": round(index_bytes / 2**20, 1),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
        log.info(
            "scaling: G=%d score %.3f s (features %.0f MB, scorer peak %.0f MB)",
            g,
            t.best,
            rows[-1]["features_mb"],
            rows[-1]["scorer_peak_alloc_mb"],
        )
        del gen, result
        gc.collect()
    gs = [r["generated"] for r in rows]
    exp_score = fit_exponent(gs, [r["score"]["best_s"] for r in rows])
    exp_total = fit_exponent(gs, [r["total_extrapolated_s"] for r in rows])
    exp_mem = fit_exponent(gs, [r["features_mb"] + r["scorer_peak_alloc_mb"] + r["index_mb"] for r in rows])
    growth = ratio(rows[-1]["score"]["best_s"], rows[0]["score"]["best_s"], 2)
    span = gs[-1] / gs[0]
    linear = exp_score <= 1 + TOLERANCE and exp_total <= 1 + TOLERANCE
    report = {
        "what": f"scoring {N_REAL} real images against G generated (index + top-{K} + relation head), G grown 100x",
        "threads": threads,
        "model": describe(model),
        "embed_images_per_s": round(ips, 2),
        "rows": rows,
        "exponents": {
            "score": round(exp_score, 3),
            "total_with_embedding_extrapolated": round(exp_total, 3),
            "memory": round(exp_mem, 3),
            "tolerance": TOLERANCE,
        },
        "score_growth": {"time_ratio": growth, "size_ratio": span},
        "at_most_linear": linear,
        "notes": [
            "embedding excluded: measured on random embeddings and feature maps",
            "embedding included: EXTRAPOLATION, (200 + G) / measured images/s added to the measured score time",
            "memory exponent: features held + scorer's own peak allocations (tracemalloc) + the Flat index's "
            "vectors (G x D float32, allocated by FAISS outside tracemalloc)",
        ],
        "headline": [
            headline(
                f"scaling: time exponent in G ({gs[0]:,} -> {gs[-1]:,}), embedding excluded",
                round(exp_score, 2),
                target="<= 1 (linear)",
                met=exp_score <= 1 + TOLERANCE,
                note=f"time x{growth} for G x{span:g}",
            ),
            headline(
                "scaling: time exponent, embedding included (extrapolated)",
                round(exp_total, 2),
                target="<= 1 (linear)",
                met=exp_total <= 1 + TOLERANCE,
            ),
            headline(
                "scaling: memory exponent (features + index + scorer peak)",
                round(exp_mem, 2),
                target="<= 1 (linear)",
                met=exp_mem <= 1 + TOLERANCE,
                note=f"{rows[-1]['features_mb']:.0f} MB of features at G={gs[-1]:,}",
            ),
        ],
    }
    return finish(NAME, args, report, load_before=load_before, started=started)


def table(report: dict) -> list[str]:
    """Markdown rows for the README."""
    lines = [
        "| generated | score s (measured) | + embedding s (extrapolated) | features MB | index MB | "
        "scorer peak MB | process peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['generated']:,} | {r['score']['best_s']:.3f} | {r['total_extrapolated_s']:,.1f} | "
            f"{r['features_mb']:,.1f} | {r['index_mb']:,.1f} | {r['scorer_peak_alloc_mb']:,.1f} | "
            f"{r['peak_rss_mb']:,.0f} |"
        )
    e = report["exponents"]
    lines += [
        "",
        f"Growth exponents (slope of log time on log G): score {e['score']}, with embedding "
        f"{e['total_with_embedding_extrapolated']}, memory {e['memory']}; at most linear: "
        f"{report['at_most_linear']}.",
    ]
    return lines


def main(argv=None) -> int:
    return standalone_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
