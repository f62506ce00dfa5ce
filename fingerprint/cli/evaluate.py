"""Metrics with bootstrap 95% intervals for score files (or official run files) against a truth file."""

from __future__ import annotations

import logging
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.metrics import align_truth, evaluate, format_table, read_truth
from fingerprint.runfile import read_run_file
from fingerprint.score import SCORE_HEADER, read_score_meta, read_scores
from fingerprint.utils import FingerprintError, write_json

NAME = "evaluate"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("scores", nargs="+", help="score files (key,score,label) or run files (figure_id,label, no header)")
    p.add_argument("--truth", required=True, help="truth file: figure_id,label with 1 = used")
    p.add_argument("--out", help="write every scorer's metrics here as JSON")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (0: none)")
    p.add_argument("--split", default="test", help="name of the evaluated split, stored in the JSON")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def _is_score_file(path: Path) -> bool:
    if not path.is_file():
        raise FingerprintError(f"{path}: file not found")
    with open(path, errors="replace") as f:
        first = f.readline()
    return [c.strip() for c in first.split(",")] == SCORE_HEADER


def evaluate_file(path: str | Path, truth: dict[str, int], *, truth_path: str, n_boot: int, seed: int) -> dict:
    """evaluate() for one score or run file; the threshold comes from the score file's sidecar."""
    path = Path(path)
    if _is_score_file(path):
        table = read_scores(path)
        keys, scores, labels = table.keys, table.scores, table.labels
        meta = read_score_meta(path) or {}
        threshold = meta.get("threshold")
    else:
        run = read_run_file(path)
        keys, scores, labels, threshold = list(run), None, list(run.values()), None
    y_true = align_truth(keys, truth, source=str(path), truth_path=truth_path)
    return evaluate(y_true, scores, labels, threshold=threshold, n_boot=n_boot, seed=seed)


def run(args) -> int:
    if args.n_boot < 0:
        raise FingerprintError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.out and Path(args.out).exists() and not args.force:
        raise FingerprintError(f"{args.out}: already exists (use --force to replace it)")
    truth = read_truth(args.truth)
    results: dict[str, dict] = {}
    for path in args.scores:
        name = Path(path).stem
        if name in results:
            raise FingerprintError(f"{path}: another input is also named {name!r}")
        results[name] = evaluate_file(path, truth, truth_path=args.truth, n_boot=args.n_boot, seed=args.seed)
    print(format_table(results))
    if args.out:
        write_json(
            args.out,
            {
                "split": args.split,
                "truth": str(args.truth),
                "n_boot": args.n_boot,
                "seed": args.seed,
                "scorers": results,
            },
        )
        log.info("wrote %s", args.out)
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
