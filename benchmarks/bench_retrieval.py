"""Nearest-neighbour retrieval: FAISS exact (IndexFlatIP) and IVF vs numpy brute force.

The same unit vectors of the model's embedding width and the same queries go
through three ways of finding each query's top-k by cosine:

- numpy: one matrix product per chunk of queries + argpartition + a sort of the k;
- FAISS `Flat` (fingerprint.embedding.index.build_index, exact);
- FAISS `IVF{sqrt(N)},Flat` (approximate), with recall@k against exact search
  over a sweep of nprobe.

Timings use the data of a Gaussian mixture (generated images cluster around
modes; a real image's neighbours sit in one of them); IVF recall is also
reported on uniform random vectors, its worst case (no structure to exploit).
Writes benchmarks/results/retrieval.json.

    python benchmarks/bench_retrieval.py [--quick|--tiny]
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from common import (
    BenchArgs,
    finish,
    headline,
    load_average,
    random_unit,
    ratio,
    set_threads,
    standalone_main,
    time_interleaved,
    time_it,
)

log = logging.getLogger(__name__)

NAME = "retrieval"
K = 10
NPROBES = (1, 4, 16, 64)


def clustered_unit(
    n: int, d: int, rng: np.random.Generator, *, n_modes: int, spread: float = 0.6, chunk: int = 1 << 16
) -> np.ndarray:
    """n unit vectors from a mixture of `n_modes` Gaussians around random unit centres (float32 n x d)."""
    centres = random_unit(n_modes, d, rng)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = centres[rng.integers(0, n_modes, m)] + rng.standard_normal((m, d), dtype=np.float32) * (
            spread / math.sqrt(d)
        )
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products with numpy: (sims Q x k, ids Q x k), best first."""
    sims = np.empty((len(q), k), np.float32)
    ids = np.empty((len(q), k), np.int64)
    for i in range(0, len(q), chunk):
        s = q[i : i + chunk] @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        sims[i : i + chunk] = np.take_along_axis(ps, order, axis=1)
        ids[i : i + chunk] = np.take_along_axis(part, order, axis=1)
    return sims, ids


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the ids in b (the reference top-k) that a also returns, row by row."""
    return float(sum(len(set(r[r >= 0]) & set(e)) for r, e in zip(a, b)) / b.size)


def ivf_recall(x: np.ndarray, q: np.ndarray, exact_ids: np.ndarray, nlist: int, seed: int, repeats: int) -> dict:
    """Build IVF{nlist},Flat over x and measure search time and recall@K for each nprobe."""
    import faiss

    from fingerprint.embedding.index import build_index, search

    t0 = time.perf_counter()
    index = build_index(x, f"IVF{nlist},Flat", seed=seed)
    build_s = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(index)
    sweep = []
    for nprobe in NPROBES:
        if nprobe > ivf.nlist:
            continue
        ivf.nprobe = nprobe
        t = time_it(lambda: search(index, q, K), repeats=repeats, warmup=1)
        _, ids = search(index, q, K)
        sweep.append({"nprobe": nprobe, "search": t.as_dict(), "recall_at_10": round(overlap(ids, exact_ids), 4)})
    return {"factory": f"IVF{ivf.nlist},Flat", "nlist": int(ivf.nlist), "build_s": round(build_s, 4), "sweep": sweep}


def run(args: BenchArgs) -> dict:
    """Time the three ways at each database size; return and write the report."""
    from fingerprint.embedding.index import build_index, search
    from fingerprint.embedding.models import ModelConfig

    started, load_before = time.perf_counter(), load_average()
    threads = set_threads()
    d = ModelConfig().embed_dim
    sizes = args.pick((2_000, 8_000), (10**4, 10**5), (10**4, 10**5, 10**6))
    n_queries = args.pick(32, 256, 256)
    repeats = args.pick(2, 3, 3)
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in sizes:
        log.info("retrieval: %d vectors x %d dims, %d queries", n, d, n_queries)
        n_modes = max(8, n // 500)
        x = clustered_unit(n, d, rng, n_modes=n_modes)
        q = _queries_near(x, n_queries, rng)
        t0 = time.perf_counter()
        flat = build_index(x, "Flat")
        flat_build = time.perf_counter() - t0
        timed = time_interleaved(
            {"numpy": lambda x=x, q=q: numpy_topk(x, q, K), "flat": lambda flat=flat, q=q: search(flat, q, K)},
            repeats=repeats,
            warmup=1,
        )
        t_np, t_flat = timed["numpy"], timed["flat"]
        _, np_ids = numpy_topk(x, q, K)
        _, flat_ids = search(flat, q, K)
        del flat

        nlist = max(1, int(round(math.sqrt(n))))
        ivf = ivf_recall(x, q, flat_ids, nlist, args.seed, repeats)
        uni_x = random_unit(n, d, rng)
        uni_q = random_unit(n_queries, d, rng)
        _, uni_exact = numpy_topk(uni_x, uni_q, K)
        ivf_uniform = ivf_recall(uni_x, uni_q, uni_exact, nlist, args.seed, 1)
        del uni_x, uni_q, x

        default = next(s for s in ivf["sweep"] if s["nprobe"] == min(16, ivf["nlist"]))
        rows.append(
            {
                "n": n,
                "dim": d,
                "queries": n_queries,
                "k": K,
                "modes": n_modes,
                "numpy": t_np.as_dict(),
                "flat": {"build_s": round(flat_build, 4), "search": t_flat.as_dict()},
                "numpy_vs_flat_agreement": round(overlap(np_ids, flat_ids), 4),
                "ivf": ivf,
                "ivf_uniform": {
                    "nlist": ivf_uniform["nlist"],
                    "recall_at_10": {str(s["nprobe"]): s["recall_at_10"] for s in ivf_uniform["sweep"]},
                },
                "ratios": {
                    "flat_vs_numpy": ratio(t_np.best, t_flat.best, 2),
                    "ivf_vs_flat": ratio(t_flat.best, default["search"]["best_s"], 2),
                    "ivf_vs_numpy": ratio(t_np.best, default["search"]["best_s"], 2),
                },
                "ivf_default_nprobe": default["nprobe"],
                "ivf_recall_at_10": default["recall_at_10"],
            }
        )
        log.info(
            "retrieval: n=%d flat %.1fx numpy, IVF %.1fx flat at recall@10 %.3f",
            n,
            rows[-1]["ratios"]["flat_vs_numpy"] or 0,
            rows[-1]["ratios"]["ivf_vs_flat"] or 0,
            default["recall_at_10"],
        )
    big = rows[-1]
    report = {
        "what": "top-10 cosine search of unit vectors: numpy matmul+argpartition vs FAISS IndexFlatIP vs IVF",
        "threads": threads,
        "timing": "best of repeats after a warm-up; search only (index build reported apart)",
        "data": "Gaussian mixture on the unit sphere (n/500 modes); queries are noisy copies of database vectors",
        "rows": rows,
        "headline": [
            headline(
                f"retrieval: FAISS Flat speed-up over numpy, {big['n']:,} vectors",
                big["ratios"]["flat_vs_numpy"],
                note="exact, same top-10 (agreement %.3f)" % big["numpy_vs_flat_agreement"],
            ),
            headline(
                f"retrieval: IVF speed-up over Flat, {big['n']:,} vectors",
                big["ratios"]["ivf_vs_flat"],
                note=f"nprobe {big['ivf_default_nprobe']} of {big['ivf']['nlist']}: recall@10 "
                f"{big['ivf_recall_at_10']:.3f} (uniform data: "
                f"{big['ivf_uniform']['recall_at_10'].get(str(big['ivf_default_nprobe']))})",
            ),
        ],
    }
    return finish(NAME, args, report, load_before=load_before, started=started)


def _queries_near(x: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    """Unit queries near random database vectors (a real image near its generated look-alikes)."""
    base = x[rng.choice(len(x), n, replace=False)]
    q = base + rng.standard_normal(base.shape, dtype=np.float32) * (noise / math.sqrt(x.shape[1]))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def table(report: dict) -> list[str]:
    """Markdown rows for the README."""
    lines = [
        "| vectors | numpy s | Flat s | IVF s (nprobe/nlist) | numpy s / Flat s | Flat s / IVF s | "
        "IVF recall@10 (on uniform data) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        dflt = next(s for s in r["ivf"]["sweep"] if s["nprobe"] == r["ivf_default_nprobe"])
        lines.append(
            f"| {r['n']:,} | {r['numpy']['best_s']:.4f} | {r['flat']['search']['best_s']:.4f} | "
            f"{dflt['search']['best_s']:.4f} ({r['ivf_default_nprobe']}/{r['ivf']['nlist']}) | "
            f"{r['ratios']['flat_vs_numpy']}x | {r['ratios']['ivf_vs_flat']}x | "
            f"{r['ivf_recall_at_10']:.3f} ({r['ivf_uniform']['recall_at_10'].get(str(r['ivf_default_nprobe']))}) |"
        )
    return lines


def main(argv=None) -> int:
    return standalone_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
