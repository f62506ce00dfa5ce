"""Run under `accelerate launch` by tests/test_train.py: train, recording which query keys each rank read.

Usage: _dist_train.py SHARDS MODEL_DIR REPORT_DIR [fingerprint train flags...]
Writes REPORT_DIR/rank<r>.json = {"rank", "world_size", "distributed_type", "keys": {epoch: [...]},
"weights_sha256", "summary"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fingerprint.train as train_mod
from fingerprint.cli import train as train_cli
from fingerprint.episodes import BalancedQueries

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
    summaries = []
    real_train = train_mod.train

    def capture(*a, **kw):
        summaries.append(real_train(*a, **kw))
        return summaries[-1]

    train_mod.BalancedQueries = RecordingQueries
    train_mod.train = capture  # what `fingerprint train` (cli.train.run) calls
    rc = train_cli.main(["--shards", shards, "--out", model_dir, *sys.argv[4:]])
    if rc:
        sys.exit(rc)
    from accelerate import PartialState

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
