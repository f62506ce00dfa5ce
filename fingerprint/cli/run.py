"""The whole pipeline on a folder holding dev/ and test/ in the 2023 layouts.

pack -> train -> embed -> index -> score (trained scorer + baselines) ->
compare -> cluster -> evaluate (when DATA_DIR/test_truth.csv exists) -> report.
Writes RUN_DIR/run.csv (the official run file of the trained scorer),
RUN_DIR/scores/<scorer>.csv, RUN_DIR/metrics.json and RUN_DIR/report.html.
Stages whose outputs exist are skipped (an interrupted run resumes); --force redoes all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.pipeline import BASELINES, RunConfig, run_pipeline

NAME = "run"


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `demo`."""
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument(
        "--backbone",
        default="resnet18",
        choices=("resnet18", "resnet34", "resnet50", "resnet101"),
        help="ResNet trunk of the relation network",
    )
    p.add_argument("--image-size", type=int, default=128, help="model input size (images are packed at 256)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the trainer's, sized for 2 CPU cores)")
    p.add_argument(
        "--k", type=int, default=8, help="generated neighbours per real image when scoring (training uses 8)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass when embedding")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where training and embedding run")
    p.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="autocast for training and embedding (fp32 'no' on CPUs: bf16 is ~60x slower there)",
    )
    p.add_argument("--threads", type=int, help="torch/FAISS CPU threads per stage (default: each stage's own)")
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated baseline scorers ({', '.join(BASELINES)}; '' for none)",
    )
    p.add_argument(
        "--seed-rule-max-pairs",
        type=int,
        default=500_000,
        help="run the seed's all-pairs rule only when real x generated is at most this",
    )
    p.add_argument("--index-factory", default="Flat", help="FAISS index over generated embeddings (Flat = exact)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples for every metric's 95%% interval")
    p.add_argument("--train-config", type=Path, help="TOML/YAML config passed to 'fingerprint train' (any train flag)")
    p.add_argument("--no-compare", action="store_true", help="skip the scikit-learn comparators")
    p.add_argument("--no-cluster", action="store_true", help="skip hierarchical clustering")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--force", action="store_true", help="redo every stage even if its outputs exist")


def config_from_args(args: argparse.Namespace, data_dir: Path, out: Path) -> RunConfig:
    return RunConfig(
        data_dir=data_dir,
        out=out,
        seed=args.seed,
        backbone=args.backbone,
        image_size=args.image_size,
        epochs=args.epochs,
        k=args.k,
        batch_size=args.batch_size,
        device=args.device,
        mixed_precision=args.mixed_precision,
        threads=args.threads,
        baselines=tuple(b for b in args.baselines.split(",") if b.strip()),
        seed_rule_max_pairs=args.seed_rule_max_pairs,
        index_factory=args.index_factory,
        comparators=not args.no_compare,
        cluster=not args.no_cluster,
        report=not args.no_report,
        n_boot=args.n_boot,
        train_config=args.train_config,
        force=args.force,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path, help="folder with dev/ and test/ (2023 layouts), optional test_truth.csv")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    add_run_options(p)


def run(args: argparse.Namespace) -> int:
    summary = run_pipeline(config_from_args(args, args.data_dir, args.out))
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    print(f"\nrun file: {summary['run_file']}")
    if summary.get("metrics"):
        print(f"metrics:  {summary['metrics']}")
    if summary.get("report"):
        print(f"report:   {summary['report']}")
    print(f"total:    {summary['seconds']:.0f} s")


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
