"""Scoring a set of real images: the project's scorer vs the seed's method, on the same images.

- ours (the main path): pack the PNGs into shards once, `embed_shards` every
  image once (embeddings + feature maps), a FAISS index over the generated
  embeddings, then `relation_scores`: each real image's top-k generated
  neighbours through the relation head, pooled;
- the seed's run 1 (fingerprint.embedding.models.seed_config(): two separate ResNet-101s,
  7x7/2 stem without max-pool, the seed's relation head, 256x256): for every
  (real, generated) pair both PNGs are read and both backbones run again; a real
  image's score is the mean over all generated images. Pairs go in batches of
  8 (the seed's training batch; its test batch was 1, which is slower on CPU).

Both run the same input size (256 px; ours could use its 128 px default).
The measured ratio is for the small set; the 2023 test scale (200 real x
10,000 generated) is an extrapolation from per-unit costs measured here:
seed = R*G pair forwards; ours = (R+G) images read+encoded + R*k relation
pairs + FAISS build and search (the last two measured at that scale directly).
Writes benchmarks/results/score.json.

    python benchmarks/bench_score.py [--quick|--tiny]
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from common import (
    BenchArgs,
    check_device,
    finish,
    headline,
    load_average,
    random_unit,
    ratio,
    set_threads,
    standalone_main,
    stopwatch,
    time_it,
    write_dev_folder,
)
from PIL import Image

log = logging.getLogger(__name__)

NAME = "score"
SEED_BATCH = 8
K = 16
TEST_REAL, TEST_GENERATED = 200, 10_000


def read_png(path: Path) -> torch.Tensor:
    """The seed's read: PIL-open one PNG, gray, float (1,H,W) in [0,1]."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


@torch.inference_mode()
def seed_method(model, real_paths: list[Path], gen_paths: list[Path], *, batch: int = SEED_BATCH) -> np.ndarray:
    """Mean relation probability of each real image over all generated ones, every pair from PNGs through both
    backbones (the seed's method)."""
    device = next(model.parameters()).device
    model.eval()
    pairs = [(r, g) for r in range(len(real_paths)) for g in range(len(gen_paths))]
    total = np.zeros(len(real_paths))
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        q = torch.stack([read_png(real_paths[r]) for r, _ in chunk]).to(device)
        s = torch.stack([read_png(gen_paths[g]) for _, g in chunk]).unsqueeze(1).to(device)
        probs = torch.sigmoid(model(q, s)["logit"].float()).cpu().numpy()
        for (r, _), p in zip(chunk, probs):
            total[r] += p
    return total / len(gen_paths)


def ours(model, src: Path, work: Path, *, k: int, image_size: int, device: str) -> tuple[dict, dict]:
    """The project's path from PNG folder to scores; returns (stage seconds, result summary)."""
    from fingerprint.data.pack import pack
    from fingerprint.embedding.embed import embed_shards
    from fingerprint.embedding.index import build_index
    from fingerprint.embedding.inference import relation_scores

    t: dict[str, float] = {}
    with stopwatch(t, "pack"):
        pack(src, work / "shards", image_size=image_size, force=True)
    with stopwatch(t, "embed", device):
        feats = embed_shards(model, work / "shards", batch_size=32, fmaps=True)
    real, gen = feats.select(role="real"), feats.select(role="generated")
    with stopwatch(t, "index"):
        index = build_index(gen.embeddings, "Flat")
    with stopwatch(t, "relation", device):
        result = relation_scores(model, real, gen, index, k=k)
    return t, {
        "keys": result.keys,
        "scores": [round(float(s), 6) for s in result.score],
        "n_real": len(real),
        "n_generated": len(gen),
    }


