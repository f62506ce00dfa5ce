"""Membership scores: relation-head scores over retrieved neighbours, and score files.

The trained scorer ("relation") takes, for each real image, its top-k
generated neighbours from the FAISS index, runs the relation head on the k
(real, generated) feature-map pairs, and pools the k pair logits into one
membership logit; the score is its sigmoid (probability of "used"). The
plain retrieval components (nearest and mean top-k cosine) come along.
Score files (`key,score,label`, higher = more likely used) are the common
currency of every scorer, read by `evaluate`, `compare` and `report`.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from fingerprint.index import build_index, exact_search, search
from fingerprint.utils import FingerprintError, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

SCORE_HEADER = ["key", "score", "label"]


class ScoreTable(NamedTuple):
    """A score file in memory: keys (list[str]), scores (float64), labels (int64 0/1)."""

    keys: list[str]
    scores: np.ndarray
    labels: np.ndarray


def score_meta_path(path: str | Path) -> Path:
    """The JSON sidecar of a score file (threshold, rule, scorer): `scores/x.csv` -> `scores/x.json`."""
    return Path(path).with_suffix(".json")


def write_scores(
    path: str | Path,
    keys: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    meta: dict | None = None,
) -> Path:
    """Write `key,score,label` rows atomically (scores at full float precision).

    `meta` (e.g. {"scorer", "threshold", "rule"}) goes to the JSON sidecar
    beside the file, which `evaluate` reads for the threshold.
    """
    path = Path(path)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if not (len(keys) == len(scores) == len(labels)):
        raise FingerprintError(f"{path}: {len(keys)} keys, {len(scores)} scores, {len(labels)} labels")
    if len(set(keys)) != len(keys):
        raise FingerprintError(f"{path}: a key appears more than once")
    if not np.isfinite(scores).all():
        raise FingerprintError(f"{path}: scores contain NaN or infinity")
    if not np.isin(labels, (0, 1)).all():
        raise FingerprintError(f"{path}: labels must be 0 or 1")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(SCORE_HEADER)
            for k, s, y in zip(keys, scores, labels):
                w.writerow([k, repr(float(s)), int(y)])
    if meta is not None:
        write_json(score_meta_path(path), meta)
    return path


def read_scores(path: str | Path) -> ScoreTable:
    """Read a score file; a one-line FingerprintError naming the file and line for bad input."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: score file not found")
    keys: list[str] = []
    scores: list[float] = []
    labels: list[int] = []
    seen: set[str] = set()
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != SCORE_HEADER:
                raise FingerprintError(f"{path}: line 1: expected header 'key,score,label'")
            for lineno, row in enumerate(reader, start=2):
                if len(row) != 3:
                    raise FingerprintError(f"{path}: line {lineno}: expected 3 fields, got {len(row)}")
                key, s, y = (c.strip() for c in row)
                try:
                    value = float(s)
                except ValueError:
                    raise FingerprintError(f"{path}: line {lineno}: score {s!r} is not a number") from None
                if not math.isfinite(value):
                    raise FingerprintError(f"{path}: line {lineno}: score {s!r} is not finite")
                if y not in ("0", "1"):
                    raise FingerprintError(f"{path}: line {lineno}: label must be 0 or 1, got {y!r}")
                if key in seen:
                    raise FingerprintError(f"{path}: line {lineno}: key {key!r} appears twice")
                seen.add(key)
                keys.append(key)
                scores.append(value)
                labels.append(int(y))
    except UnicodeDecodeError:
        raise FingerprintError(f"{path}: not UTF-8 text") from None
    if not keys:
        raise FingerprintError(f"{path}: score file has no rows")
    return ScoreTable(keys, np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64))


def read_score_meta(path: str | Path) -> dict | None:
    """The sidecar of a score file, or None when there is none."""
    meta = score_meta_path(path)
    return read_json(meta) if meta.is_file() else None


# -- retrieval + relation scoring -----------------------------------------------------------------


