"""Benchmark data for the collection-level questions: audit cases, and several subsets with their own generators.

Audit cases (`build_audit_case`, `select_audit_case`). One real population
and one generator trained on a training set T (a membership benchmark built
by `synth.build_benchmark`, whose test split holds used images, members of T,
and not-used images, fresh). A case picks, from that test split, a candidate
collection of n_c images of which round(f n_c) are members of T (f = 1:
"used", f = 0: "not_used", 0 < f < 1: "partial") and a reference collection
of n_r fresh images disjoint from the candidate. Every case of one build
shares the generator, so `select_audit_case` can draw many cases (e.g. the
seeded null cases of a calibration run) from one build without training
another generator. The dev split stays the labelled 2023 dev layout
(dev used images are members of T too), so a scorer can be trained on it and
the share of the candidate that was used can be estimated against it.

```
OUT/dev/{generated,used,not_used}/   OUT/test/generated_1/ (the audited pool)   OUT/test_truth.csv
OUT/audit/candidate/*.png   OUT/audit/reference/*.png   (copies of test images, ids unchanged)
OUT/audit/candidate_truth.csv   figure_id,label (1 = member of T)   OUT/audit/case.json
```

Subsets (`build_subsets`, the ImageCLEFmedical GANs 2025 subtask-2 setting).
S disjoint real subsets of one population, each used to train its own
generator of the chosen family (`generators` registry), an optional extra
generator trained on reals in no subset (its images' truth is "none"), a
held-out null set of reals in no subset, and a separate labelled dev split
with its own generator for training a scorer:

```
OUT/subsets/<name>/<name>_0001.png ...    OUT/null/null_0001.png ...
OUT/generated/generated_00001.png ...     (every generator's samples, shuffled together)
OUT/generated_truth.csv                   figure_id,subset   (a subset name, or "none")
OUT/dev/{generated,used,not_used}/        OUT/synth.json
```
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint.benchdata.benchmark import build_benchmark
from fingerprint.benchdata.difficulty import measure_difficulty, nearest_distances
from fingerprint.benchdata.generators import family_accelerator, get_family
from fingerprint.benchdata.layout import _write_pngs, sample_checked
from fingerprint.benchdata.params import resolve_params
from fingerprint.benchdata.realimages import RealImages, folder_images, phantom_images
from fingerprint.core.distributed import set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, write_json
from fingerprint.evaluation.metrics import read_truth

log = logging.getLogger(__name__)

#: audit cases and the share of the candidate that is used (partial: given by `fraction`)
AUDIT_CASES = dict(used=1.0, not_used=0.0, partial=None)
#: the label of a generated image made by no subset's generator
NONE = "none"
FORMAT_SUBSETS = "fingerprint-synth-subsets/1"


def case_fraction(case: str, fraction: float | None) -> float:
    """The used share of a case: 1 (used), 0 (not_used) or `fraction` (partial, strictly between 0 and 1)."""
    if case not in AUDIT_CASES:
        raise FingerprintError(f"unknown audit case {case!r} (choose from {', '.join(AUDIT_CASES)})")
    fixed = AUDIT_CASES[case]
    if fixed is not None:
        if fraction is not None and fraction != fixed:
            raise FingerprintError(f"synth.audit_fraction {fraction} contradicts synth.audit_case {case}")
        return fixed
    f = 0.5 if fraction is None else float(fraction)
    if not 0.0 < f < 1.0:
        raise FingerprintError(f"synth.audit_fraction must be strictly between 0 and 1 for a partial case, got {f}")
    return f


def audit_counts(n_candidate: int, n_reference: int, test_used: int, test_not_used: int) -> dict[str, int]:
    """Test-split counts that let one build serve every case: >= n_c used, >= n_c + n_r not used."""
    if n_candidate < 1 or n_reference < 1:
        raise FingerprintError(f"audit case: candidate and reference need >= 1 image, got {n_candidate}, {n_reference}")
    return {"test_used": max(test_used, n_candidate), "test_not_used": max(test_not_used, n_candidate + n_reference)}


def select_audit_case(
    bench: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    case: str,
    fraction: float | None = None,
    n_candidate: int = 50,
    n_reference: int = 100,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Write one audit case drawn from the test split of a benchmark (`dest`/candidate, reference, truth, case.json).

    round(f n_c) candidates are drawn from the test used images, the rest and
    the n_r references from the test not-used images, all without
    replacement (seeded). Returns the case record.
    """
    bench, dest = Path(bench), Path(dest)
    f = case_fraction(case, fraction)
    truth = read_truth(bench / "test_truth.csv")
    folder = bench / "test" / "real_unknown_1"
    used = sorted(k for k, y in truth.items() if y == 1)
    fresh = sorted(k for k, y in truth.items() if y == 0)
    n_used = int(round(f * n_candidate))
    if n_used > len(used) or n_candidate - n_used + n_reference > len(fresh):
        raise FingerprintError(
            f"{bench}: {len(used)} used and {len(fresh)} not-used test images cannot give a candidate of "
            f"{n_candidate} ({n_used} used) and a reference of {n_reference}"
        )
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xA0D1])
    pick_used = rng.choice(used, n_used, replace=False).tolist()
    pick_fresh = rng.permutation(fresh)[: n_candidate - n_used + n_reference].tolist()
    candidate = sorted(pick_used + pick_fresh[: n_candidate - n_used])
    reference = sorted(pick_fresh[n_candidate - n_used :])
    record = {
        "case": case, "fraction": f, "n_candidate": n_candidate, "n_used": n_used, "n_reference": n_reference,
        "seed": seed, "benchmark": os.path.relpath(bench, dest), "generated": "test/generated_1",
    }  # fmt: skip
    with atomic_path(dest, overwrite=force) as tmp:
        for name, keys in (("candidate", candidate), ("reference", reference)):
            (tmp / name).mkdir(parents=True)
            for k in keys:
                shutil.copyfile(folder / f"{k}.png", tmp / name / f"{k}.png")
        rows = "".join(f"{k},{truth[k]}\n" for k in candidate)
        (tmp / "candidate_truth.csv").write_text("figure_id,label\n" + rows)
        write_json(tmp / "case.json", record)
    return record


