"""Build a membership benchmark: CT-like (or your own) real images, a generator trained on the used ones, its samples.

Writes OUT in the ImageCLEFmedical GANs 2023 layout (dev/generated, dev/used,
dev/not_used, test/generated_1, test/real_unknown_1) with test_truth.csv beside
test/, plus synth.json (parameters, training curve, timings, measured difficulty).
"""

from __future__ import annotations

import logging

from fingerprint.cli.base import run_command

NAME = "synth"
log = logging.getLogger(__name__)

#: flag -> (type, help); None defaults mean "take the level preset's value".
_COUNTS = {
    "image-size": (int, "side of the square 8-bit images (default 256; tiny: 64)"),
    "dev-generated": (int, "synthetic images in dev/generated (default 500)"),
    "dev-used": (int, "real images in dev/used (default 80)"),
    "dev-not-used": (int, "real images in dev/not_used (default 80)"),
    "test-generated": (int, "synthetic images in test/generated_1 (default 2000; the challenge had 10,000)"),
    "test-used": (int, "used images among test/real_unknown_1 (default 100)"),
    "test-not-used": (int, "not-used images among test/real_unknown_1 (default 100)"),
}
_PHANTOM = {
    "slices-per-patient": (
        int,
        "neighbouring slices per phantom patient (default 1); > 1 makes the hard case where "
        "a not-used image's patient has another slice among the used",
    ),
    "tb-fraction": (float, "share of phantom patients with tuberculosis-like findings (default 0.5)"),
    "noise": (float, "phantom scanner-noise scale, 0 = none (default 1)"),
}
_GENERATOR = {
    "epochs": (int, "VAE training epochs (level preset)"),
    "components": (int, "latent Gaussian-mixture components (level preset; more = closer to the training images)"),
    "temperature": (float, "latent sampling temperature (level preset)"),
    "resolution": (int, "generator's internal resolution (default 64)"),
    "latent-dim": (int, "VAE latent dimension (default 32)"),
    "hidden": (int, "VAE hidden units per layer (default 512)"),
    "kl-weight": (float, "weight of the KL term (default 0.002)"),
    "batch-size": (int, "VAE batch size (default 32)"),
    "lr": (float, "VAE learning rate (default 0.002)"),
    "upsampler-steps": (int, "training steps of the learned upsampler (default 200)"),
}


def add_arguments(p) -> None:
    from fingerprint.synth import LEVELS

    p.add_argument("out", help="output folder (refused if it exists, unless --force)")
    p.add_argument(
        "--level",
        choices=list(LEVELS),
        default="medium",
        help="difficulty preset: easy, medium, hard; tiny = small and fast, for tests (default medium)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed and machine = same files (default 0)")
    p.add_argument(
        "--real-dir",
        help="use the images in this folder (any format, converted to 8-bit gray) instead of the CT-like phantoms",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    for group, flags in (("counts", _COUNTS), ("phantoms", _PHANTOM), ("generator", _GENERATOR)):
        g = p.add_argument_group(group)
        for flag, (typ, help_) in flags.items():
            g.add_argument(f"--{flag}", type=typ, default=None, help=help_)
    p.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default=None,
        help="generator training precision; bf16/fp16 are for GPUs (default no = fp32)",
    )
    p.add_argument(
        "--max-correlation",
        type=float,
        default=None,
        help="redraw synthetic samples whose pixel correlation with any real image is above this (default 0.99)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default 1: repeatable and fastest on a shared machine)",
    )
    p.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even if a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from fingerprint.synth import build_benchmark

    overrides = {}
    for flags in (_COUNTS, _PHANTOM, _GENERATOR):
        for flag in flags:
            overrides[flag.replace("-", "_")] = getattr(args, flag.replace("-", "_"))
    overrides["mixed_precision"] = args.mixed_precision
    overrides["max_correlation"] = args.max_correlation
    overrides["threads"] = args.threads
    overrides["cpu"] = args.cpu
    info = build_benchmark(
        args.out,
        level=args.level,
        seed=args.seed,
        real_dir=args.real_dir,
        force=args.force,
        progress=not args.no_progress,
        **overrides,
    )
    from fingerprint.utils import is_main_process

    if not is_main_process():
        return 0
    auc = info["difficulty"]["pixel_nn_auc"]
    c = info["counts"]
    print(
        f"{args.out}: {c['dev']['generated']} + {c['test']['generated']} generated, "
        f"{c['dev']['used']}/{c['dev']['not_used']} dev used/not used, {c['test']['real_unknown']} test real; "
        f"pixel-NN AUC dev {auc['dev']:.3f}, test {auc['test']:.3f}; {info['timings']['total']:.0f} s"
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