def head_cost(model, n_real: int, k: int, *, device: str, seed: int) -> dict:
    """Seconds of the relation head on n_real x k pairs of random feature maps (the test-scale head workload)."""
    from fingerprint.embedding.inference import relation_logits

    side = model.fmap_size()
    rng = np.random.default_rng(seed)
    pool = 256  # distinct support maps: the head's cost does not depend on how many generated images exist
    q = rng.random((n_real, model.channels, side, side), dtype=np.float32).astype(np.float16)
    s = rng.random((pool, model.channels, side, side), dtype=np.float32).astype(np.float16)
    rows = rng.integers(0, pool, (n_real, k))
    t = time_it(lambda: relation_logits(model, q, s, rows), repeats=2, warmup=1, device=device)
    return {"pairs": n_real * k, **t.as_dict()}


def faiss_cost(n_real: int, n_gen: int, d: int, k: int, *, seed: int) -> dict:
    """Seconds of building a Flat index over n_gen unit vectors and searching n_real queries."""
    from fingerprint.embedding.index import build_index, search

    rng = np.random.default_rng(seed)
    x, q = random_unit(n_gen, d, rng), random_unit(n_real, d, rng)
    build = time_it(lambda: build_index(x, "Flat"), repeats=2, warmup=1)
    index = build_index(x, "Flat")
    srch = time_it(lambda: search(index, q, k), repeats=2, warmup=1)
    return {"build": build.as_dict(), "search": srch.as_dict(), "seconds": build.best + srch.best}


def run(args: BenchArgs) -> dict:
    """Score the same small set both ways, then extrapolate to the 2023 test scale."""
    from fingerprint.embedding.model_io import build_model
    from fingerprint.embedding.models import ModelConfig, describe, seed_config

    check_device(args.device)
    started, load_before = time.perf_counter(), load_average()
    device = args.device
    threads = set_threads()
    n_real, n_gen = args.pick((1, 2), (1, 8), (2, 32))
    size = args.pick(64, 256, 256)
    k = min(K, n_gen)
    torch.manual_seed(args.seed)
    seed_cfg = ModelConfig(**{**asdict(seed_config()), "image_size": size})
    our_cfg = ModelConfig(image_size=size)
    seed_model = build_model(seed_cfg).eval().to(device)
    our_model = build_model(our_cfg).eval().to(device)
    log.info(
        "score: %d real x %d generated at %d px; seed: %s; ours: %s",
        n_real,
        n_gen,
        size,
        describe(seed_model),
        describe(our_model),
    )

    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        tmp = Path(tmp)
        paths = write_dev_folder(
            tmp / "dev",
            n_generated=n_gen,
            n_used=n_real - n_real // 2,
            n_not_used=n_real // 2,
            size=size,
            seed=args.seed,
        )
        real_paths = sorted(paths["used"] + paths["not_used"], key=lambda p: p.stem)
        gen_paths = paths["generated"]
        # warm both models once (allocator, kernels) so neither side pays first-call costs
        with torch.inference_mode():
            seed_model(read_png(real_paths[0])[None].to(device), read_png(gen_paths[0])[None, None].to(device))
            our_model(read_png(real_paths[0])[None].to(device))
        our_t, our_result = ours(our_model, tmp / "dev", tmp, k=k, image_size=size, device=device)
        seed_t: dict[str, float] = {}
        with stopwatch(seed_t, "pairs", device):
            seed_scores = seed_method(seed_model, real_paths, gen_paths)
    if our_result["keys"] != [p.stem for p in real_paths]:
        raise RuntimeError(f"the scorer returned keys {our_result['keys']}, expected the real images' stems")
    ours_s = sum(our_t.values())
    seed_s = seed_t["pairs"]
    n_pairs = n_real * n_gen

    # per-unit costs, then the 2023 test scale
    per_pair = seed_s / n_pairs
    per_image = (our_t["pack"] + our_t["embed"]) / (n_real + n_gen)
    head = head_cost(our_model, TEST_REAL, K, device=device, seed=args.seed)
    search = faiss_cost(TEST_REAL, TEST_GENERATED, our_cfg.embed_dim, K, seed=args.seed)
    seed_test = per_pair * TEST_REAL * TEST_GENERATED
    ours_test = per_image * (TEST_REAL + TEST_GENERATED) + head["best_s"] + search["seconds"]
    measured = ratio(seed_s, ours_s, 2)
    extrapolated = ratio(seed_test, ours_test, 0)
    report = {
        "what": "score R real images against G generated: the project's scorer vs the seed's all-pairs method",
        "threads": threads,
        "set": {"real": n_real, "generated": n_gen, "pairs": n_pairs, "image_size": size, "k": k},
        "models": {"seed": describe(seed_model), "ours": describe(our_model)},
        "measured": {
            "seed_s": round(seed_s, 3),
            "ours_s": round(ours_s, 3),
            "ours_stages_s": {name: round(v, 3) for name, v in our_t.items()},
            "seed_over_ours": measured,
            "seed_batch": SEED_BATCH,
        },
        "scores": {
            "keys": our_result["keys"],
            "ours": our_result["scores"],
            "seed": [round(float(s), 6) for s in seed_scores],
        },
        "extrapolation": {
            "label": "EXTRAPOLATION from per-unit costs measured in this run, not a measurement",
            "scale": {"real": TEST_REAL, "generated": TEST_GENERATED, "k": K},
            "formula": {
                "seed": "R*G * t_pair",
                "ours": "(R+G) * t_image + t_head(R*k pairs, measured) + t_faiss(build G + search R, measured)",
            },
            "t_pair_s": round(per_pair, 4),
            "t_image_s": round(per_image, 5),
            "t_head_s": round(head["best_s"], 4),
            "head": head,
            "t_faiss_s": round(search["seconds"], 4),
            "faiss": search,
            "seed_s": round(seed_test, 1),
            "seed_days": round(seed_test / 86400, 2),
            "ours_s": round(ours_test, 1),
            "seed_over_ours": extrapolated,
        },
        "headline": [
            headline(
                f"score: seed / ours, measured on {n_real} x {n_gen}",
                measured,
                note=f"seed {seed_s:.1f} s vs ours {ours_s:.1f} s (ours includes packing)",
            ),
            headline(
                f"score: seed / ours at {TEST_REAL} x {TEST_GENERATED:,} (extrapolated)",
                extrapolated,
                target=">= 1000x",
                met=(extrapolated or 0) >= 1000,
                note=f"seed {seed_test / 86400:.1f} days vs ours {ours_test / 60:.1f} min; "
                f"R*G*t_pair vs (R+G)*t_image + head + FAISS",
            ),
        ],
    }
    return finish(NAME, args, report, load_before=load_before, started=started)


