"""Pack image folders (ImageCLEF dev/test layouts, the seed's naming, or a CSV/JSONL manifest) into WebDataset shards."""

from __future__ import annotations

import logging
import time

from fingerprint import shards
from fingerprint.cli.base import run_command
from fingerprint.utils import FingerprintError, JsonlLogger

NAME = "pack"
log = logging.getLogger(__name__)


def _size(text: str) -> int:
    """'256M', '1.5G', '100000' -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = str(text).strip().lower().removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None


def add_arguments(p):
    p.add_argument("src", help="input folder (or the folder a --manifest's paths are relative to)")
    p.add_argument("out", help="output folder for shard-NNNNNN.tar + manifest.json")
    p.add_argument(
        "--layout",
        choices=shards.LAYOUTS,
        default="auto",
        help="input layout: dev (generated/ used/ not_used/), test (generated_1/ real_unknown_1/), "
        "seed (generated/ real_used/ real_unused/), manifest; auto detects it (default)",
    )
    p.add_argument(
        "--manifest",
        help="CSV (header path,role,label) or JSONL file listing the images; paths relative to the manifest's folder",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="images of another size are resized to this square size (default 256)",
    )
    p.add_argument(
        "--encoding",
        choices=shards.ENCODINGS,
        default=shards.DEFAULT_ENCODING,
        help=f"stored image encoding (default {shards.DEFAULT_ENCODING}; see shards/README.md)",
    )
    p.add_argument(
        "--max-count",
        type=int,
        default=shards.DEFAULT_MAX_COUNT,
        help=f"samples per shard at most (default {shards.DEFAULT_MAX_COUNT})",
    )
    p.add_argument(
        "--max-size",
        type=_size,
        default=shards.DEFAULT_MAX_SIZE,
        help="payload bytes per shard at most, e.g. 256M (default 256M; a shard may exceed it by one sample)",
    )
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error instead of a counted skip")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    p.add_argument("--log", help="append a JSON-lines timing record to this file")


def run(args) -> int:
    if args.manifest and args.layout not in ("auto", "manifest"):
        raise FingerprintError(f"--manifest cannot be combined with --layout {args.layout}")
    t0 = time.perf_counter()
    man = shards.pack(
        args.src,
        args.out,
        layout=args.layout,
        image_size=args.image_size,
        encoding=args.encoding,
        max_count=args.max_count,
        max_size=args.max_size,
        seed=args.seed,
        strict=args.strict,
        force=args.force,
        manifest=args.manifest,
    )
    seconds = time.perf_counter() - t0
    groups = ", ".join(f"{k}: {v}" for k, v in man["counts"]["role_label"].items())
    print(
        f"{args.out}: {man['count']} images in {len(man['shards'])} shards ({groups}); "
        f"{man['converted']} converted, {man['n_skipped']} skipped; {seconds:.1f} s"
    )
    JsonlLogger(args.log).log(
        stage="pack",
        seconds=round(seconds, 3),
        images=man["count"],
        images_per_s=round(man["count"] / max(seconds, 1e-9), 1),
        skipped=man["n_skipped"],
        shards=len(man["shards"]),
        out=str(args.out),
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
