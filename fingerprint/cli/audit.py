"""Dataset-level membership audit: was this candidate collection used to train the generator?

Scores the candidate, the reference and any held-out labelled dev images with
one registered scorer in one call against the audited generated pool, then
runs a one-sided Mann-Whitney U test (candidate > reference). Writes
OUT/audit.json (statistic, p-value, effect size AUC with bootstrap interval,
estimated fraction used with interval, power curve and the candidate size
needed for p < alpha, p-values corrected over the audit log, verdict),
OUT/audit_scores.csv and OUT/report.html. Details: docs/audit.md.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.tasks.audit import AuditConfig, run_audit

NAME = "audit"


def run(cfg: AuditConfig) -> int:
    summary = run_audit(cfg)
    n = summary["n"]
    print(
        f"scorer {summary['scorer']['name']}{' (default)' if summary['scorer']['default'] else ''}; "
        f"candidate {n.get('candidate', 0)}, reference {n.get('reference', 0)}, "
        f"held-out dev used {n.get('dev_used', 0)} / not used {n.get('dev_not_used', 0)}"
    )
    print(summary["verdict"])
    print(f"wrote {cfg.out}/audit.json")
    return 0


main = command(NAME, AuditConfig, run, __doc__)