def table(report: dict) -> list[str]:
    """Markdown rows for the README."""
    m, e, s = report["measured"], report["extrapolation"], report["set"]
    st = m["ours_stages_s"]
    return [
        "| | seed (all pairs) | ours (embed once + top-k) | seed / ours |",
        "|---|---:|---:|---:|",
        f"| measured, {s['real']} x {s['generated']} at {s['image_size']} px | {m['seed_s']:.2f} s | "
        f"{m['ours_s']:.2f} s | {m['seed_over_ours']}x |",
        f"| extrapolated, {e['scale']['real']} x {e['scale']['generated']:,} | {e['seed_s']:,.0f} s "
        f"({e['seed_days']} days) | {e['ours_s']:,.0f} s | {e['seed_over_ours']:,.0f}x |",
        "",
        f"Ours by stage on the small set: pack {st['pack']:.2f} s, embed {st['embed']:.2f} s, "
        f"index {st['index']:.3f} s, relation {st['relation']:.3f} s. Per-unit costs: seed pair "
        f"{e['t_pair_s']} s; our image (read + encode) {e['t_image_s']} s; head on "
        f"{e['head']['pairs']:,} pairs {e['t_head_s']} s; FAISS build + search {e['t_faiss_s']} s.",
    ]


def main(argv=None) -> int:
    return standalone_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
