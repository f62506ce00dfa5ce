"""The compare stage: scikit-learn comparators over exported features (`run_compare(CompareConfig)`).

The seed's run 3 was a one-off notebook (an RBF SVM on concatenated real +
generated ResNet features, majority vote per real image). Here every
comparator (`fingerprint.analysis.comparators`) is cross-validated on the labelled
development set over per-image feature sets (`fingerprint.analysis.compare_features`),
ranked, then refitted on the whole development set to score the test set;
each comparator becomes a scorer `cmp_<name>` with a score file like any
other. The seed's pair mode (`seed-pairs`) stays available for comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fingerprint.analysis.comparators import (
    COMPARATORS,
    MODEL_SUFFIX,
    MODES,
    CVResult,
    Task,
    cross_validate,
    fit_task,
    rank,
    ranking_table,
    save_comparator,
    score_task,
)
from fingerprint.analysis.compare_features import (
    FEATURE_SETS,
    FeatureMatrix,
    SplitData,
    build_features,
    feature_arrays,
    label_codes,
    load_split,
)
from fingerprint.core.config import check_fields, fail, option, require
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, write_json, write_text
from fingerprint.core.locks import locks_folder
from fingerprint.core.logs import JsonlLogger, is_main_process
from fingerprint.core.vocab import METRICS, SCORE_SCALES, THRESHOLD_RULES
from fingerprint.evaluation.metrics import apply_threshold
from fingerprint.evaluation.runfile import write_run_file
from fingerprint.evaluation.scorefiles import write_scores
from fingerprint.membership.scorers import scorer_names, untrained_scorers

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class CompareConfig:
    """Options of the compare stage (`fingerprint compare`); the paths are needed by `run_compare` only."""

    SECTION = "compare"

    dev: Path | None = option(
        None, required=True, help="features .npz of the labelled development split (fingerprint embed)"
    )
    test: Path | None = option(None, help="features .npz of the split to score (optional: CV only without it)")
    out: Path | None = option(None, required=True, help="run folder: writes scores/cmp_<name>.csv and compare/")
    dev_scores: Path | None = option(
        None, help="score folder of the dev split (neighbours.npz, <scorer>.csv) for the relation/baselines features"
    )
    test_scores: Path | None = option(None, help="score folder of the test split (default: OUT/scores)")
    features: tuple[str, ...] = option(
        ("embedding", "profile"), help=f"comma-separated feature sets, or 'all': {','.join(FEATURE_SETS)}"
    )
    comparators: tuple[str, ...] = option(
        tuple(COMPARATORS), help=f"comma-separated, or 'all': {','.join(COMPARATORS)}"
    )
    mode: str = option(
        "per-image", choices=MODES, help="per-image features, the seed's run-3 pair features with a vote, or both"
    )
    pair_comparators: tuple[str, ...] = option(
        ("svm_rbf",), help="comparators used in seed-pairs mode (the seed used svm_rbf)"
    )
    baselines: tuple[str, ...] = option(
        untrained_scorers(), choices=scorer_names, help="score files used by the baselines feature set"
    )
    folds: int = option(5, min=2, help="stratified k-fold splits on dev")
    repeats: int = option(3, min=1, help="repeats of the k-fold split")
    top_k: int = option(16, min=1, help="length of the similarity profile to the generated set")
    max_pairs: int = option(
        4000, min=1, help="seed-pairs: training pairs (each real image gets max-pairs / n_real random partners)"
    )
    threshold_rule: str = option(
        THRESHOLD_RULES[0], choices=THRESHOLD_RULES, help="threshold rule on out-of-fold dev scores"
    )
    threshold_scale: str = option(
        SCORE_SCALES[0], choices=SCORE_SCALES, help="scale of the threshold (robust/rank: standardised per split)"
    )
    rank_by: str = option("roc_auc", choices=METRICS, help="metric that ranks the comparators")
    n_boot: int = option(1000, min=0, help="bootstrap resamples for the intervals (spread over repeats)")
    n_jobs: int = option(1, choices=(1, 2), help="scikit-learn parallel jobs")
    seed: int = option(0, help="seeds the CV splits, the models and the pair plans")
    force: bool = option(False, help="replace existing compare outputs")

    def __post_init__(self) -> None:
        for name, everything in (("features", FEATURE_SETS), ("comparators", COMPARATORS)):
            if getattr(self, name) == ("all",):
                setattr(self, name, tuple(everything))
        bad = [f for f in self.features if f not in FEATURE_SETS]
        if bad or not self.features:
            msg = f"unknown feature set(s) {','.join(bad) or '(none)'}; choose from {','.join(FEATURE_SETS)}"
            raise fail(self, "features", msg)
        for name in ("comparators", "pair_comparators"):
            bad = [c for c in getattr(self, name) if c not in COMPARATORS]
            if bad:
                raise fail(self, name, f"unknown comparator(s) {','.join(bad)}; choose from {','.join(COMPARATORS)}")
        check_fields(self)

    def runs(self) -> list[tuple[str, str, str]]:
        """(scorer name, model, mode) for every comparator this config runs."""
        out = []
        if self.mode in ("per-image", "both"):
            out += [(f"cmp_{c}", c, "per-image") for c in self.comparators]
        if self.mode in ("seed-pairs", "both"):
            out += [(f"cmp_pairs_{c}", c, "seed-pairs") for c in self.pair_comparators]
        return out


@locks_folder(lambda cfg: cfg.out, "fingerprint compare")
def run_compare(cfg: CompareConfig) -> dict:
    """Load the dev (and test) split from files and run `run_comparators` into the run folder `cfg.out`."""
    require(cfg, "dev", "out")
    needs_scores = {"relation", "baselines"} & set(cfg.features)
    if needs_scores and not cfg.dev_scores:
        raise fail(cfg, "features", f"{','.join(sorted(needs_scores))} needs compare.dev_scores (the dev score folder)")
    t0 = time.perf_counter()
    sets = {"feature_sets": cfg.features, "baselines": cfg.baselines}
    dev = load_split(cfg.dev, scores_dir=cfg.dev_scores, name="dev", **sets)
    test = None
    if cfg.test:
        test = load_split(cfg.test, scores_dir=cfg.test_scores or Path(cfg.out) / "scores", name="test", **sets)
    result = run_comparators(dev, test, cfg, out_dir=cfg.out, force=cfg.force)
    JsonlLogger(Path(cfg.out) / "log.jsonl").log(
        stage="compare",
        seconds=round(time.perf_counter() - t0, 3),
        best=result["best"],
        n_dev=result["n_dev"],
        comparators=len(result["cv"]),
    )
    return result


def _as_split(x: Any, name: str) -> SplitData:
    return x if isinstance(x, SplitData) else SplitData(x, name=name)


def _generated(split: SplitData) -> np.ndarray:
    _, roles, _, emb = feature_arrays(split.features)
    gen = emb[roles == "generated"]
    if len(gen) == 0:
        raise FingerprintError(f"{split.name}: seed-pairs mode needs generated images in the features")
    return gen


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _tasks(dev: SplitData, test: SplitData | None, cfg: CompareConfig, runs: list) -> tuple[dict, dict]:
    """The training tasks on dev (per mode) and the labelled dev rows; test's feature matrix rides along."""
    per_image = any(mode == "per-image" for _, _, mode in runs)
    pairs = any(mode == "seed-pairs" for _, _, mode in runs)
    opts = {"top_k": cfg.top_k, "baselines": cfg.baselines, "seed": cfg.seed}
    dev_fm = build_features(dev, cfg.features, **opts) if per_image else None
    test_fm = build_features(test, cfg.features, **opts) if per_image and test else None
    if dev_fm is not None and test_fm is not None and dev_fm.columns != test_fm.columns:
        raise FingerprintError(
            f"dev and test feature columns differ ({len(dev_fm.columns)} vs {len(test_fm.columns)}): "
            "relation features need the same k in both neighbours.npz files"
        )
    dkeys, droles, dlabels, demb = feature_arrays(dev.features)
    dev_real = droles == "real"
    y_all = label_codes(dlabels[dev_real])
    lab = y_all >= 0
    tasks = {}
    if per_image:
        tasks["per-image"] = Task("per-image", dev_fm.X[lab], None)
    if pairs:
        real = demb[dev_real][lab].astype(np.float64)
        tasks["seed-pairs"] = Task("seed-pairs", real, _generated(dev).astype(np.float64), cfg.max_pairs)
    dev_rows = {"y": y_all[lab], "keys": dkeys[dev_real][lab], "n_unknown": int((~lab).sum()), "fm": dev_fm}
    return tasks, dev_rows | {"test_fm": test_fm}


