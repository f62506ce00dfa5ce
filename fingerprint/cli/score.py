"""Membership scores for every real image (trained relation scorer or a baseline), labels, run files."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fingerprint import baselines
from fingerprint.embed import Features
from fingerprint.cli.base import run_command
from fingerprint.index import load_index
from fingerprint.metrics import RULES, calibrate_threshold
from fingerprint.runfile import load_ids, validate, write_run_file
from fingerprint.score import (
    ScoreResult,
    apply_threshold,
    membership_labels,
    relation_scores,
    resolve_index,
    store_calibration,
    write_scores,
)
from fingerprint.stream import StreamConfig, load_all
from fingerprint.utils import FingerprintError, JsonlLogger, seed_everything, set_threads

NAME = "score"
log = logging.getLogger(__name__)

SCORERS = ("relation", "dcr", "ssim", "emb_nn", "emb_topk", "seed_rule")
PIXEL_SCORERS = ("dcr", "ssim")
MODEL_SCORERS = ("relation", "seed_rule")
INDEX_SCORERS = ("relation", "emb_nn", "emb_topk")


def add_arguments(p):
    p.add_argument(
        "--scorer",
        choices=SCORERS,
        default="relation",
        help="relation (trained, default) or a baseline: dcr, ssim, emb_nn, emb_topk, seed_rule",
    )
    p.add_argument("--out", required=True, help="score file to write: key,score,label (+ a .json sidecar)")
    p.add_argument("--features", help="features .npz with real and generated rows (relation, emb_*, seed_rule)")
    p.add_argument("--model", help="model folder (relation, seed_rule)")
    p.add_argument("--index", help="saved FAISS index over the generated embeddings (default: exact search)")
    p.add_argument("--shards", help="shard folder with real and generated images (dcr, ssim)")
    p.add_argument("--k", type=int, default=16, help="generated neighbours per real image (relation, emb_topk)")
    p.add_argument("--batch-size", type=int, default=64, help="real images per relation-head batch (relation)")
    p.add_argument(
        "--pixel-size",
        type=int,
        default=64,
        help="side the pixel baselines resize images to (10,000 images at 64px are 164 MB as float32)",
    )
    p.add_argument(
        "--ssim-candidates",
        type=int,
        default=64,
        help="exact SSIM only on each real image's M nearest generated images by pixel L2 (0 = all)",
    )
    p.add_argument("--max-pairs", type=int, default=2_000_000, help="seed_rule: refuse more real x generated pairs")
    p.add_argument(
        "--calibrate-on",
        help="labelled dev set to calibrate the threshold on: its features .npz "
        "(relation, emb_*, seed_rule) or its shard folder (dcr, ssim)",
    )
    p.add_argument("--dev-index", help="saved FAISS index over the dev set's generated embeddings (default: exact)")
    p.add_argument(
        "--rule",
        choices=RULES,
        default="max_f1",
        help="calibration rule: max_f1 (default; F1 is the official metric) or youden (TPR - FPR)",
    )
    p.add_argument("--threshold", type=float, help="use this threshold instead of calibrating")
    p.add_argument(
        "--store-calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="relation: save a --calibrate-on threshold into the model's model.json",
    )
    p.add_argument("--run-file", help="also write the official run file (<figure_id>,<0|1>)")
    p.add_argument("--ids", help="check the run file against these official ids (one per line)")
    p.add_argument("--neighbours", help="relation: where to write neighbours.npz (default: beside --out)")
    p.add_argument("--threads", type=int, help="torch/FAISS CPU threads (default: all cores)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="pixel scorers: unreadable samples")
    p.add_argument("--log", help="append a JSON-lines record here")
    p.add_argument("--seed", type=int, default=0, help="random seed (scoring is deterministic)")
    p.add_argument("--force", action="store_true", help="replace outputs that exist")


@dataclass
class Inputs:
    """What one scorer reads for one split: features (+ index) or pixels."""

    features: Features | None = None
    index: object = None
    pixels: dict | None = None


def _need(args, name: str, scorers: tuple[str, ...]) -> None:
    if args.scorer in scorers and not getattr(args, name):
        raise FingerprintError(f"--scorer {args.scorer} needs --{name.replace('_', '-')}")


def load_inputs(args, source: str, index_path: str | None) -> Inputs:
    """Features (+ saved index) or pixels for `source` (a features file or a shard folder)."""
    if args.scorer in PIXEL_SCORERS:
        if not Path(source).is_dir():
            raise FingerprintError(f"{source}: --scorer {args.scorer} reads pixels from a shard folder")
        pix = {}
        for role in ("real", "generated"):
            cfg = StreamConfig(roles=(role,), image_size=args.pixel_size, on_error=args.on_error)
            pix[role] = load_all(source, cfg)
            if not pix[role]["key"]:
                raise FingerprintError(f"{source}: no {role} images")
        return Inputs(pixels=pix)
    if Path(source).is_dir():
        raise FingerprintError(f"{source}: --scorer {args.scorer} reads a features .npz, not a folder")
    feats = Features.load(source, fmaps=args.scorer in MODEL_SCORERS)
    index = None
    if index_path and args.scorer in INDEX_SCORERS:
        idx, keys = load_index(index_path)
        index = resolve_index(idx, keys, feats.select(role="generated").keys.tolist(), source=index_path)
    return Inputs(features=feats, index=index)


def compute(args, inputs: Inputs, model) -> ScoreResult:
    """Run the chosen scorer on one split; one row per real image, sorted by key."""
    if inputs.pixels is not None:
        real, gen = inputs.pixels["real"], inputs.pixels["generated"]
        if args.scorer == "dcr":
            score, rows = baselines.dcr(real["image"], gen["image"])
        else:
            m = args.ssim_candidates or None
            score, rows = baselines.ssim_max(real["image"], gen["image"], candidates=m)
        gkeys = np.asarray(gen["key"], dtype=str)
        return ScoreResult(real["key"], score, neighbour_keys=gkeys[rows][:, None])
    real = inputs.features.select(role="real")
    gen = inputs.features.select(role="generated")
    if len(real) == 0 or len(gen) == 0:
        raise FingerprintError("score: the features need real and generated rows")
    if args.scorer == "relation":
        return relation_scores(model, real, gen, inputs.index, k=args.k, batch_size=args.batch_size)
    if args.scorer == "emb_nn":
        score, rows = baselines.emb_nn(real.embeddings, gen.embeddings, index=inputs.index)
        return ScoreResult(real.keys.tolist(), score, neighbour_keys=gen.keys[rows][:, None])
    if args.scorer == "emb_topk":
        score, rows = baselines.emb_topk(real.embeddings, gen.embeddings, k=args.k, index=inputs.index)
        return ScoreResult(real.keys.tolist(), score, neighbour_keys=gen.keys[rows])
    score = baselines.seed_rule(model, real, gen, max_pairs=args.max_pairs)
    return ScoreResult(real.keys.tolist(), score)


def _labels_of(args, inputs: Inputs, keys: list[str], source: str) -> np.ndarray:
    if inputs.pixels is not None:
        real = inputs.pixels["real"]
        lab = dict(zip(real["key"], real["label"]))
    else:
        real = inputs.features.select(role="real")
        lab = dict(zip(real.keys.tolist(), real.labels.tolist()))
    return membership_labels([lab[k] for k in keys], source=source)


def check_model_features(model_meta: dict, feats: Features, source: str) -> None:
    """Refuse features exported by a different model than the one scoring them."""
    made_by = feats.meta.get("model_sha256")
    if made_by and model_meta.get("sha256") and made_by != model_meta["sha256"]:
        raise FingerprintError(f"{source}: features were exported by another model (sha256 {made_by[:12]}...)")


def _same_split(dev_source: str, dev_index: str | None, source: str, index: str | None) -> bool:
    """True when the calibration set is the split being scored (then its scores are reused, not recomputed)."""

    def same(a, b):
        return (a is None and b is None) or (a is not None and b is not None and Path(a).resolve() == Path(b).resolve())

    return same(dev_source, source) and same(dev_index, index)


def run(args) -> int:
    out = Path(args.out)
    neighbours_path = Path(args.neighbours) if args.neighbours else out.parent / "neighbours.npz"
    outputs = [out] + ([Path(args.run_file)] if args.run_file else [])
    if args.scorer == "relation":
        outputs.append(neighbours_path)
    for path in outputs:
        if path.exists() and not args.force:
            raise FingerprintError(f"{path}: already exists (use --force to replace it)")
    _need(args, "features", ("relation", "emb_nn", "emb_topk", "seed_rule"))
    _need(args, "model", MODEL_SCORERS)
    _need(args, "shards", PIXEL_SCORERS)
    if args.k < 1:
        raise FingerprintError(f"--k must be >= 1, got {args.k}")
    seed_everything(args.seed)
    set_threads(args.threads)
    t0 = time.perf_counter()

    model = meta = None
    if args.scorer in MODEL_SCORERS:
        from fingerprint.models import load_model

        model, meta = load_model(args.model)
    source = args.shards if args.scorer in PIXEL_SCORERS else args.features
    inputs = load_inputs(args, source, args.index)
    if model is not None:
        check_model_features(meta, inputs.features, source)
    result = compute(args, inputs, model)

    calibration = None
    if args.threshold is not None:
        threshold, how = float(args.threshold), "given"
    elif args.calibrate_on:
        if _same_split(args.calibrate_on, args.dev_index, source, args.index):
            dev, dev_result = inputs, result
        else:
            dev = load_inputs(args, args.calibrate_on, args.dev_index)
            if model is not None:
                check_model_features(meta, dev.features, args.calibrate_on)
            dev_result = compute(args, dev, model)
        y = _labels_of(args, dev, dev_result.keys, args.calibrate_on)
        threshold = calibrate_threshold(y, dev_result.score, args.rule)
        how = f"calibrated on {args.calibrate_on}"
        calibration = {
            "threshold": threshold,
            "rule": args.rule,
            "scorer": args.scorer,
            "k": args.k,
            "n": int(len(y)),
            "n_pos": int(y.sum()),
            "source": str(args.calibrate_on),
        }
        if args.scorer == "relation" and args.store_calibration:
            meta = store_calibration(args.model, model, meta, calibration)
            log.info("stored the calibration in %s/model.json", args.model)
    elif (
        model is not None
        and (meta.get("calibration") or {}).get("threshold") is not None
        and meta["calibration"].get("scorer", "relation") == args.scorer
    ):
        threshold, how = float(meta["calibration"]["threshold"]), f"stored in {args.model}/model.json"
        calibration = meta["calibration"]
    elif args.scorer == "relation":
        threshold, how = 0.5, "0.5 (uncalibrated probability: no --calibrate-on and none stored with the model)"
        log.warning("score: no calibration; using threshold 0.5 on the membership probability")
    else:
        raise FingerprintError(
            f"--scorer {args.scorer} needs --calibrate-on DEV or --threshold (its scores are not probabilities)"
        )

    labels = apply_threshold(result.score, threshold)
    sidecar = {
        "scorer": args.scorer,
        "threshold": threshold,
        "threshold_from": how,
        "rule": args.rule if args.calibrate_on else None,
        "calibration": calibration,
        "source": str(source),
        "k": args.k if args.scorer in ("relation", "emb_topk") else None,
        "n": len(result.keys),
        "n_predicted_used": int(labels.sum()),
    }
    if args.scorer in PIXEL_SCORERS:
        sidecar["pixel_size"] = args.pixel_size
    if args.scorer == "ssim":
        sidecar["ssim_candidates"] = args.ssim_candidates
    write_scores(out, result.keys, result.score, labels, meta=sidecar)
    for name, values in result.components.items():
        log.info("component %s: mean %.4f", name, float(np.mean(values)))
    if args.scorer == "relation":
        result.save_neighbours(neighbours_path)
    if args.run_file:
        write_run_file(args.run_file, result.keys, labels)
        if args.ids:
            problems = validate(args.run_file, load_ids(args.ids))
            if problems:
                raise FingerprintError(f"{args.run_file}: {problems[0]} ({len(problems)} problem(s))")
    seconds = time.perf_counter() - t0
    log.info(
        "%s: %d real images scored, %d predicted used (threshold %.4g, %s) in %.1f s -> %s",
        args.scorer,
        len(result.keys),
        int(labels.sum()),
        threshold,
        how,
        seconds,
        out,
    )
    JsonlLogger(args.log).log(
        stage="score",
        scorer=args.scorer,
        seconds=round(seconds, 3),
        n=len(result.keys),
        threshold=threshold,
        n_predicted_used=int(labels.sum()),
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
