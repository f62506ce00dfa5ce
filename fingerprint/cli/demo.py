"""The README's main job: build the built-in `medium` benchmark (cached after the first build), then run the pipeline.

Equivalent to `fingerprint synth DATA --level medium` (once) followed by
`fingerprint run DATA --out OUT`; prints where the run file, metrics and
report are. `--task audit` audits three cases (used, not used, half used) of
an audit-case build with the default scorer and with ssim; `--task attribute`
attributes the generated pool of a 3-subset build (docs/audit.md).
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.cli.run import print_summary
from fingerprint.tasks.configs import DemoConfig
from fingerprint.tasks.demo import run_demo

NAME = "demo"


def run(cfg: DemoConfig) -> int:
    summary = run_demo(cfg)
    if cfg.task == "audit":
        for name, verdict in summary["verdicts"].items():
            print(f"{name}: {verdict}")
        print(f"audit log: {summary['audit_log']}; reports: {summary['out']}/<case>-<scorer>/report.html")
    elif cfg.task == "attribute":
        m = summary["metrics"]
        print(f"counts: {summary['counts']}")
        print(f"accuracy {m['accuracy']:.3f} (chance {m['chance_majority']:.3f}), kappa {m['kappa']:.3f}")
        print(f"report: {summary['out']}/report.html")
    else:
        print_summary(summary)
    return 0


main = command(NAME, DemoConfig, run, __doc__)