def _cross_validate_all(runs: list, tasks: dict, y: np.ndarray, cfg: CompareConfig) -> dict[str, CVResult]:
    cv: dict[str, CVResult] = {}
    for name, model, mode in tqdm(runs, desc="compare: CV", disable=not is_main_process()):
        cv[name] = cross_validate(
            *(name, model, tasks[mode], y),
            folds=cfg.folds,
            repeats=cfg.repeats,
            threshold_rule=cfg.threshold_rule,
            threshold_scale=cfg.threshold_scale,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            n_jobs=cfg.n_jobs,
        )
        s = cv[name].summary
        auc, f1 = _num(s["roc_auc"]["value"]), _num(s["f1"]["value"])
        log.info("%s: CV roc_auc %s f1 %s (%.1f s)", name, auc, f1, cv[name].seconds)
    return cv


def run_comparators(
    dev: Any, test: Any | None = None, cfg: CompareConfig | None = None, *, out_dir: str | Path | None = None,
    force: bool = False,
) -> dict:  # fmt: skip
    """Cross-validate every configured comparator on `dev`, rank them, refit on all of `dev` and score `test`.

    `dev`/`test` are `SplitData` (or bare `Features`). With `out_dir` (a run
    folder) it writes `scores/cmp_<name>.csv` per comparator (test), and
    `compare/` holding `cv.json` (the returned dict), `ranking.md`, the fitted
    models (`models/cmp_<name>.skops` + sha256 sidecar) and `run.csv`, the
    official run file of the best comparator. Returns a dict with `cv`
    (scorer -> evaluate-shaped dict over CV repeats), `ranking`, `best`,
    `thresholds` and, with a test split, `test` (scorer -> counts).
    """
    cfg = cfg or CompareConfig()
    dev = _as_split(dev, "dev")
    test = _as_split(test, "test") if test is not None else None
    runs = cfg.runs()
    if not runs:
        raise FingerprintError("no comparator selected")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        _check_outputs(out_dir, force)
    tasks, rows = _tasks(dev, test, cfg, runs)
    y = rows["y"]
    if rows["n_unknown"]:
        log.info("dev: %d real image(s) without a used/not_used label skipped", rows["n_unknown"])
    cv = _cross_validate_all(runs, tasks, y, cfg)
    result = _result(cfg, cv, rows)
    table = ranking_table(result["cv"], result["ranking"])
    if test is not None or out_dir is not None:
        models, test_scores = _refit(runs, tasks, y, cv, test, rows["test_fm"], cfg, result["columns"])
        result["test"] = {n: {"n": int(len(k)), "n_used": int(p.sum()), "threshold": cv[n].threshold}
                          for n, (k, _, p) in test_scores.items()}  # fmt: skip
        if out_dir is not None:
            _write_outputs(out_dir, result, table, models, test_scores, force)
    return result | {"table": table}


