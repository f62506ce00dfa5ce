"""Run under `accelerate launch` by tests/test_train.py: train, recording which query keys each rank read.

Usage: _dist_train.py SHARDS MODEL_DIR REPORT_DIR [fingerprint train flags...]
Writes REPORT_DIR/rank<r>.json = {"rank", "world_size", "distributed_type", "keys": {epoch: [...]},
"weights_sha256", "summary"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState

import fingerprint.training.loop as loop_mod
from fingerprint.cli.options import parse_config
from fingerprint.core.logs import setup_logging
from fingerprint.training.episodes import BalancedQueries
from fingerprint.training.train import TrainConfig, run_train

READ: dict[int, list[str]] = {}


class RecordingQueries(BalancedQueries):
    """BalancedQueries that notes every key it hands out, per epoch (the stream's cfg.epoch)."""

    def __iter__(self):
        epoch = self.stream.cfg.epoch
        for q in super().__iter__():
            READ.setdefault(epoch, []).extend(q.key)
            yield q


def main() -> None:
    shards, model_dir, report = sys.argv[1:4]
    setup_logging()
    loop_mod.BalancedQueries = RecordingQueries  # what train_one_epoch re-batches the query stream with
    cfg = parse_config("train", TrainConfig, ["--shards", shards, "--out", model_dir, *sys.argv[4:]])
    summaries = [run_train(cfg)]

    st = PartialState()
    rec = {
        "rank": st.process_index,
        "world_size": st.num_processes,
        "distributed_type": str(st.distributed_type),
        "keys": READ,
        "weights_sha256": summaries[0]["weights_sha256"],
        "summary": summaries[0],
    }
    out = Path(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{st.process_index}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    main()
