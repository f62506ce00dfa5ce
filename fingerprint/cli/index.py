"""Build a FAISS index over the generated embeddings of a features file (exact by default)."""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.embedding.index import IndexConfig, run_index

NAME = "index"


def run(cfg: IndexConfig) -> int:
    run_index(cfg)
    return 0


main = command(NAME, IndexConfig, run, __doc__)
