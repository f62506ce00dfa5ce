"""Named image collections scored under one set of conditions: the data path shared by `audit` and `attribute`.

A collection is a folder of images (every image file under it) or a shard
folder from `fingerprint pack` (its rows of one role). Folders are packed
(`pack_collection`: hard links into a staging folder with a manifest naming
role and label, then `pack.pack`), so every image carries its content hashes
(`sha256` of the file, `pixel_sha256` of the stored pixels) from then on.

`score_together` is the one place collection-level questions get their
membership scores: ONE registered scorer (`scorers.SCORERS`) scores the real
images of every collection in ONE call against ONE generated pool, with the
same model, preprocessing and k. That is what makes the scores of a candidate
and a reference exchangeable when neither was used (the audit's H0): scoring
them against different pools (e.g. the dev split's) or with a scorer fitted on
one of them breaks it (docs/audit.md). `training_hashes` lists what a trained
model was fitted on (every real image of its training shards, by content), so
callers can refuse, or leave out, images the model has seen. `train_model`
trains a model on a 2023 dev folder while holding chosen images out of its
training shards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint.core.config import config_from_file
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json, write_json
from fingerprint.core.vocab import LABEL_CODES
from fingerprint.data.pack import pack
from fingerprint.data.shards import iter_shard, shard_urls
from fingerprint.data.sources import IMAGE_EXTS, list_images
from fingerprint.data.stream import StreamConfig, load_all
from fingerprint.embedding.embed import EmbedConfig, run_embed
from fingerprint.embedding.features import Features
from fingerprint.embedding.index import IndexConfig, run_index
from fingerprint.embedding.model_io import load_model
from fingerprint.evaluation.scorefiles import ScoreResult
from fingerprint.membership.fuse import FuseConfig, load_fusion, run_fuse
from fingerprint.membership.pooled import PooledOptions, fusion_spaces, needed_sizes, pooled_fused, pooled_profile
from fingerprint.membership.profile import load_profile, save_profile
from fingerprint.membership.score import ScoreConfig, load_inputs
from fingerprint.membership.scorers import ScorerInputs, get_scorer
from fingerprint.training.adapt import Metric, load_metric
from fingerprint.training.train import TrainConfig, run_train

log = logging.getLogger(__name__)


def is_shard_folder(path: str | os.PathLike) -> bool:
    """A folder holding `fingerprint pack` output (manifest.json and shard tars)."""
    p = Path(path)
    return (p / "manifest.json").is_file() and any(p.glob("*.tar"))


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, hidden entries skipped, links followed), sorted by path.

    A link that cannot be followed is kept in the list: packing counts and lists it as skipped.
    """
    if not folder.is_dir():
        raise FingerprintError(f"{folder}: image folder not found")
    base = Path(os.path.abspath(folder))
    files = [folder / p.relative_to(base) for p, _ in list_images(folder)]
    if not files:
        raise FingerprintError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)})")
    return files


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink() and not src.exists():  # broken or a loop: staged as a link to the same place, for pack to skip
        os.symlink(os.path.join(src.parent, os.readlink(src)), dst)
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copyfile(src, dst)


