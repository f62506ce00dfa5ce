"""Learn the cross-fitted metric from the unlabelled pool (KISSME on pseudo-pairs); works under `accelerate launch`.

`fingerprint adapt RUN/shards/dev RUN/shards/test --out RUN/model` writes
RUN/model/metric.safetensors + metric.json, which `fingerprint profile --metric`
reads (space k32x).
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.training.adapt import AdaptConfig, run_adapt

NAME = "adapt"


def run(cfg: AdaptConfig) -> int:
    s = run_adapt(cfg)
    print(f"{s['n_real']} real, {s['n_generated']} generated; pseudo-pairs per metric {s['pairs']} -> {cfg.out}")
    return 0


main = command(NAME, AdaptConfig, run, __doc__)