@dataclass
class ScoreResult:
    """Scores of real images (keys in = keys out), with what each score was made from."""

    keys: list[str]
    score: np.ndarray  # (N,) float64, higher = more likely used
    components: dict[str, np.ndarray] = field(default_factory=dict)  # plain scores, e.g. nn_sim, mean_topk_sim
    neighbour_keys: np.ndarray | None = None  # (N, k) str, best first
    neighbour_sims: np.ndarray | None = None  # (N, k) float32 cosine
    pair_scores: np.ndarray | None = None  # (N, k) float32 relation probability

    def save_neighbours(self, path: str | Path) -> Path:
        """scores/neighbours.npz, no pickle, atomic.

        Arrays: keys, neighbour_keys, neighbour_sims, pair_scores (when known),
        and each component (e.g. nn_sim, mean_topk_sim) under its own name.
        """
        if self.neighbour_keys is None or self.neighbour_sims is None:
            raise FingerprintError(f"{path}: this scorer has no neighbours to save")
        arrays = {
            "keys": np.asarray(self.keys, dtype=str),
            "neighbour_keys": np.asarray(self.neighbour_keys, dtype=str),
            "neighbour_sims": np.asarray(self.neighbour_sims, dtype=np.float32),
        }
        if self.pair_scores is not None:
            arrays["pair_scores"] = np.asarray(self.pair_scores, dtype=np.float32)
        for name, values in self.components.items():
            if name in arrays:
                raise FingerprintError(f"{path}: component name {name!r} clashes with an array")
            arrays[name] = np.asarray(values, dtype=np.float64)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return Path(path)


