"""The whole pipeline on a folder holding dev/ and test/ in the 2023 layouts, or on packed shards.

pack -> adapt (-> pretrain) -> train -> embed -> index -> profile -> fuse ->
score (the trained fused scorer + baselines) -> compare -> cluster -> evaluate
(when DATA_DIR/test_truth.csv or --truth exists) -> report.
--dev-shards/--test-shards start from packed shards instead (a folder, https://, s3://, a pattern or pipe:).
Writes RUN_DIR/run.csv (the official run file of the trained fused scorer),
RUN_DIR/scores/<scorer>.csv, RUN_DIR/metrics.json and RUN_DIR/report.html.
Stages whose outputs exist are skipped (an interrupted run resumes); --force redoes all.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.tasks.configs import RunConfig
from fingerprint.tasks.pipeline import run_pipeline

NAME = "run"


def print_summary(summary: dict) -> None:
    """The test metrics (the run file's scorer first, with its margin), run file, metrics, report and total time."""
    if summary.get("table"):
        print(f"\ntest split (95% bootstrap intervals):\n{summary['table']}")
    for warning in summary.get("warnings") or ():
        print(f"warning: {warning}")
    print(f"\nrun file: {summary['run_file']} ({summary.get('run_file_scorer')})")
    if summary.get("metrics"):
        print(f"metrics:  {summary['metrics']}")
    if summary.get("report"):
        print(f"report:   {summary['report']}")
    print(f"total:    {summary['seconds']:.0f} s")


def run(cfg: RunConfig) -> int:
    print_summary(run_pipeline(cfg))
    return 0


main = command(NAME, RunConfig, run, __doc__)
