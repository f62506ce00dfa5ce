"""The score stage: one registered scorer over one split, a decision threshold, score file, sidecar, run file.

`run_score(ScoreConfig)` loads what the scorer declares it needs (pixels from
a shard folder, features with the model and a saved FAISS index, or a
similarity profile with the fitted fusion), scores every real image, and
labels it with a threshold chosen by one policy, in this order: a given
threshold; one calibrated on a labelled dev split
(`metrics.calibrate_threshold`, kappa by default); the calibration stored
with the model (relation: on its held-out validation images) or the fusion
(fused: on out-of-fold dev scores) for this scorer; the scorer's own default
(0.5 for probabilities); else an error. A threshold applies on a scale
(`score.scale`): by default the scores standardised within the scored split
(robust z), so a dev threshold transfers to a test split whose generated pool
has another size; a stored calibration carries its own scale. The score
file's JSON sidecar records the threshold on that scale, the same cut on the
raw scores (`threshold`), and where it came from, so `evaluate` and `report`
use the same one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.core.config import check_fields, exists_error, fail, option
from fingerprint.core.distributed import seed_everything, set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import check_writable
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import ON_ERROR, ROLES, SCORE_SCALES, THRESHOLD_RULES, label_codes
from fingerprint.data import urls
from fingerprint.data.stream import StreamConfig, load_all
from fingerprint.embedding.features import SET_FILE, Features, FeatureStore
from fingerprint.embedding.index import load_index, read_index_meta, resolve_index
from fingerprint.embedding.model_io import load_model, store_calibration
from fingerprint.evaluation.metrics import apply_threshold, calibrate_threshold, on_scale
from fingerprint.evaluation.runfile import load_ids, validate, write_run_file
from fingerprint.evaluation.scorefiles import ScoreResult, write_scores
from fingerprint.membership.fuse import load_fusion
from fingerprint.membership.scorers import Scorer, ScorerInputs, get_scorer, scorer_names

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ScoreConfig:
    """Options of the score stage (`fingerprint score`)."""

    SECTION = "score"

    scorer: str = option("relation", choices=scorer_names, help="registered scorer (fingerprint.membership.scorers)")
    out: Path = option(help="score file to write: key,score,label (+ a .json sidecar)")
    features: Path | None = option(
        None, help="features (folder or .npz from 'fingerprint embed') with real and generated rows (feature scorers)"
    )
    model: Path | None = option(None, help="model folder (scorers that use the trained model)")
    index: Path | None = option(None, help="saved FAISS index over the generated embeddings (default: exact search)")
    shards: str | None = option(
        None, help="shards with real and generated images (pixel scorers): a folder, folder URL, pattern or pipe:"
    )
    profile: Path | None = option(None, help="similarity profile .npz of the split (fused; 'fingerprint profile')")
    fusion: Path | None = option(None, help="fitted fusion model (fused; 'fingerprint fuse')")
    k: int = option(16, min=1, help="generated neighbours per real image (relation, emb_topk)")
    batch_size: int = option(64, min=1, help="real images per relation-head batch (relation)")
    pixel_size: int = option(
        64, min=1, help="side the pixel scorers resize images to (10,000 images at 64px are 164 MB as float32)"
    )
    ssim_candidates: int = option(
        64, min=0, help="exact SSIM only on each real image's M nearest generated images by pixel L2 (0 = all)"
    )
    max_pairs: int = option(2_000_000, min=1, help="seed_rule: refuse more real x generated pairs")
    calibrate_on: str | None = option(
        None,
        help="labelled dev set to calibrate the threshold on: its features (feature scorers) "
        "or its shards (pixel scorers)",
    )
    dev_index: Path | None = option(
        None, help="saved FAISS index over the dev set's generated embeddings (default: exact)"
    )
    rule: str = option(
        THRESHOLD_RULES[0],
        choices=THRESHOLD_RULES,
        help="calibration rule: kappa or balanced_accuracy (bootstrap-smoothed), max_f1, youden",
    )
    threshold: float | None = option(None, help="use this threshold (on score.scale) instead of calibrating")
    scale: str = option(
        SCORE_SCALES[0],
        choices=SCORE_SCALES,
        help="scale of a given or calibrated threshold: robust/rank = standardised within the scored split, raw",
    )
    store_calibration: bool = option(True, help="relation: save a calibrated threshold into the model's model.json")
    run_file: Path | None = option(None, help="also write the official run file (<figure_id>,<0|1>)")
    ids: Path | None = option(None, help="check the run file against these official ids (one per line)")
    neighbours: Path | None = option(None, help="relation: where to write neighbours.npz (default: beside the output)")
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads (default: all cores)")
    on_error: str = option("raise", choices=ON_ERROR, help="pixel scorers: unreadable samples")
    log: Path | None = option(None, help="append a JSON-lines record here")
    seed: int = option(0, help="random seed (scoring is deterministic)")
    force: bool = option(False, help="replace outputs that exist")

    def __post_init__(self) -> None:
        check_fields(self)
        needs = get_scorer(self.scorer).needs
        pairs = (("features", "features"), ("model", "model"), ("shards", "pixels"), ("profile", "profile"))
        for name, need in (*pairs, ("fusion", "fusion")):
            if need in needs and getattr(self, name) is None:
                raise fail(self, "scorer", f"{self.scorer} needs score.{name}")

    def outputs(self) -> list[Path]:
        """Every file this stage writes (the score file first)."""
        out = [Path(self.out)] + ([Path(self.run_file)] if self.run_file else [])
        return out + ([self.neighbours_path()] if get_scorer(self.scorer).saves_neighbours else [])

    def neighbours_path(self) -> Path:
        return Path(self.neighbours) if self.neighbours else Path(self.out).parent / "neighbours.npz"


def run_score(cfg: ScoreConfig) -> dict:
    """Score the real images of one split; write the score file, its sidecar and (if asked) the run file."""
    scorer = get_scorer(cfg.scorer)
    for path in cfg.outputs():
        if path.exists() and not cfg.force:
            raise exists_error(cfg, path)
        check_writable(path.parent)
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    t0 = time.perf_counter()
    model, meta = load_model(cfg.model) if "model" in scorer.needs else (None, None)
    source = _source(cfg, scorer)
    inputs = load_inputs(scorer, cfg, source, cfg.index, model, meta)
    result = scorer.compute(inputs, cfg)
    threshold, scale, how, calibration = choose_threshold(cfg, scorer, inputs, result)
    labels, cut = apply_threshold(result.score, threshold, scale)
    sidecar = {
        "scorer": cfg.scorer,
        "threshold": cut,
        "threshold_scale": scale,
        "threshold_on_scale": threshold,
        "threshold_from": how,
        "rule": (calibration or {}).get("rule") if calibration else (cfg.rule if how == "given" else None),
        "calibration": calibration,
        "source": str(source),
        "k": cfg.k if scorer.uses_k else None,
        "n": len(result.keys),
        "n_predicted_used": int(labels.sum()),
        "run_file": str(cfg.run_file) if cfg.run_file else None,
        **scorer.sidecar(cfg),
    }
    _write_outputs(cfg, scorer, result, labels, sidecar)
    seconds = time.perf_counter() - t0
    n_used = int(labels.sum())
    log.info(
        "%s: %d real images scored, %d predicted used (threshold %.4g on the %s scale, %s) in %.1f s -> %s",
        *(cfg.scorer, len(result.keys), n_used, threshold, scale, how, seconds, cfg.out),
    )
    record = {"scorer": cfg.scorer, "n": len(result.keys), "threshold": threshold, "n_predicted_used": n_used}
    JsonlLogger(cfg.log).log(stage="score", seconds=round(seconds, 3), **record)
    return record | {"seconds": seconds, "threshold_from": how, "threshold_scale": scale}


def _source(cfg: ScoreConfig, scorer: Scorer) -> Path:
    """Where the scorer reads its real images: the shard folder, the features file or the profile."""
    if "pixels" in scorer.needs:
        return cfg.shards
    return cfg.profile if "profile" in scorer.needs else cfg.features


def _write_outputs(cfg: ScoreConfig, scorer: Scorer, result: ScoreResult, labels: np.ndarray, sidecar: dict) -> None:
    write_scores(cfg.out, result.keys, result.score, labels, meta=sidecar)
    for name, values in result.components.items():
        log.info("component %s: mean %.4f", name, float(np.mean(values)))
    if scorer.saves_neighbours:
        result.save_neighbours(cfg.neighbours_path())
    if cfg.run_file:
        write_run_file(cfg.run_file, result.keys, labels)
        if cfg.ids:
            problems = validate(cfg.run_file, load_ids(cfg.ids))
            if problems:
                raise FingerprintError(f"{cfg.run_file}: {problems[0]} ({len(problems)} problem(s))")


def load_inputs(
    scorer: Scorer, cfg: ScoreConfig, source: Any, index_path: Path | None, model: Any = None, meta: dict | None = None
) -> ScorerInputs:
    """What `scorer` reads from `source` (shards, a features folder / .npz, or a profile), with its model or fusion
    and saved index.

    From a features folder only the real rows are loaded; the generated ones
    stay on disk (`ScorerInputs.gallery`) and the saved index's ids are their rows.
    """
    if "profile" in scorer.needs:
        fusion = load_fusion(cfg.fusion) if "fusion" in scorer.needs else None
        return ScorerInputs(profile=Path(source), fusion=fusion, calibration=(fusion or {}).get("calibration"))
    if "pixels" in scorer.needs:
        if _is_features(source):
            raise FingerprintError(f"{source}: score.scorer {scorer.name} reads pixels from shards, not features")
        pixels = {}
        for role in ROLES:
            pixels[role] = load_all(
                source, StreamConfig(roles=(role,), image_size=cfg.pixel_size, on_error=cfg.on_error)
            )
            if not pixels[role]["key"]:
                raise FingerprintError(f"{source}: no {role} images")
        return ScorerInputs(pixels=pixels)
    if urls.is_url(source) or (Path(source).is_dir() and not is_features_folder(source)):
        raise FingerprintError(f"{source}: score.scorer {scorer.name} reads features (a folder or .npz), not shards")
    store = FeatureStore.open(source) if is_features_folder(source) else None
    feats = store.load(role="real", fmaps=scorer.trained) if store else Features.load(source, fmaps=scorer.trained)
    if model is not None:
        check_model_features(meta, feats, str(source))
    index = None
    if index_path and "index" in scorer.needs:
        idx, keys = load_index(index_path)
        if keys is None:
            _check_index_rows(idx, index_path, store)
            index = idx
        elif store is not None:
            raise FingerprintError(f"{index_path}: indexes the keys of a .npz; rebuild it from {source} (index stage)")
        else:
            index = resolve_index(idx, keys, feats.select(role="generated").keys.tolist(), source=str(index_path))
    stored = (meta or {}).get("calibration") if model is not None else None
    return ScorerInputs(features=feats, model=model, index=index, store=store, calibration=stored, model_meta=meta)


def _is_features(source: Any) -> bool:
    return not urls.is_url(source) and (str(source).endswith(".npz") or is_features_folder(source))


def is_features_folder(source: Any) -> bool:
    return not urls.is_url(source) and (Path(source) / SET_FILE).is_file()


def _check_index_rows(index: Any, index_path: Path, store: FeatureStore | None) -> None:
    """An index whose ids are a features folder's rows must have been built from this folder."""
    side = read_index_meta(index_path)
    if store is None or side.get("features_signature") != store.signature():
        where = store.path if store is not None else "these features"
        raise FingerprintError(f"{index_path}: built from other features than {where} (rebuild it: fingerprint index)")


