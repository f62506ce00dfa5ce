"""Export keyed unit-norm embeddings (and, with --fmaps, fp16 feature maps) of every image in a shard set."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.embed import embed_shards
from fingerprint.models import load_model
from fingerprint.utils import FingerprintError, JsonlLogger, is_main_process, seed_everything, set_threads

NAME = "embed"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--model", required=True, help="trained model folder (model.safetensors + model.json)")
    p.add_argument("--shards", required=True, help="shard folder from 'fingerprint pack'")
    p.add_argument("--out", required=True, help="features file to write (.npz)")
    p.add_argument("--fmaps", action="store_true", help="also store the fp16 feature maps the relation scorer needs")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass and rank")
    p.add_argument("--image-size", type=int, help="input size (default: the model's)")
    p.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="autocast dtype; 'no' (fp32) is the default because CPUs without bf16 units run bf16 ~60x slower",
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per rank")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default: cores / local processes)")
    p.add_argument(
        "--on-error", choices=("raise", "skip"), default="raise", help="unreadable samples: stop, or skip and count"
    )
    p.add_argument("--log", help="append JSON-lines records here (stage, seconds, images/s, world size)")
    p.add_argument("--seed", type=int, default=0, help="random seed (embedding is deterministic; kept for uniformity)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from accelerate import Accelerator

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FingerprintError(f"{out}: already exists (use --force to replace it)")
    if args.batch_size < 1:
        raise FingerprintError(f"--batch-size must be positive, got {args.batch_size}")
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    set_threads(args.threads or max(1, (os.cpu_count() or 1) // max(1, local)))
    seed_everything(args.seed)
    model, meta = load_model(args.model)
    stats: dict = {}
    t0 = time.perf_counter()
    feats = embed_shards(
        model,
        args.shards,
        batch_size=args.batch_size,
        fmaps=args.fmaps,
        image_size=args.image_size,
        accelerator=accelerator,
        num_workers=args.num_workers,
        on_error=args.on_error,
        stats=stats,
    )
    feats.meta.update({"model_sha256": meta.get("sha256"), "shards": str(args.shards)})
    if is_main_process():
        feats.save(out)
        log.info(
            "wrote %d keyed features (%s) -> %s", len(feats), "with fmaps" if args.fmaps else "embeddings only", out
        )
    accelerator.wait_for_everyone()
    JsonlLogger(args.log).log(
        stage="embed",
        seconds=round(time.perf_counter() - t0, 3),
        mixed_precision=args.mixed_precision,
        device=str(accelerator.device),
        distributed_type=str(accelerator.distributed_type),
        **stats,
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
