"""The calibrated similarity profile of every real image of dev and test (the fused scorer's input).

`fingerprint profile --dev RUN/shards/dev --test RUN/shards/test --metric RUN/model --out RUN/profile`
writes RUN/profile/dev.npz and test.npz (one keyed row per real image).
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.membership.profile import ProfileConfig, run_profile

NAME = "profile"


def run(cfg: ProfileConfig) -> int:
    s = run_profile(cfg)
    print(f"profiled spaces {', '.join(s['spaces'])} in {s['seconds']:.0f} s -> {cfg.out}")
    return 0


main = command(NAME, ProfileConfig, run, __doc__)