def build_audit_case(
    out_dir: str | os.PathLike,
    *,
    case: str,
    fraction: float | None = None,
    n_candidate: int = 50,
    n_reference: int = 100,
    force: bool = False,
    progress: bool = True,
    **benchmark: Any,
) -> dict:
    """A membership benchmark (`synth.build_benchmark(**benchmark)`) with one audit case in OUT/audit/.

    The test split is enlarged where needed (`audit_counts`) so that the same
    build (same seed) serves every case. Returns the synth.json content, which
    gains an "audit" record.
    """

    out_dir = Path(out_dir)
    case_fraction(case, fraction)
    if out_dir.exists() and not force:
        raise FingerprintError(f"{out_dir}: already exists (use synth.force to replace it)")
    level, seed = benchmark.pop("level", "medium"), benchmark.pop("seed", 0)
    real_dir = benchmark.pop("real_dir", None)
    p = resolve_params(level, seed=seed, real_dir=real_dir, **benchmark)
    benchmark |= audit_counts(n_candidate, n_reference, p.test_used, p.test_not_used)
    with atomic_path(out_dir) as tmp:
        build_benchmark(tmp, level=level, seed=seed, real_dir=real_dir, progress=progress, **benchmark)
        record = select_audit_case(
            tmp, tmp / "audit", case=case, fraction=fraction, n_candidate=n_candidate, n_reference=n_reference,
            seed=seed,
        )  # fmt: skip
        info = read_json(tmp / "synth.json")
        info["audit"] = record
        write_json(tmp / "synth.json", info)
    log.info("audit case %s: candidate %d (%d used), reference %d", case, n_candidate, record["n_used"], n_reference)
    return info


# ----------------------------------------------------------------------------- subsets


def subset_names(n: int) -> list[str]:
    """subset1, subset2, ... (dot-free, usable as file-name prefixes and CSV labels)."""
    if n < 2:
        raise FingerprintError(f"synth.subsets must be >= 2, got {n}")
    return [f"subset{i + 1}" for i in range(n)]


def _subset_split(p, n_subsets: int, size: int, outside: bool, null_size: int, n_real: int) -> dict:
    """Seeded disjoint assignment of the real pool: dev used / not used, each subset, outside, null."""
    perm = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x5B5E7]).permutation(n_real)
    parts = [("dev_used", p.dev_used), ("dev_not_used", p.dev_not_used)]
    parts += [(name, size) for name in subset_names(n_subsets)]
    parts += [("outside", size if outside else 0), ("null", null_size)]
    out, k = {}, 0
    for name, n in parts:
        out[name] = perm[k : k + n]
        k += n
    return out


