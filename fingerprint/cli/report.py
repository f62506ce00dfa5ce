"""Self-contained HTML report (images embedded, opens offline) and a Markdown summary of a run folder.

Reads whatever the run folder holds (shards, model/train_log.jsonl, metrics.json,
scores/, compare/, cluster/) and writes RUN_DIR/report.html and report.md. Both
open with the verdict (the scorer that wrote run.csv, its test ROC-AUC with
interval, kappa, balanced accuracy, share labelled used, margin over the best
untrained baseline, and warnings); a missing optional part becomes a visible
note in the report.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.report.build import ReportConfig, run_report

NAME = "report"


def run(cfg: ReportConfig) -> int:
    html_path, md_path = run_report(cfg)
    print(f"wrote {html_path} and {md_path}")
    return 0


main = command(NAME, ReportConfig, run, __doc__)
