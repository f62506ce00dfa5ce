"""Check a run file against the official ImageCLEFmedical GANs rules; exit 0 if valid, 1 if not."""

from __future__ import annotations

import logging

from fingerprint.cli.base import run_command
from fingerprint.runfile import load_ids, validate

NAME = "validate"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("runfile", help="the run file to check (<figure_id>,<0|1> rows, no header)")
    p.add_argument("--ids", help="file with one official figure_id per line (default: the 2023 test ids)")
    p.add_argument(
        "--seed", type=int, default=0, help="unused (the check is deterministic); accepted like every command"
    )


def run(args) -> int:
    ids = load_ids(args.ids)
    problems = validate(args.runfile, ids)
    if problems:
        for problem in problems:
            print(f"{args.runfile}: {problem}")
        print(f"{args.runfile}: INVALID ({len(problems)} problem(s))")
        return 1
    print(f"{args.runfile}: valid ({len(ids)} ids)")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