def neighbours(real_emb: np.ndarray, gen_emb: np.ndarray, index=None, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k generated neighbours of each real embedding: (cosine sims (R,k) float32, gen rows (R,k) int64).

    `index`: None (exact IndexFlatIP over gen_emb), a faiss index whose ids are
    rows of gen_emb, or `(index, keys)` as load_index returns it together with
    `gen_keys` (use `resolve_index`). Rows an approximate index could not fill
    (id -1) are filled by exact search, so every row has k neighbours.
    """
    if len(gen_emb) == 0:
        raise FingerprintError("score: no generated images to compare with")
    k = min(int(k), len(gen_emb))
    index, id_rows = index if isinstance(index, tuple) else (index, None)
    if index is None:
        index = build_index(gen_emb, "Flat")
    if index.ntotal != len(gen_emb):
        raise FingerprintError(
            f"score: the index holds {index.ntotal} vectors, the features {len(gen_emb)} generated images"
        )
    sims, ids = search(index, real_emb, k)
    bad = (ids < 0).any(axis=1)
    rows = np.where(ids >= 0, ids if id_rows is None else id_rows[np.maximum(ids, 0)], -1)
    if bad.any():
        log.info(
            "score: %d queries got fewer than %d neighbours from the index; using exact search for them",
            int(bad.sum()),
            k,
        )
        sims[bad], rows[bad] = exact_search(gen_emb, real_emb[bad], k)
    return sims, rows


def resolve_index(index, index_keys: Sequence[str] | None, gen_keys: Sequence[str], *, source: str = "index"):
    """What `neighbours` takes: the index alone (ids are gen rows) or (index, id -> gen row) from saved keys."""
    if index is None or index_keys is None:
        return index
    return index, index_rows(index_keys, gen_keys, source=source)


def index_rows(index_keys: Sequence[str], gen_keys: Sequence[str], *, source: str = "index") -> np.ndarray:
    """Positions in gen_keys of each index key (so index ids can be mapped to feature rows)."""
    pos = {k: i for i, k in enumerate(gen_keys)}
    missing = [k for k in index_keys if k not in pos]
    if missing:
        raise FingerprintError(
            f"{source}: {len(missing)} indexed key(s) not among the generated features (first: {', '.join(missing[:3])})"
        )
    if len(index_keys) != len(gen_keys):
        raise FingerprintError(
            f"{source}: indexes {len(index_keys)} images, the features hold {len(gen_keys)} generated"
        )
    return np.array([pos[k] for k in index_keys], dtype=np.int64)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _check_fmaps(model, feats, what: str) -> None:
    if feats.fmaps is None:
        raise FingerprintError(
            f"score: the {what} features have no feature maps (re-run 'fingerprint embed' with --fmaps)"
        )
    if feats.fmaps.shape[1] != model.channels:
        raise FingerprintError(
            f"score: the {what} feature maps have {feats.fmaps.shape[1]} channels, the model's relation head wants "
            f"{model.channels} (features from another model?)"
        )


def pair_logits(
    model, q_fmaps: np.ndarray, s_fmaps: np.ndarray, rows: np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """Relation logits (Q,K) of each query map with the support maps `s_fmaps[rows]` (rows (Q,K)), batched over queries."""
    device = _model_device(model)
    dtype = next(model.parameters()).dtype
    out = np.empty(rows.shape, dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            q = torch.from_numpy(np.asarray(q_fmaps[i : i + batch_size])).to(device, dtype)
            s = torch.from_numpy(np.asarray(s_fmaps[rows[i : i + batch_size]])).to(device, dtype)
            out[i : i + batch_size] = model.relate(q, s).float().cpu().numpy()
    return out


def relation_scores(
    model, real, gen, index=None, *, k: int = 16, batch_size: int = 64, index_keys: Sequence[str] | None = None
) -> ScoreResult:
    """The trained scorer: relation head on each real image's top-k generated neighbours, pooled.

    `real`/`gen` are Features with fmaps (real rows are scored, in their order);
    `index` is None (exact search) or a faiss index over gen's embeddings, whose
    ids are gen rows unless `index_keys` (the saved index's keys) say otherwise. score = sigmoid(model.pool(pair logits)).
    Components: `nn_sim` (cosine to the nearest generated image) and
    `mean_topk_sim` (mean cosine over the k).
    """
    _check_fmaps(model, real, "real")
    _check_fmaps(model, gen, "generated")
    sims, rows = neighbours(real.embeddings, gen.embeddings, resolve_index(index, index_keys, gen.keys.tolist()), k=k)
    logits = pair_logits(model, real.fmaps, gen.fmaps, rows, batch_size=batch_size)
    with torch.inference_mode():
        pooled = model.pool(torch.from_numpy(logits).to(_model_device(model))).float().cpu()
    score = torch.sigmoid(pooled).double().numpy()
    return ScoreResult(
        keys=real.keys.tolist(),
        score=score,
        components={"nn_sim": sims[:, 0].astype(np.float64), "mean_topk_sim": sims.mean(axis=1).astype(np.float64)},
        neighbour_keys=gen.keys[rows],
        neighbour_sims=sims,
        pair_scores=(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32),
    )


def membership_labels(labels: Sequence[str], *, source: str = "calibration set") -> np.ndarray:
    """used -> 1, not_used -> 0; a clear error for unknown labels."""
    labels = np.asarray(labels, dtype=str)
    bad = sorted(set(labels.tolist()) - {"used", "not_used"})
    if bad:
        raise FingerprintError(f"{source}: real images must be labelled used/not_used, found {', '.join(bad)}")
    return (labels == "used").astype(np.int64)


def apply_threshold(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Predicted labels: 1 (used) where score >= threshold."""
    return (np.asarray(scores) >= threshold).astype(np.int64)


def store_calibration(model_dir: str | Path, model, meta: dict, calibration: dict) -> dict:
    """Save `calibration` as model.json's "calibration" through models.save_model (weights unchanged)."""
    from fingerprint.models import save_model

    reserved = {"format", "config", "sha256", "n_params", "weights_file"}
    extra = {k: v for k, v in meta.items() if k not in reserved}
    extra["calibration"] = calibration
    save_model(model, model_dir, extra=extra)
    return {**meta, "calibration": calibration}
