"""Membership scores for every real image (any registered scorer), labels, run files."""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.membership.score import ScoreConfig, run_score

NAME = "score"


def run(cfg: ScoreConfig) -> int:
    run_score(cfg)
    return 0


main = command(NAME, ScoreConfig, run, __doc__)
