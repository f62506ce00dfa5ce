"""Scikit-learn comparators over exported features: cross-validated on dev, ranked, refitted to score test.

Writes OUT/scores/cmp_<name>.csv per comparator (test split) and OUT/compare/
(cv.json, ranking.md, the fitted models with sha256 sidecars, and run.csv, the
official run file of the best comparator). The relation and baselines feature
sets read each split's score folder (neighbours.npz, <scorer>.csv), so they
need `fingerprint score` outputs for the dev split as well as the test split.
"""

from __future__ import annotations

from pathlib import Path

from fingerprint.analysis.compare import CompareConfig, run_compare
from fingerprint.cli.options import command

NAME = "compare"


def run(cfg: CompareConfig) -> int:
    result = run_compare(cfg)
    print(
        f"Comparators, {cfg.folds}-fold x {cfg.repeats} CV on {result['n_dev']} labelled dev images "
        f"(features: {','.join(cfg.features)}; ranked by {cfg.rank_by}):"
    )
    print(result["table"])
    written = f" and {len(result['test'])} score files" if cfg.test else ""
    print(f"best: {result['best']}; wrote {Path(cfg.out) / 'compare'}" + written)
    return 0


main = command(NAME, CompareConfig, run, __doc__)
