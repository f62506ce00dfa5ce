"""Logging: the main-process test, the stderr set-up and JSON-lines metric logs."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fingerprint.core.errors import os_error
from fingerprint.core.files import _json_default


def is_main_process() -> bool:
    """True on rank 0 (or outside a distributed launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr on the main process; other ranks log warnings only."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level if is_main_process() else logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


class JsonlLogger:
    """Append one JSON object per line (metrics and timings); main process only."""

    def __init__(self, path: str | os.PathLike | None, **static: Any):
        self.path = Path(path) if path is not None and is_main_process() else None
        self.static = static
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"time": round(time.time(), 3), **self.static, **record}, default=_json_default)
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise os_error(e, self.path) from e