#: subsets builds: generator overrides per level (tiny generators need longer to tell 16 images apart)
SUBSET_PRESETS: dict[str, dict[str, Any]] = {"tiny": {"epochs": 300}}


def subset_generator_config(p, level: str, level_train: int, n_train: int, given: dict) -> Any:
    """The generator config for a subset of `n_train` images: as many optimiser steps as the level's benchmark
    generator took on `level_train` images (epochs scaled), or the SUBSET_PRESETS value, unless given."""
    cfg = p.generator
    if given.get("epochs") is not None or not hasattr(cfg, "epochs") or not hasattr(cfg, "batch_size"):
        return cfg
    if "epochs" in SUBSET_PRESETS.get(level, {}):
        return replace(cfg, epochs=SUBSET_PRESETS[level]["epochs"])
    steps_then, steps_now = -(-level_train // cfg.batch_size), -(-n_train // cfg.batch_size)
    return replace(cfg, epochs=max(1, round(cfg.epochs * steps_then / steps_now)))


def _train_and_sample(p, images, n: int, real_all: np.ndarray, seed: int, accelerator, progress: bool):
    """Train one generator of the build's family on `images`; draw `n` samples without near-copies."""
    gen, history = get_family(p.family).train(
        images, p.generator, seed=seed, accelerator=accelerator, progress=progress
    )
    drawn, rejected, _ = sample_checked(gen, n, real_all, seed=seed, max_correlation=p.max_correlation)
    return drawn, {"family": p.family, **get_family(p.family).summarize(history), "near_duplicates": rejected}


def build_subsets(
    out_dir: str | os.PathLike,
    *,
    n_subsets: int = 3,
    subset_size: int | None = None,
    subset_generated: int | None = None,
    outside: bool = True,
    null_size: int | None = None,
    force: bool = False,
    progress: bool = True,
    **benchmark: Any,
) -> dict:
    """Build S real subsets with one generator each, a mixed generated pool with its truth, null reals, a dev split.

    `benchmark` are `synth.resolve_params` arguments (level, seed, real_dir and
    any override: image size, generator family and its config, dev counts).
    Defaults: subsets of 16 (tiny) or 50 images, 30 (tiny) or 100 samples per
    generator, a null set as large as the subsets together. Returns synth.json.
    """

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise FingerprintError(f"{out_dir}: already exists (use synth.force to replace it)")
    level = benchmark.pop("level", "medium")
    p = resolve_params(level, **benchmark)
    tiny = level == "tiny"
    size = subset_size or (16 if tiny else 50)
    n_gen = subset_generated or (30 if tiny else 100)
    null_size = n_subsets * size if null_size is None else null_size
    names = subset_names(n_subsets)
    if size < 2 or n_gen < 1 or null_size < 0:
        raise FingerprintError(f"synth: subsets need >= 2 images and >= 1 sample each, got {size}, {n_gen}")
    extra = n_subsets * size + (size if outside else 0)
    gen_cfg = subset_generator_config(p, level, p.dev_used + p.test_used, size, benchmark)
    dev_cfg = subset_generator_config(p, level, p.dev_used + p.test_used, p.dev_used, benchmark)
    # the real pool: dev + subsets + outside + null
    p = replace(p, test_used=extra, test_not_used=null_size, generator=gen_cfg)
    prev_threads = torch.get_num_threads()
    set_threads(p.threads)
    try:
        return _build_subsets(out_dir, p, dev_cfg, names, size, n_gen, outside, null_size, progress)
    finally:
        torch.set_num_threads(prev_threads)


def _build_subsets(out_dir, p, dev_cfg, names, size, n_gen, outside, null_size, progress) -> dict:
    t_all = time.perf_counter()
    accelerator = family_accelerator(p.generator)
    real = folder_images(p) if p.real_dir else phantom_images(p, progress)
    split = _subset_split(p, len(names), size, outside, null_size, len(real.images))
    sources = [*names, *(["outside"] if outside else [])]
    pool, truth, generators = [], [], {}
    for j, name in enumerate(["dev", *sources]):
        train_on = split["dev_used"] if name == "dev" else split[name]
        n = p.dev_generated if name == "dev" else n_gen
        log.info("training the %s generator on %d images", name, len(train_on))
        pj = replace(p, generator=dev_cfg) if name == "dev" else p
        drawn, record = _train_and_sample(
            pj, real.images[train_on], n, real.images, p.seed * 1009 + j, accelerator, progress
        )
        record["epochs"] = getattr(pj.generator, "epochs", None)
        generators[name] = record
        if name == "dev":
            dev_generated = drawn
        else:
            pool.append(drawn)
            truth += [NONE if name == "outside" else name] * len(drawn)
    order = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x6E4]).permutation(len(truth))
    pool_images, truth = np.concatenate(pool)[order], [truth[i] for i in order]
    with atomic_path(out_dir) as tmp:
        keys = _write_subsets(tmp, real, split, names, dev_generated, pool_images)
        (tmp / "generated_truth.csv").write_text(
            "figure_id,subset\n" + "".join(f"{k},{t}\n" for k, t in zip(keys, truth))
        )
        info = _subsets_info(p, names, size, n_gen, outside, null_size, generators, real)
        info["difficulty"] = {
            "pixel_nn_auc": measure_difficulty(tmp),
            "pixel_nn_attribution_accuracy": pixel_attribution_accuracy(real, split, names, pool_images, truth),
        }
        info["timings"] = {"total": round(time.perf_counter() - t_all, 3)}
        write_json(tmp / "synth.json", info)
    log.info(
        "wrote %s: %d subsets, %d generated images (%.0f s)",
        out_dir,
        len(names),
        len(truth),
        time.perf_counter() - t_all,
    )
    return info