def _result(cfg: CompareConfig, cv: dict[str, CVResult], rows: dict) -> dict[str, Any]:
    summaries = {n: r.summary for n, r in cv.items()}
    order = rank(summaries, cfg.rank_by)
    y = rows["y"]
    return {
        "stage": "compare",
        "config": dataclasses.asdict(cfg),
        "n_dev": int(len(y)),
        "n_dev_pos": int(y.sum()),
        "n_dev_unlabelled_skipped": rows["n_unknown"],
        "columns": rows["fm"].columns if rows["fm"] is not None else [],
        "cv": summaries,
        "ranking": order,
        "best": order[0],
        "thresholds": {n: r.threshold for n, r in cv.items()},
        "seconds": {n: round(r.seconds, 3) for n, r in cv.items()},
        "oof": {
            "keys": [str(k) for k in rows["keys"]],
            "scores": {n: r.oof.mean(axis=0).round(6).tolist() for n, r in cv.items()},
        },
    }


def _refit(runs, tasks, y, cv, test, test_fm, cfg: CompareConfig, columns) -> tuple[dict, dict]:
    """Refit every comparator on all labelled dev images; score the test split with each (if given)."""
    models: dict[str, tuple[Any, dict]] = {}
    test_scores: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    full = np.arange(len(y))
    for name, model, mode in runs:
        pipe = fit_task(model, tasks[mode], full, y, seed=cfg.seed, n_jobs=cfg.n_jobs)
        rule = "majority" if mode == "seed-pairs" else cfg.threshold_rule
        meta = {"name": name, "model": model, "mode": mode, "features": list(cfg.features), "columns": columns,
                "threshold": cv[name].threshold, "threshold_rule": rule, "seed": cfg.seed, "n_train": int(len(y)),
                "threshold_scale": "raw" if mode == "seed-pairs" else cfg.threshold_scale,
                "max_pairs": cfg.max_pairs}  # fmt: skip
        models[name] = (pipe, meta)
        if test is not None:
            keys, s = _score_split(pipe, mode, test, test_fm, cfg)
            scale = "raw" if mode == "seed-pairs" else cfg.threshold_scale
            test_scores[name] = (keys, s, apply_threshold(s, cv[name].threshold, scale)[0])
    return models, test_scores


