"""Self-contained HTML report (images embedded, opens offline) and a Markdown summary of a run folder.

Reads whatever the run folder holds (shards, model/train_log.jsonl, metrics.json,
scores/, compare/, cluster/) and writes RUN_DIR/report.html and report.md; a
missing optional part becomes a visible note in the report.
"""

from __future__ import annotations

import time
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.utils import JsonlLogger

NAME = "report"


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (fingerprint run, or the stages' outputs)")
    p.add_argument("--truth", help="truth file figure_id,label for the test split (default: RUN_DIR/test_truth.csv)")
    p.add_argument("--out-dir", help="where report.html and report.md go (default: RUN_DIR)")
    p.add_argument("--samples-per-group", type=int, default=4, help="sample images shown per split and role/label")
    p.add_argument("--strip-scorer", default="relation", help="scorer whose hits and misses get neighbour strips")
    p.add_argument(
        "--top-n", type=int, default=3, help="strips per category (true positives, false positives, false negatives)"
    )
    p.add_argument("--strip-k", type=int, default=5, help="generated neighbours per strip")
    p.add_argument("--seed", type=int, default=0, help="picks the sample images")
    p.add_argument("--force", action="store_true", help="replace an existing report")


def run(args) -> int:
    from fingerprint.report import build_report

    t0 = time.perf_counter()
    html_path, md_path = build_report(
        args.run_dir,
        truth=args.truth,
        out_dir=args.out_dir,
        samples_per_group=args.samples_per_group,
        strip_scorer=args.strip_scorer,
        top_n=args.top_n,
        strip_k=args.strip_k,
        seed=args.seed,
        force=args.force,
    )
    print(f"wrote {html_path} and {md_path}")
    JsonlLogger(Path(args.run_dir) / "log.jsonl").log(
        stage=NAME, seconds=round(time.perf_counter() - t0, 3), html_bytes=html_path.stat().st_size
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