def _write_subsets(tmp: Path, real: RealImages, split: dict, names, dev_generated, pool_images) -> list[str]:
    """The subset, null, dev and pool folders; returns the pool's keys."""
    tmp.mkdir(parents=True)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
        for name in names:
            _write_pngs(tmp / "subsets" / name, name, real.images[split[name]], 4, ex)
        if len(split["null"]):
            _write_pngs(tmp / "null", "null", real.images[split["null"]], 4, ex)
        _write_pngs(tmp / "dev" / "used", "used", real.images[split["dev_used"]], 4, ex)
        _write_pngs(tmp / "dev" / "not_used", "not_used", real.images[split["dev_not_used"]], 4, ex)
        _write_pngs(tmp / "dev" / "generated", "generated", dev_generated, 4, ex)
        keys = _write_pngs(tmp / "generated", "generated", pool_images, 5, ex)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["figure_id", "folder", "source"])
    for name in [*names, "null", "outside"]:
        w.writerows((f"{name}_{i + 1:04d}", name, real.sources[j]) for i, j in enumerate(split[name]))
    (tmp / "real_sources.csv").write_text(buf.getvalue())
    return keys


def pixel_attribution_accuracy(real: RealImages, split: dict, names, pool: np.ndarray, truth: list[str]) -> float:
    """Forced-choice accuracy of "the subset holding the nearest real image by pixel L2" on subset-made images.

    The plain baseline of attribution, as the pixel-NN AUC is of membership.
    """
    made = np.array([t != NONE for t in truth])
    if not made.any():
        return float("nan")
    dist = np.stack([nearest_distances(pool[made], real.images[split[n]]) for n in names], axis=1)
    predicted = np.asarray(names)[dist.argmin(axis=1)]
    return round(float(np.mean(predicted == np.asarray(truth)[made])), 4)


def _subsets_info(p, names, size, n_gen, outside, null_size, generators, real) -> dict:
    return {
        "format": FORMAT_SUBSETS,
        "level": p.level,
        "seed": p.seed,
        "params": {k: v for k, v in asdict(p).items() if k not in ("test_used", "test_not_used")},
        "source": "real_dir" if p.real_dir else "phantom",
        "subsets": {
            "names": names,
            "size": size,
            "generated_per_subset": n_gen,
            "outside_generator": outside,
            "outside_generated": n_gen if outside else 0,
            "null_size": null_size,
        },  # fmt: skip
        "counts": {"dev": {"generated": p.dev_generated, "used": p.dev_used, "not_used": p.dev_not_used}},
        "layout": {
            "subsets": "subsets/<name>",
            "generated": "generated",
            "truth": "generated_truth.csv",
            "null": "null",
            "dev": "dev",
            "sources": "real_sources.csv",
        },  # fmt: skip
        "generators": generators,
        "real_images": {"skipped": real.skipped},
    }