def _score_split(
    pipe, mode: str, test: SplitData, test_fm: FeatureMatrix | None, cfg: CompareConfig
) -> tuple[np.ndarray, np.ndarray]:
    if mode == "per-image":
        task = Task("per-image", test_fm.X, None)
        return test_fm.keys, score_task(pipe, task, np.arange(len(test_fm.X)), seed=cfg.seed, n_jobs=cfg.n_jobs)
    keys, roles, _, emb = feature_arrays(test.features)
    real = roles == "real"
    task = Task("seed-pairs", emb[real].astype(np.float64), _generated(test).astype(np.float64), cfg.max_pairs)
    return keys[real], score_task(pipe, task, np.arange(int(real.sum())), seed=cfg.seed, n_jobs=cfg.n_jobs)


def _check_outputs(out_dir: Path, force: bool) -> None:
    existing = [p for p in [out_dir / "compare", *sorted((out_dir / "scores").glob("cmp_*.csv"))] if p.exists()]
    if existing and not force:
        raise FingerprintError(f"{existing[0]}: already exists (use compare.force to replace it)")


def _write_outputs(out_dir: Path, result: dict, table: str, models: dict, test_scores: dict, force: bool) -> None:
    """Score files first, then the compare/ folder in one atomic rename (its cv.json marks the stage complete)."""
    scores_dir = out_dir / "scores"
    if force:
        for old in sorted(scores_dir.glob("cmp_*.csv")):
            if old.stem not in test_scores:
                log.info("removing stale %s", old)
                old.unlink()
                old.with_suffix(".json").unlink(missing_ok=True)
    for name, (keys, s, pred) in test_scores.items():
        meta = {"scorer": name, "threshold_on_scale": result["thresholds"][name],
                "threshold_scale": models[name][1]["threshold_scale"], "rule": models[name][1]["threshold_rule"],
                "source": "compare", "calibrated_on": "dev (cross-validated out-of-fold scores)"}  # fmt: skip
        meta["threshold"] = apply_threshold(s, meta["threshold_on_scale"], meta["threshold_scale"])[1]
        write_scores(scores_dir / f"{name}.csv", keys, s, pred, meta=meta)
    with atomic_path(out_dir / "compare") as tmp:
        tmp.mkdir(parents=True)
        for name, (pipe, meta) in models.items():
            save_comparator(pipe, tmp / "models" / f"{name}{MODEL_SUFFIX}", meta)
        best = result["best"]
        if best in test_scores:
            keys, _, pred = test_scores[best]
            write_run_file(tmp / "run.csv", keys, pred)
        write_text(
            tmp / "ranking.md", f"# Comparators (CV on dev, ranked by {result['config']['rank_by']})\n\n{table}\n"
        )
        write_json(tmp / "cv.json", result)
    log.info("compare: wrote %s (best: %s)", out_dir / "compare", result["best"])
