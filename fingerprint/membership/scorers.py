"""The scorer registry: every membership scorer, registered by name with the inputs it needs.

A scorer turns one split's inputs into a `ScoreResult` (one score per real
image, higher = more likely used). It declares what it reads (from
`vocab.SCORER_INPUTS`: "pixels" from a shard folder, "features" from a
features .npz, the trained "model", a saved FAISS "index"), and how its
scores are used (`uses_k`, a meaningful `default_threshold`, whether it
`saves_neighbours`, whether it is `pairwise` over all real x generated
pairs). `fingerprint score`, `fingerprint run`, `compare` and the CLI choices
all read this registry; a new scorer is one `@register(...)`.

Registered here: `fused` (the trained scorer that writes the run file: the
sign-constrained logistic fusion of the calibrated similarity profile, fitted
on the dev labels by `fingerprint.membership.fuse`), `relation` (the trained relation
network over FAISS-retrieved neighbours), and the baselines of
`fingerprint.membership.baselines`: `dcr` (distance to closest record), `ssim` (max
SSIM, the idea behind the best 2023 result), `emb_nn` / `emb_topk`
(embedding cosine), `seed_rule` (the seed's mean relation probability over
all generated images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import SCORER_INPUTS
from fingerprint.embedding.features import ArrayGallery, Features, FeatureStore, Gallery
from fingerprint.embedding.inference import relation_scores
from fingerprint.evaluation.scorefiles import ScoreResult
from fingerprint.imaging import similarity
from fingerprint.membership import baselines
from fingerprint.membership.fuse import fused_scores
from fingerprint.membership.profile import load_profile


class ScorerParams(Protocol):
    """The options a scorer may read (a ScoreConfig has them all)."""

    k: int
    batch_size: int
    pixel_size: int
    ssim_candidates: int
    max_pairs: int


@dataclass
class ScorerInputs:
    """What one scorer reads for one split: features (+ model, index), pixels, or a profile (+ fusion).

    From a features folder, `features` holds only the real rows and `store`
    the folder: `gallery()` reads the generated rows from disk as needed
    (bounded memory); `split()` loads them all (small sets, pairwise scorers).
    """

    features: Features | None = None
    pixels: dict[str, dict] | None = None  # role -> stream Batch (images in [0,1] at pixel_size)
    model: Any = None
    index: Any = None  # None (exact search), a faiss index, or (index, id -> gen row) from index.resolve_index
    store: FeatureStore | None = None  # a features folder (its generated rows are the gallery)
    profile: Path | None = None  # a profile .npz (fingerprint.membership.profile)
    fusion: dict | None = None  # a fitted fusion model (fingerprint.membership.fuse)
    calibration: dict | None = None  # the threshold stored with the model or fusion (its own "scale")
    model_meta: dict | None = None  # the model's model.json

    def real(self) -> Features:
        """The real rows (the ones scored); an error when there are none."""
        real = self.features.select(role="real")
        if len(real) == 0:
            raise FingerprintError("score: the features need real and generated rows")
        return real

    def gallery(self) -> Gallery:
        """The generated rows the scorers search: the folder's, read as needed, or the in-memory ones."""
        gallery = self.store.gallery() if self.store is not None else ArrayGallery.of(self._generated())
        if len(gallery) == 0:
            raise FingerprintError("score: the features need real and generated rows")
        return gallery

    def _generated(self) -> Features:
        if self.store is not None:
            return self.store.load(role="generated", fmaps=self.features.fmaps is not None)
        return self.features.select(role="generated")

    def split(self) -> tuple[Features, Features]:
        """(real, generated) features in memory; an error when either is empty."""
        real, gen = self.features.select(role="real"), self._generated()
        if len(real) == 0 or len(gen) == 0:
            raise FingerprintError("score: the features need real and generated rows")
        return real, gen

    def real_labels(self) -> dict[str, str]:
        """key -> label of the real images."""
        if self.profile is not None:
            feats = load_profile(self.profile)[0]
            return dict(zip(feats.keys.tolist(), feats.labels.tolist()))
        if self.pixels is not None:
            real = self.pixels["real"]
            return dict(zip(real["key"], real["label"]))
        real = self.features.select(role="real")
        return dict(zip(real.keys.tolist(), real.labels.tolist()))


@dataclass(frozen=True)
class Scorer:
    """A registered scorer: its function and what it needs and promises."""

    name: str
    compute: Callable[[ScorerInputs, ScorerParams], ScoreResult]
    needs: frozenset[str]
    help: str
    uses_k: bool = False  # reads ScorerParams.k (recorded in the score file's sidecar)
    default_threshold: float | None = None  # scores are probabilities: this threshold means something uncalibrated
    saves_neighbours: bool = False  # writes scores/neighbours.npz (the relation features of compare)
    calibrates_model: bool = False  # its threshold comes with its model (chosen out of sample when it was fitted)
    pairwise: bool = False  # cost grows with real x generated pairs (skipped on large sets by `run`)
    sidecar: Callable[[ScorerParams], dict] = field(default=lambda params: {})

    @property
    def trained(self) -> bool:
        """True when the scorer uses a model fitted on the dev labels (relation network or fusion)."""
        return "model" in self.needs or "fusion" in self.needs


