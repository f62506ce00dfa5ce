"""Episodic relation-network training with Accelerate: `fingerprint train --shards DEV --out MODEL_DIR`.

Run it plainly for one process, or under `accelerate launch` (configs in
launch/) for several; every flag below is a field of fingerprint.train.TrainConfig.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from fingerprint.cli.base import run_command
from fingerprint.models import BACKBONES, POOLS, RELATIONS
from fingerprint.utils import is_main_process

NAME = "train"

HELP = {
    "backbone": "torchvision ResNet trunk",
    "shared": "one backbone for real and generated images (--no-shared: two, as the seed did)",
    "relation": "relation head: light (cheap per pair) or seed (the seed's run-1 head)",
    "pool": "how the K pair scores of a query become one logit",
    "image_size": "images are resized to this side on the fly",
    "embed_dim": "size of the unit-norm embedding",
    "seed_stem": "the seed's stem: conv1 7x7/2 and no max-pool (4x larger feature maps)",
    "relation_dim": "light head: channels each feature map is projected to",
    "relation_hidden": "light head: width of the pair conv and MLP",
    "weights": "local torchvision ResNet state-dict file for the backbone (never downloaded)",
    "freeze": "freeze the backbone up to and including this stage",
    "train_embed": "train the embedding projection (--no-train-embed: keep it a fixed random projection)",
    "episodes": "nearest: pooled score over nearest+random supports; pairs: the seed's per-pair labels",
    "queries": "real query images per episode and process (half used, half not used)",
    "k": "generated support images per query (and neighbours scored at validation)",
    "k_random": "how many of the K supports are random instead of nearest",
    "support": "bank: support maps from a no-grad memory bank; encode: re-encode with gradients; auto: bank if shared",
    "refresh_every": "episodes between memory-bank and FAISS-index refreshes",
    "bn": "frozen: backbone BatchNorm statistics kept as built/loaded; recalibrate: recomputed on generated images "
    "at each refresh; batch: batch statistics for the queries",
    "bn_images": "generated images used to recalibrate BatchNorm",
    "augment": "flips, small affine and intensity jitter on the real queries",
    "val_fraction": "share of the labelled real images held out (stratified) for validation and calibration",
    "epochs": "maximum epochs (an epoch shows each training real image about once)",
    "lr": "AdamW peak learning rate",
    "weight_decay": "AdamW weight decay (not on biases and norms)",
    "warmup": "fraction of optimizer steps of linear warm-up before the cosine decay",
    "grad_accum": "episodes accumulated per optimizer step",
    "clip_grad": "clip the gradient norm to this (0: off)",
    "patience": "stop after this many epochs without a better validation AUC (0: never)",
    "calibration": "rule for the decision threshold on the validation scores",
    "mixed_precision": "autocast precision (default: the accelerate launch setting, else no; keep 'no' on CPUs "
    "without fast bf16)",
    "channels_last": "channels-last memory format (faster on recent GPUs)",
    "batch_size": "images per forward pass when encoding the generated pool and validating",
    "num_workers": "DataLoader workers reading the query stream",
    "threads": "CPU threads per process for torch and FAISS (default: cores / local processes)",
    "seed": "random seed (split, sampling, initialisation)",
    "keep_checkpoints": "checkpoints kept (older ones are deleted)",
    "log_every": "write a train_log.jsonl record every this many episodes",
    "on_error": "raise on an unreadable sample, or skip it (counted)",
    "resume": "'latest' (newest complete checkpoint in --out) or a checkpoint folder",
    "force": "replace an existing model and checkpoints in --out",
}

CHOICES = {
    "backbone": BACKBONES,
    "relation": RELATIONS,
    "pool": POOLS,
}


def _flag_type(tp: typing.Any) -> typing.Any:
    """The argparse type for a dataclass field annotation ('int', 'str | None', ...)."""
    tp = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    base = tp.replace(" | None", "").strip()
    return {"int": int, "float": float, "str": str, "bool": bool}[base]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fingerprint.train import (
        BN_MODES,
        CALIBRATION_RULES,
        FREEZE,
        MIXED_PRECISION,
        SUPPORTS,
        TrainConfig,
    )

    choices = {
        **CHOICES,
        "freeze": FREEZE,
        "episodes": ("nearest", "pairs"),
        "support": SUPPORTS,
        "bn": BN_MODES,
        "mixed_precision": MIXED_PRECISION,
        "calibration": CALIBRATION_RULES,
        "on_error": ("raise", "skip"),
    }
    p.add_argument("--shards", required=True, help="labelled development shard folder (from 'fingerprint pack')")
    p.add_argument("--out", required=True, help="model folder to write")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(f.type)
        text = HELP[f.name]
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            p.add_argument(
                flag, type=kind, default=f.default, choices=choices.get(f.name), help=f"{text} (default: {f.default})"
            )


def run(args: argparse.Namespace) -> int:
    from fingerprint.train import TrainConfig, train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(cfg, args.shards, args.out)
    if is_main_process():
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in (
                        "model_dir",
                        "epochs",
                        "best_epoch",
                        "val_auc",
                        "threshold",
                        "stopped",
                        "world_size",
                        "mixed_precision",
                        "seconds",
                        "episodes_per_s",
                    )
                }
            )
        )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
