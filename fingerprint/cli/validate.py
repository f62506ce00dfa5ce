"""Check a run file against the official ImageCLEFmedical GANs rules; exit 0 if valid, 1 if not."""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.evaluation.runfile import ValidateConfig, run_validate

NAME = "validate"


def run(cfg: ValidateConfig) -> int:
    problems, n_ids = run_validate(cfg)
    if problems:
        for problem in problems:
            print(f"{cfg.runfile}: {problem}")
        print(f"{cfg.runfile}: INVALID ({len(problems)} problem(s))")
        return 1
    print(f"{cfg.runfile}: valid ({n_ids} ids)")
    return 0


main = command(NAME, ValidateConfig, run, __doc__)