def check_model_features(model_meta: dict, feats: Features, source: str) -> None:
    """Refuse features exported by a different model than the one scoring them."""
    made_by = feats.meta.get("model_sha256")
    if made_by and model_meta.get("sha256") and made_by != model_meta["sha256"]:
        raise FingerprintError(f"{source}: features were exported by another model (sha256 {made_by[:12]}...)")


def _same_file(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if urls.is_url(a) or urls.is_url(b):
        return str(a) == str(b)
    return Path(a).resolve() == Path(b).resolve()


def choose_threshold(
    cfg: ScoreConfig, scorer: Scorer, inputs: ScorerInputs, result: ScoreResult
) -> tuple[float, str, str, dict | None]:
    """(threshold, its scale, where it came from, calibration record) by the policy in the module docstring."""
    stored = inputs.calibration or {}
    if cfg.threshold is not None:
        return float(cfg.threshold), cfg.scale, "given", None
    if cfg.calibrate_on:
        return _calibrate(cfg, scorer, inputs, result)
    if stored.get("threshold") is not None and stored.get("scorer", "relation") == cfg.scorer:
        where = cfg.fusion if "fusion" in scorer.needs else f"{cfg.model}/model.json"
        return float(stored["threshold"]), stored.get("scale", "raw"), f"stored in {where}", stored
    if scorer.default_threshold is not None:
        log.warning("score: no calibration; using threshold %g on the membership probability", scorer.default_threshold)
        how = f"{scorer.default_threshold} (uncalibrated probability: no calibration given or stored with the model)"
        return scorer.default_threshold, "raw", how, None
    raise fail(
        cfg,
        "scorer",
        f"{cfg.scorer} needs score.calibrate_on DEV or score.threshold (its scores are not probabilities)",
    )


def _calibrate(
    cfg: ScoreConfig, scorer: Scorer, inputs: ScorerInputs, result: ScoreResult
) -> tuple[float, str, str, dict]:
    """Calibrate on the labelled dev split (reusing this split's scores when it is the dev split)."""
    source = _source(cfg, scorer)
    if _same_file(cfg.calibrate_on, source) and _same_file(cfg.dev_index, cfg.index):
        dev, dev_result = inputs, result
    else:
        dev = load_inputs(scorer, cfg, cfg.calibrate_on, cfg.dev_index, inputs.model, inputs.model_meta)
        dev_result = scorer.compute(dev, cfg)
    truth = dev.real_labels()
    y = label_codes([truth[k] for k in dev_result.keys], source=str(cfg.calibrate_on))
    threshold = calibrate_threshold(y, on_scale(dev_result.score, cfg.scale), cfg.rule, seed=cfg.seed)
    calibration = {
        "threshold": threshold,
        "rule": cfg.rule,
        "scale": cfg.scale,
        "scorer": cfg.scorer,
        "k": cfg.k,
        "n": int(len(y)),
        "n_pos": int(y.sum()),
        "source": str(cfg.calibrate_on),
    }
    if scorer.calibrates_model and cfg.store_calibration and inputs.model is not None:
        store_calibration(cfg.model, inputs.model, inputs.model_meta, calibration)
        log.info("stored the calibration in %s/model.json", cfg.model)
    return threshold, cfg.scale, f"calibrated on {cfg.calibrate_on}", calibration
