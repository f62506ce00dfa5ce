"""The README's main job: build the built-in `medium` benchmark (cached after the first build), then run the whole pipeline on it.

Equivalent to `fingerprint synth DATA --level medium` (once) followed by
`fingerprint run DATA --out OUT`; prints every scorer's metrics and the
report's path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.cli.run import add_run_options, config_from_args, print_summary
from fingerprint.pipeline import demo

NAME = "demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        help="where the benchmark is built and cached (default: data/benchmark-<level>-seed<seed>)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder to write")
    p.add_argument(
        "--level",
        default="medium",
        choices=("easy", "medium", "hard", "tiny"),
        help="benchmark difficulty (tiny: seconds, for tests)",
    )
    p.add_argument("--rebuild-data", action="store_true", help="rebuild the benchmark even if it is cached")
    add_run_options(p)


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(f"data/benchmark-{args.level}-seed{args.seed}")
    cfg = config_from_args(args, data_dir, args.out)
    options = {k: v for k, v in vars(cfg).items() if k not in ("data_dir", "out", "seed", "force")}
    summary = demo(
        data_dir=data_dir,
        out=args.out,
        level=args.level,
        seed=args.seed,
        force=args.force,
        rebuild_data=args.rebuild_data,
        **options,
    )
    print_summary(summary)
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
