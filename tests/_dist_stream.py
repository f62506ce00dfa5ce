"""Run under `accelerate launch` by tests/test_stream.py: each rank writes what it read.

Usage: _dist_stream.py SHARDS OUT_DIR [--workers N] [--epoch-batches N] [--batch-size N]
Writes OUT_DIR/rank<r>.json = {"rank", "world_size", "keys": [...], "batches": n, "shapes": [...]}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelerate import Accelerator

from fingerprint.data.stream import StreamConfig, make_loader


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("shards")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epoch-batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    acc = Accelerator()
    cfg = StreamConfig(
        batch_size=args.batch_size,
        num_workers=args.workers,
        shuffle=True,
        seed=args.seed,
        epoch_batches=args.epoch_batches,
    )
    loader = make_loader(args.shards, cfg)  # rank/world from torch.distributed
    keys, shapes, batches = [], [], 0
    for batch in loader:
        keys += batch["key"]
        shapes.append(list(batch["image"].shape))
        batches += 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "keys": keys,
        "batches": batches,
        "shapes": shapes,
    }
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(rec))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
