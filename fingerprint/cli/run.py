"""The whole pipeline on a folder holding dev/ and test/ in the 2023 layouts, or on packed shards.

pack -> train -> embed -> index -> score (trained scorer + baselines) ->
compare -> cluster -> evaluate (when DATA_DIR/test_truth.csv or --truth exists) -> report.
--dev-shards/--test-shards start from packed shards instead (a folder, https://, s3://, a pattern or pipe:).
Writes RUN_DIR/run.csv (the official run file of the trained scorer),
RUN_DIR/scores/<scorer>.csv, RUN_DIR/metrics.json and RUN_DIR/report.html.
Stages whose outputs exist are skipped (an interrupted run resumes); --force redoes all.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.pipeline import RunConfig, run_pipeline

NAME = "run"


def print_summary(summary: dict) -> None:
    """The run file, metrics, report and total time of a finished run."""
    print(f"\nrun file: {summary['run_file']}")
    if summary.get("metrics"):
        print(f"metrics:  {summary['metrics']}")
    if summary.get("report"):
        print(f"report:   {summary['report']}")
    print(f"total:    {summary['seconds']:.0f} s")


def run(cfg: RunConfig) -> int:
    print_summary(run_pipeline(cfg))
    return 0


main = command(NAME, RunConfig, run, __doc__)
