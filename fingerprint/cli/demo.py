"""The README's main job: build the built-in `medium` benchmark (cached after the first build), then run the pipeline.

Equivalent to `fingerprint synth DATA --level medium` (once) followed by
`fingerprint run DATA --out OUT`; prints where the run file, metrics and
report are.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.cli.run import print_summary
from fingerprint.pipeline import DemoConfig, run_demo

NAME = "demo"


def run(cfg: DemoConfig) -> int:
    print_summary(run_demo(cfg))
    return 0


main = command(NAME, DemoConfig, run, __doc__)
