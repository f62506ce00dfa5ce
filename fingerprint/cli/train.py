"""Episodic relation-network training with Accelerate: `fingerprint train --shards DEV --out MODEL_DIR`.

Run it plainly for one process, or under `accelerate launch` (configs in
launch/) for several; every flag is a field of fingerprint.training.train.TrainConfig.
"""

from __future__ import annotations

import json

from fingerprint.cli.options import command
from fingerprint.core.logs import is_main_process
from fingerprint.training.train import TrainConfig, run_train

NAME = "train"
SUMMARY = ("model_dir", "epochs", "best_epoch", "val_auc", "threshold", "stopped", "world_size", "mixed_precision",
           "seconds", "episodes_per_s")  # fmt: skip


def run(cfg: TrainConfig) -> int:
    summary = run_train(cfg)
    if is_main_process():
        print(json.dumps({k: summary[k] for k in SUMMARY}))
    return 0


main = command(NAME, TrainConfig, run, __doc__)
