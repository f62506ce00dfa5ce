"""Metrics with bootstrap 95% intervals for score files (or official run files) against a truth file."""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.evaluation.evaluate import EvaluateConfig, run_evaluate
from fingerprint.evaluation.metrics import format_table

NAME = "evaluate"


def run(cfg: EvaluateConfig) -> int:
    print(format_table(run_evaluate(cfg)))
    return 0


main = command(NAME, EvaluateConfig, run, __doc__)
