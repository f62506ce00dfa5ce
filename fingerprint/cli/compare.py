"""Scikit-learn comparators over exported features: cross-validated on dev, ranked, refitted to score test.

Writes OUT/scores/cmp_<name>.csv per comparator (test split) and OUT/compare/
(cv.json, ranking.md, the fitted models with sha256 sidecars, and run.csv, the
official run file of the best comparator). The relation and baselines feature
sets read each split's score folder (neighbours.npz, <baseline>.csv), so they
need `fingerprint score` outputs for the dev split as well as the test split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.utils import FingerprintError, JsonlLogger

NAME = "compare"
log = logging.getLogger(__name__)


def _names(text: str, all_names=None) -> tuple[str, ...]:
    """Comma-separated names; 'all' means every name in `all_names` where given."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    return tuple(all_names) if all_names is not None and items == ("all",) else items


def add_arguments(p) -> None:
    from fingerprint.compare import COMPARATORS, FEATURE_SETS, METRICS, MODES

    p.add_argument("--dev", required=True, help="features .npz of the labelled development split (fingerprint embed)")
    p.add_argument("--test", help="features .npz of the split to score (optional: CV only without it)")
    p.add_argument("--out", required=True, help="run folder: writes scores/cmp_<name>.csv and compare/")
    p.add_argument(
        "--dev-scores", help="score folder of the dev split (neighbours.npz, <baseline>.csv) for relation/baselines"
    )
    p.add_argument("--test-scores", help="score folder of the test split (default: OUT/scores)")
    p.add_argument(
        "--features",
        default="embedding,profile",
        help=f"comma-separated feature sets, or 'all': {','.join(FEATURE_SETS)}",
    )
    p.add_argument("--comparators", default="all", help=f"comma-separated, or 'all': {','.join(COMPARATORS)}")
    p.add_argument(
        "--mode",
        default="per-image",
        choices=MODES,
        help="per-image features, the seed's run-3 pair features with a majority vote, or both",
    )
    p.add_argument(
        "--pair-comparators", default="svm_rbf", help="comparators used in seed-pairs mode (the seed used svm_rbf)"
    )
    p.add_argument(
        "--baselines", default="dcr,ssim,emb_nn,emb_topk", help="baseline score files used by the baselines feature set"
    )
    p.add_argument("--folds", type=int, default=5, help="stratified k-fold splits on dev")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the k-fold split")
    p.add_argument("--top-k", type=int, default=16, help="length of the similarity profile to the generated set")
    p.add_argument(
        "--max-pairs",
        type=int,
        default=4000,
        help="seed-pairs: training pairs (each real image gets max-pairs / n_real random generated partners)",
    )
    p.add_argument(
        "--threshold-rule",
        default="max_f1",
        choices=("max_f1", "youden"),
        help="threshold rule on out-of-fold dev scores",
    )
    p.add_argument("--rank-by", default="roc_auc", choices=METRICS, help="metric that ranks the comparators")
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals (spread over repeats)"
    )
    p.add_argument("--n-jobs", type=int, default=1, choices=(1, 2), help="scikit-learn parallel jobs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing compare outputs")


def run(args) -> int:
    from fingerprint.compare import COMPARATORS, FEATURE_SETS, CompareConfig, load_split, run_comparators

    cfg = CompareConfig(
        features=_names(args.features, FEATURE_SETS),
        comparators=_names(args.comparators, COMPARATORS),
        mode=args.mode,
        pair_comparators=_names(args.pair_comparators, COMPARATORS),
        baselines=_names(args.baselines),
        folds=args.folds,
        repeats=args.repeats,
        top_k=args.top_k,
        max_pairs=args.max_pairs,
        threshold_rule=args.threshold_rule,
        rank_by=args.rank_by,
        n_boot=args.n_boot,
        n_jobs=args.n_jobs,
        seed=args.seed,
    )
    cfg.check()
    out = Path(args.out)
    needs_scores = {"relation", "baselines"} & set(cfg.features)
    if needs_scores and not args.dev_scores:
        raise FingerprintError(
            f"--features {','.join(sorted(needs_scores))} needs --dev-scores (the dev split's score folder)"
        )
    t0 = time.perf_counter()
    dev = load_split(
        args.dev, scores_dir=args.dev_scores, feature_sets=cfg.features, baselines=cfg.baselines, name="dev"
    )
    test = None
    if args.test:
        test = load_split(
            args.test,
            scores_dir=args.test_scores or out / "scores",
            feature_sets=cfg.features,
            baselines=cfg.baselines,
            name="test",
        )
    result = run_comparators(dev, test, cfg, out_dir=out, force=args.force)
    seconds = time.perf_counter() - t0
    print(
        f"Comparators, {cfg.folds}-fold x {cfg.repeats} CV on {result['n_dev']} labelled dev images "
        f"(features: {','.join(cfg.features)}; ranked by {cfg.rank_by}):"
    )
    print(result["table"])
    print(
        f"best: {result['best']}; wrote {out / 'compare'}" + (f" and {len(result['test'])} score files" if test else "")
    )
    JsonlLogger(out / "log.jsonl").log(
        stage=NAME, seconds=round(seconds, 3), best=result["best"], n_dev=result["n_dev"], comparators=len(result["cv"])
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
