"""Run under `accelerate launch` by tests/test_adapt.py: learn the metric, record the world this rank saw.

Usage: _dist_adapt.py OUT REPORT_DIR SHARDS [SHARDS ...]
Writes REPORT_DIR/rank<r>.json = {"rank", "world_size", "distributed_type", "local_images", "summary"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState

from fingerprint.core.logs import setup_logging
from fingerprint.training.adapt import AdaptConfig, run_adapt


def main() -> None:
    out, report, *shards = sys.argv[1:]
    setup_logging()
    summary = run_adapt(AdaptConfig(shards=tuple(Path(s) for s in shards), out=Path(out), threads=1))
    st = PartialState()
    rec = {
        "rank": st.process_index,
        "world_size": st.num_processes,
        "distributed_type": str(st.distributed_type),
        "local_images": summary["local_images"],
        "summary": summary,
    }
    Path(report).mkdir(parents=True, exist_ok=True)
    (Path(report) / f"rank{st.process_index}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    main()
