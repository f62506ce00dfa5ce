"""SSCD-style self-supervised pretraining of the backbone on the unlabelled pool (Accelerate; optional stage).

`accelerate launch --config_file launch/gpu-8.yaml -m fingerprint pretrain --config launch/pretrain-gpu.toml
RUN/shards/dev RUN/shards/test --out RUN/pretrain`; then `fingerprint train --weights
RUN/pretrain/backbone.safetensors ...` or `fingerprint run --pretrain`.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.training.pretrain import PretrainConfig, run_pretrain

NAME = "pretrain"


def run(cfg: PretrainConfig) -> int:
    s = run_pretrain(cfg)
    print(f"{s['epochs']} epochs, {s['steps']} steps, {s['n_pairs']} pseudo-pairs, {s['seconds']:.0f} s -> {cfg.out}")
    return 0


main = command(NAME, PretrainConfig, run, __doc__)