SCORERS: dict[str, Scorer] = {}
#: the inputs a scorer reads its real images from (exactly one)
SOURCES = ("pixels", "features", "profile")


def register(name: str, *, needs: tuple[str, ...], help: str, **options: Any) -> Callable:
    """Decorator: register `fn(inputs, params) -> ScoreResult` as scorer `name`."""
    unknown = set(needs) - set(SCORER_INPUTS)
    if unknown or sum(s in needs for s in SOURCES) != 1:
        raise ValueError(f"scorer {name}: needs one of {', '.join(SOURCES)} from {SCORER_INPUTS}, got {needs}")

    def wrap(fn: Callable[[ScorerInputs, ScorerParams], ScoreResult]) -> Callable:
        SCORERS[name] = Scorer(name, fn, frozenset(needs), help, **options)
        return fn

    return wrap


def get_scorer(name: str) -> Scorer:
    """The registered scorer `name`; a FingerprintError listing the others."""
    if name not in SCORERS:
        raise FingerprintError(f"unknown scorer {name!r} (choose from {', '.join(SCORERS)})")
    return SCORERS[name]


def scorer_names() -> tuple[str, ...]:
    """Every registered scorer, in registration order."""
    return tuple(SCORERS)


def untrained_scorers() -> tuple[str, ...]:
    """The scorers that do not use the trained model (safe to stack on dev scores in `compare`)."""
    return tuple(n for n, s in SCORERS.items() if not s.trained)


# ----------------------------------------------------------------------------- the scorers


@register(
    "fused",
    needs=("profile", "fusion"),
    help="trained: sign-constrained logistic fusion of the calibrated similarity profile (fingerprint.membership.fuse)",
    calibrates_model=True,
)
def _fused(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    return fused_scores(inputs.fusion, inputs.profile)


@register(
    "relation",
    needs=("features", "model", "index"),
    help="trained relation network over each real image's top-k generated neighbours",
    uses_k=True,
    default_threshold=0.5,
    saves_neighbours=True,
    calibrates_model=True,
)
def _relation(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    real, gallery = inputs.real(), inputs.gallery()
    return relation_scores(inputs.model, real, gallery, inputs.index, k=params.k, batch_size=params.batch_size)


def _pixel_result(inputs: ScorerInputs, score: np.ndarray, rows: np.ndarray) -> ScoreResult:
    real, gen = inputs.pixels["real"], inputs.pixels["generated"]
    gkeys = np.asarray(gen["key"], dtype=str)
    return ScoreResult(real["key"], score, neighbour_keys=gkeys[rows][:, None])


@register(
    "dcr",
    needs=("pixels",),
    help="pixel L2 distance to the nearest generated image, negated (distance to closest record)",
    sidecar=lambda params: {"pixel_size": params.pixel_size},
)
def _dcr(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    score, rows = baselines.dcr(inputs.pixels["real"]["image"], inputs.pixels["generated"]["image"])
    return _pixel_result(inputs, score, rows)


@register(
    "ssim",
    needs=("pixels",),
    help="max SSIM to a generated image (exact on each image's nearest candidates by pixel L2)",
    sidecar=lambda params: {"pixel_size": params.pixel_size, "ssim_candidates": params.ssim_candidates},
)
def _ssim(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    real, gen = inputs.pixels["real"]["image"], inputs.pixels["generated"]["image"]
    score, rows = similarity.ssim_max(real, gen, candidates=params.ssim_candidates or None)
    return _pixel_result(inputs, score, rows)


@register("emb_nn", needs=("features", "index"), help="embedding cosine to the nearest generated image")
def _emb_nn(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    real, gallery = inputs.real(), inputs.gallery()
    score, rows = baselines.emb_nn(real.embeddings, gallery, index=inputs.index)
    return ScoreResult(real.keys.tolist(), score, neighbour_keys=gallery.keys_at(rows)[:, None])


@register("emb_topk", needs=("features", "index"), help="mean embedding cosine over the top-k generated", uses_k=True)
def _emb_topk(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    real, gallery = inputs.real(), inputs.gallery()
    score, rows = baselines.emb_topk(real.embeddings, gallery, k=params.k, index=inputs.index)
    return ScoreResult(real.keys.tolist(), score, neighbour_keys=gallery.keys_at(rows))


@register(
    "seed_rule",
    needs=("features", "model"),
    help="the seed's rule: mean relation probability over ALL generated images (small sets only)",
    pairwise=True,
)
def _seed_rule(inputs: ScorerInputs, params: ScorerParams) -> ScoreResult:
    real, gen = inputs.split()
    return ScoreResult(real.keys.tolist(), baselines.seed_rule(inputs.model, real, gen, max_pairs=params.max_pairs))
