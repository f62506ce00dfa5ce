"""Export keyed unit-norm embeddings (and, with --fmaps, fp16 feature maps) of every image in a shard set."""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.embedding.embed import EmbedConfig, run_embed

NAME = "embed"


def run(cfg: EmbedConfig) -> int:
    run_embed(cfg)
    return 0


main = command(NAME, EmbedConfig, run, __doc__)