def pack_items(items: list[tuple[Path, str, str, str]], out: Path, *, image_size: int = 256, seed: int = 0) -> Path:
    """Pack (file, path in the staging folder, role, label) items into shards at `out` (replaced if it exists)."""
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        rows = []
        for src, rel, role, label in items:
            _link(src, staging / rel)
            rows.append(json.dumps({"path": rel, "role": role, "label": label}))
        (staging / "manifest.jsonl").write_text("\n".join(rows) + "\n")
        pack(staging, out, manifest=staging / "manifest.jsonl", image_size=image_size, seed=seed, force=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def pack_collection(path: Path, out: Path, *, role: str, label: str, image_size: int = 256, seed: int = 0) -> Path:
    """A shard folder of the collection at `path`: itself if it is one, else its images packed into `out`."""
    path = Path(path)
    if is_shard_folder(path):
        return path
    items = [(f, f.relative_to(path).as_posix(), role, label) for f in image_files(path)]
    return pack_items(items, out, image_size=image_size, seed=seed)


def dev_items(folder: Path, *, generated: bool, exclude: set[str] = frozenset()) -> list[tuple[Path, str, str, str]]:
    """Items of a 2023 dev folder: used/ and not_used/ (labelled reals), and generated/ when asked;
    reals whose file stem is in `exclude` are left out."""
    folder = Path(folder)
    parts = [("used", "real", "used"), ("not_used", "real", "not_used")]
    parts += [("generated", "generated", "unknown")] if generated else []
    items = []
    for name, role, label in parts:
        if not (folder / name).is_dir():
            raise FingerprintError(f"{folder}: no {name}/ folder (expected the 2023 dev layout)")
        items += [
            (f, f"{name}/{f.relative_to(folder / name).as_posix()}", role, label)
            for f in image_files(folder / name)
            if not (role == "real" and f.stem in exclude)
        ]
    return items


def shard_records(shards: Path, role: str | None = None) -> list[dict]:
    """The json records of a shard folder's samples (no image decoding), optionally of one role."""
    out = []
    for url in shard_urls(shards):
        for raw in iter_shard(url):
            rec = json.loads(raw["json"])
            rec.setdefault("key", raw["__key__"])
            if role is None or rec.get("role") == role:
                out.append(rec)
    if not out:
        raise FingerprintError(f"{shards}: no {role or ''} images".replace("  ", " "))
    return out


def content_ids(rec: dict) -> set[str]:
    """What identifies an image's content: its file's sha256 and its stored pixels' sha256."""
    return {h for h in (rec.get("sha256"), rec.get("pixel_sha256")) if h}


def training_hashes(model_dir: Path) -> tuple[set[str], Path]:
    """Content hashes of every real image in the shards a model was trained on (from its model.json)."""
    meta_path = Path(model_dir) / "model.json"
    if not meta_path.is_file():
        raise FingerprintError(f"{meta_path}: model not found")
    shards = ((read_json(meta_path).get("train") or {}).get("config") or {}).get("shards")
    if not shards or not Path(shards).is_dir():
        raise FingerprintError(
            f"{meta_path}: the model's training shards ({shards or 'not recorded'}) cannot be read, so what it "
            "was trained on cannot be checked (give them back, or use the check-skipping option at your own risk)"
        )
    hashes: set[str] = set()
    for rec in shard_records(Path(shards), "real"):
        hashes |= content_ids(rec)
    return hashes, Path(shards)


@dataclass
class Members:
    """The real images of one named group: their shard folder and keys (in the folder's key order)."""

    shards: Path
    keys: list[str]
    records: list[dict] = field(default_factory=list)


def members(shards: Path, *, label: str | None = None, keep=None) -> Members:
    """The real images of a shard folder (of one label, and for which `keep(record)` is true)."""
    recs = [r for r in shard_records(shards, "real") if (label is None or r.get("label") == label)]
    recs = [r for r in recs if keep is None or keep(r)]
    recs.sort(key=lambda r: r["key"])
    return Members(Path(shards), [r["key"] for r in recs], recs)


def check_unique_keys(groups: dict[str, Members], generated: Path) -> None:
    """Ids never change: two collections holding one id is an error naming both."""
    seen: dict[str, str] = {}
    for name, m in groups.items():
        for k in m.keys:
            if k in seen and seen[k] != name:
                raise FingerprintError(
                    f"image id {k!r} is in both the {seen[k]} and the {name} collection; ids must be unique "
                    "across collections (rename one of the files)"
                )
            seen[k] = name
    clash = sorted(set(seen) & {r["key"] for r in shard_records(generated, "generated")})
    if clash:
        raise FingerprintError(f"{generated}: generated image id {clash[0]!r} is also a real image's id")


@dataclass
class TogetherScores:
    """Scores of every real image of every group, from one scorer call against one generated pool."""

    keys: list[str]
    groups: list[str]
    scores: np.ndarray
    result: ScoreResult
    conditions: dict[str, Any]

    def of(self, group: str) -> np.ndarray:
        return self.scores[np.asarray(self.groups) == group]


def embed_all(
    model: Path, folders: list[Path], work: Path, *, fmaps: bool, batch_size: int, seed: int, threads: int | None
) -> dict[Path, Features]:
    """Each distinct shard folder through the model once -> {folder: Features} (written under work/features/)."""
    out = {}
    for i, folder in enumerate(dict.fromkeys(Path(f) for f in folders)):
        path = work / "features" / f"part{i}.npz"
        cfg = EmbedConfig(
            model=model, shards=folder, out=path, fmaps=fmaps, batch_size=batch_size, seed=seed, threads=threads,
            force=True,
        )  # fmt: skip
        run_embed(cfg)
        out[folder] = Features.load(path, fmaps=fmaps)
    return out


def _merged_features(groups: dict[str, Members], generated: Path, feats: dict[Path, Features]) -> Features:
    parts = [feats[m.shards].take(feats[m.shards].rows_of(m.keys, source=str(m.shards))) for m in groups.values()]
    pool = feats[Path(generated)].select(role="generated")
    cat = [*parts, pool]
    return Features(
        np.concatenate([p.keys for p in cat]),
        np.concatenate([p.roles for p in cat]),
        np.concatenate([p.labels for p in cat]),
        np.concatenate([p.embeddings for p in cat]),
        np.concatenate([p.fmaps for p in cat]) if cat[0].fmaps is not None else None,
        dict(pool.meta),
    )


def _pixels(groups: dict[str, Members], generated: Path, size: int, on_error: str) -> dict[str, dict]:
    """{"real": batch of every group's images in group order, "generated": the pool} at `size` pixels."""
    cache: dict[Path, dict] = {}
    real = {"key": [], "image": [], "role": [], "label": []}
    for m in groups.values():
        if m.shards not in cache:
            cache[m.shards] = load_all(m.shards, StreamConfig(roles=("real",), image_size=size, on_error=on_error))
        b = cache[m.shards]
        pos = {k: i for i, k in enumerate(b["key"])}
        idx = [pos[k] for k in m.keys]
        real["key"] += m.keys
        real["image"].append(b["image"][idx])
        real["role"] += ["real"] * len(idx)
        real["label"] += [b["label"][i] for i in idx]
    real["image"] = torch.cat(real["image"])
    gen = load_all(generated, StreamConfig(roles=("generated",), image_size=size, on_error=on_error))
    if not gen["key"]:
        raise FingerprintError(f"{generated}: no generated images")
    return {"real": real, "generated": gen}


def score_together(
    scorer_name: str,
    groups: dict[str, Members],
    generated: Path,
    work: Path,
    *,
    model: Path | None = None,
    params: dict[str, Any] | None = None,
    index_factory: str = "Flat",
    seed: int = 0,
    threads: int | None = None,
) -> TogetherScores:
    """Score the real images of every group with ONE call of one registered scorer against ONE generated pool.

    Feature scorers: each shard folder is embedded by `model`, the rows are
    merged into work/features/together.npz, the pool is indexed
    (work/index/pool.faiss, `index_factory`), and the scorer reads them
    through `score.load_inputs`, as `fingerprint score` does. Pixel scorers
    read every image at `params["pixel_size"]`. `params` are ScoreConfig fields.
    """
    scorer = get_scorer(scorer_name)
    check_unique_keys(groups, generated)
    params = dict(params or {})
    pixels = "pixels" in scorer.needs
    if not pixels and model is None:
        raise FingerprintError(f"scorer {scorer_name} reads features: it needs a trained model")
    together = work / "features" / "together.npz"
    cfg = ScoreConfig(
        scorer=scorer_name, out=work / "unused.csv", features=None if pixels else together,
        model=model if scorer.trained else None, shards=generated if pixels else None, seed=seed, threads=threads,
        **params,
    )  # fmt: skip
    if pixels:
        inputs = ScorerInputs(pixels=_pixels(groups, generated, cfg.pixel_size, cfg.on_error))
    else:
        folders = [m.shards for m in groups.values()] + [Path(generated)]
        feats = embed_all(model, folders, work, fmaps=scorer.trained, batch_size=cfg.batch_size, seed=seed,
                          threads=threads)  # fmt: skip
        _merged_features(groups, generated, feats).save(together)
        index = None
        if "index" in scorer.needs:
            index = work / "index" / "pool.faiss"
            run_index(IndexConfig(features=together, out=index, index_factory=index_factory, seed=seed, force=True))
        net, meta = load_model(model) if scorer.trained else (None, None)
        inputs = load_inputs(scorer, cfg, together, index, net, meta)
    result = scorer.compute(inputs, cfg)
    n_gen = len(inputs.pixels["generated"]["key"]) if pixels else len(inputs.features.select(role="generated"))
    return _together(scorer_name, groups, generated, result, model, index_factory, cfg, n_gen)


def _together(scorer_name, groups, generated, result: ScoreResult, model, index_factory, cfg, n_gen) -> TogetherScores:
    group_of = {k: name for name, m in groups.items() for k in m.keys}
    keys = list(result.keys)
    conditions = {
        "scorer": scorer_name,
        "one_scoring_call": True,
        "generated_pool": str(generated),
        "n_generated": int(n_gen),
        "model": None if model is None else str(model),
        "index_factory": index_factory if "index" in get_scorer(scorer_name).needs else None,
        "k": cfg.k if get_scorer(scorer_name).uses_k else None,
        "pixel_size": cfg.pixel_size if "pixels" in get_scorer(scorer_name).needs else None,
    }
    return TogetherScores(keys, [group_of[k] for k in keys], np.asarray(result.score, np.float64), result, conditions)


def train_model(
    dev: Path,
    out: Path,
    work: Path,
    *,
    exclude: set[str] = frozenset(),
    train_config: Path | None = None,
    image_size: int = 256,
    seed: int = 0,
    threads: int | None = None,
    **train: Any,
) -> Path:
    """Train a relation network on a 2023 dev folder with the reals in `exclude` (file stems) left out of its shards.

    The left-out images never enter the training shards, so the model's
    record of what it trained on (model.json -> train.config.shards) does not
    hold them, which `training_hashes` then confirms. `train` are TrainConfig
    fields (epochs, image_size as `model_image_size`, ...).
    """
    dev = Path(dev)
    if is_shard_folder(dev):
        raise FingerprintError(f"{dev}: training a model with held-out images needs the dev split as an image folder")
    shards = pack_items(dev_items(dev, generated=True, exclude=exclude), work / "shards" / "dev-train",
                        image_size=image_size, seed=seed)  # fmt: skip
    if "model_image_size" in train:
        train["image_size"] = train.pop("model_image_size")
    cfg = config_from_file(
        TrainConfig, train_config, shards=shards, out=out, seed=seed, threads=threads, force=True,
        **{k: v for k, v in train.items() if v is not None},
    )  # fmt: skip
    run_train(cfg)
    write_json(out / "held_out.json", {"dev": str(dev), "held_out": sorted(exclude)})
    return out


def stratified_holdout(keys: list[str], labels: list[str], share: float, seed: int) -> set[str]:
    """A seeded share of each label's keys (used / not_used), rounded, at least one when share > 0."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x401D])
    held: set[str] = set()
    for label in LABEL_CODES:
        ks = sorted(k for k, lab in zip(keys, labels) if lab == label)
        n = 0 if share <= 0 or not ks else min(len(ks), max(1, round(share * len(ks))))
        held |= set(rng.permutation(ks)[:n].tolist())
    return held


# -- the fused scorer on collections: a pooled calibrated profile and a fitted fusion ---------------------------

#: the fusion model's file in a model folder (as `fingerprint run` writes it, and an audit that fits its own)
FUSION_FILE = "fusion.json"


def metric_folds(metric: Metric, records: list[dict]) -> np.ndarray:
    """The metric each real image is measured in: the fold metric not fitted on it when the metric's shards
    hold the image (found by content hash), else the full metric."""
    fold_of_id: dict[str, int] = {}
    for shards in metric.meta.get("shards") or []:
        if not Path(shards).is_dir():
            continue
        for rec in shard_records(Path(shards), "real"):
            if rec["key"] in metric.fold_of:
                fold_of_id |= dict.fromkeys(content_ids(rec), int(metric.fold_of[rec["key"]]))
    folds = [next((fold_of_id[i] for i in content_ids(r) if i in fold_of_id), metric.full) for r in records]
    return np.asarray(folds, dtype=int)


def _multi_size_pixels(groups: dict[str, Members], generated: Path, sizes: list[int], on_error: str):
    """(real images {side: (N,1,s,s)}, generated {side: ...}, real keys, generated keys), groups in order."""
    real, gen, keys, gen_keys = {}, {}, None, None
    for s in sizes:
        pix = _pixels(groups, generated, s, on_error)
        real[s], gen[s] = pix["real"]["image"], pix["generated"]["image"]
        keys, gen_keys = pix["real"]["key"], pix["generated"]["key"]
    return real, gen, keys, gen_keys


def score_fused_together(
    groups: dict[str, Members],
    generated: Path,
    fusion_dir: Path,
    *,
    pooled: tuple[str, ...] = ("candidate", "reference"),
    options: PooledOptions | None = None,
    on_error: str = "raise",
) -> TogetherScores:
    """The fused score of every real image of every group, in ONE call against ONE generated pool.

    The fusion of `fusion_dir/fusion.json` (its columns, weights and standardisation; the learned metric of
    `fusion_dir` for k32x) is applied to the pooled calibrated profile (`fingerprint.membership.pooled`): the
    images of the `pooled` groups are each other's reference population (each image left out of its own), and
    every column is standardised on them; the other groups' images (held-out dev images) are measured against
    the same pool and scale without entering either. Swapping two pooled groups changes no score.
    """
    check_unique_keys(groups, generated)
    model = load_fusion(Path(fusion_dir) / FUSION_FILE)
    spaces = fusion_spaces(model)
    metric = load_metric(fusion_dir) if "k32x" in spaces else None
    ordered = {g: groups[g] for g in pooled if g in groups} | {g: m for g, m in groups.items() if g not in pooled}
    n_pool = sum(len(m.keys) for g, m in ordered.items() if g in pooled)
    real, gen, keys, gen_keys = _multi_size_pixels(ordered, generated, needed_sizes(spaces, metric), on_error)
    if not gen_keys:
        raise FingerprintError(f"{generated}: no generated images")
    records = [r for m in ordered.values() for r in m.records]
    folds = metric_folds(metric, records) if metric is not None else None
    columns = pooled_profile(real, gen, n_pool, spaces, metric=metric, folds=folds, options=options or PooledOptions())
    score = pooled_fused(model, columns, n_pool)
    group_of = {k: name for name, m in ordered.items() for k in m.keys}
    conditions = {
        "scorer": "fused",
        "one_scoring_call": True,
        "generated_pool": str(generated),
        "n_generated": len(gen_keys),
        "model": str(fusion_dir),
        "index_factory": None,
        "k": None,
        "pixel_size": None,
        "fusion": {k: model[k] for k in ("groups", "columns", "weights", "intercept", "standardise")},
        "calibration_pool": list(g for g in pooled if g in groups),
        "n_calibration_pool": int(n_pool),
        "metric_full_metric_images": None if folds is None else int((folds == metric.full).sum()),
    }
    result = ScoreResult(list(keys), score, components=columns)
    return TogetherScores(list(keys), [group_of[k] for k in keys], score, result, conditions)


def fusion_hashes(fusion_dir: Path, *, fallback_profile: Path | None = None, fallback_shards: Path | None = None):
    """Content hashes of the labelled real images a fusion was fitted on, and the shard folder holding them.

    Read from the fusion's dev profile (its keys) and that profile's dev shards; `fallback_*` are tried when the
    recorded paths do not resolve from here (a run folder moved or read from another directory).
    """
    model = load_fusion(Path(fusion_dir) / FUSION_FILE)
    profile = Path(model["dev"]["profile"])
    if not profile.is_file() and fallback_profile is not None:
        profile = fallback_profile
    shards = None
    if profile.is_file():
        shards = Path((load_profile(profile)[0].meta.get("shards") or {}).get("dev") or "")
    if (shards is None or not is_shard_folder(shards)) and fallback_shards is not None:
        shards = fallback_shards
    if shards is None or not is_shard_folder(shards):
        raise FingerprintError(
            f"{Path(fusion_dir) / FUSION_FILE}: the shards its fusion was fitted on cannot be read, so what it was "
            "fitted on cannot be checked (give them back, or use the check-skipping option at your own risk)"
        )
    keys = set(model["dev"]["keys"])
    hashes: set[str] = set()
    for rec in shard_records(shards, "real"):
        if rec["key"] in keys:
            hashes |= content_ids(rec)
    return hashes, shards


def fit_dev_fusion(
    dev: Path,
    out: Path,
    work: Path,
    *,
    exclude: set[str] = frozenset(),
    spaces: tuple[str, ...] = ("px64", "pn32", "px16"),
    image_size: int = 256,
    seed: int = 0,
    options: PooledOptions | None = None,
) -> Path:
    """Fit the fused scorer on a 2023 dev folder with the reals in `exclude` (file stems) left out: out/fusion.json.

    The kept labelled reals are profiled against the dev generated pool, each against the other kept reals
    (`pooled_profile`), and `fingerprint.membership.fuse` fits the fusion on their labels (groups from
    `spaces`, anchored at the first). The left-out images never enter the fit's shards.
    """
    dev = Path(dev)
    if is_shard_folder(dev):
        raise FingerprintError(f"{dev}: fitting a fusion with held-out images needs the dev split as an image folder")
    shards = pack_items(dev_items(dev, generated=True, exclude=exclude), work / "shards" / "dev-fit",
                        image_size=image_size, seed=seed)  # fmt: skip
    fit = members(shards)
    groups = {"dev": fit}
    real, gen, keys, _ = _multi_size_pixels(groups, shards, needed_sizes(spaces), "raise")
    columns = pooled_profile(real, gen, len(keys), spaces, options=options or PooledOptions())
    labels = [r["label"] for r in fit.records]
    meta = {"spaces": list(spaces), "shards": {"dev": str(shards.resolve())}, "n_reference": len(keys),
            "reference": "every other kept labelled dev image"}  # fmt: skip
    profile = save_profile(Path(out) / "dev_profile.npz", list(keys), labels, columns, meta)
    run_fuse(FuseConfig(dev=profile.resolve(), out=Path(out) / FUSION_FILE, spaces=spaces, anchor=spaces[:1],
                        seed=seed, force=True))  # fmt: skip
    write_json(Path(out) / "held_out.json", {"dev": str(dev), "held_out": sorted(exclude)})
    return Path(out)
