"""Fit the trained fused scorer on the dev profile's labels (group selection, non-negative L2 logistic regression).

`fingerprint fuse --dev RUN/profile/dev.npz --out RUN/model/fusion.json`; then
`fingerprint score --scorer fused --profile RUN/profile/test.npz --fusion RUN/model/fusion.json ...`.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.membership.fuse import FuseConfig, run_fuse

NAME = "fuse"


def run(cfg: FuseConfig) -> int:
    s = run_fuse(cfg)
    groups = "+".join(s["groups"]) or cfg.fixed
    print(f"groups {groups}, C {s['C']}, out-of-fold dev ROC-AUC {s['oof_auc']:.3f} -> {cfg.out}")
    return 0


main = command(NAME, FuseConfig, run, __doc__)
