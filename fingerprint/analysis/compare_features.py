"""Per-image comparator features, built from `fingerprint embed` and `fingerprint score` outputs.

Feature sets (columns in this order):

- ``embedding``: the real image's unit-norm embedding;
- ``profile``: its top-k cosine similarities to the generated images of its
  own split (exact FAISS search), sorted descending;
- ``relation``: the relation scores of its support set (``scores/neighbours.npz``
  ``pair_scores``), sorted descending;
- ``baselines``: the scores of ``scores/<scorer>.csv`` for the chosen scorers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import label_code
from fingerprint.embedding.features import Features
from fingerprint.embedding.index import build_index, search
from fingerprint.evaluation.scorefiles import read_scores

FEATURE_SETS = ("embedding", "profile", "relation", "baselines")


@dataclass
class SplitData:
    """One split's inputs: its exported features and, optionally, its score-stage outputs.

    `features` is a `fingerprint.embedding.embed.Features` (or anything with `keys`,
    `roles`, `labels`, `embeddings` arrays); `neighbours` holds the arrays of
    `scores/neighbours.npz` (`keys`, `pair_scores`); `baselines` maps a scorer
    name to `{key: score}` from `scores/<scorer>.csv`.
    """

    features: Any
    neighbours: dict[str, np.ndarray] | None = None
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    name: str = "split"


@dataclass
class FeatureMatrix:
    """Per-real-image feature rows with their keys and labels (1 used, 0 not used, -1 unknown)."""

    keys: np.ndarray
    X: np.ndarray
    y: np.ndarray
    columns: list[str]


def feature_arrays(features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = np.asarray(features.keys).astype(str)
    roles = np.asarray(features.roles).astype(str)
    labels = np.asarray(features.labels).astype(str)
    emb = np.ascontiguousarray(np.asarray(features.embeddings, dtype=np.float32))
    if emb.ndim != 2 or not (len(keys) == len(roles) == len(labels) == len(emb)):
        raise FingerprintError("features: keys, roles, labels and embeddings must have one row per sample")
    return keys, roles, labels, emb


def load_split(
    features_path: str | Path,
    *,
    scores_dir: str | Path | None = None,
    feature_sets: Sequence[str] = ("embedding", "profile"),
    baselines: Sequence[str] = (),
    name: str | None = None,
) -> SplitData:
    """One split's features file, plus `neighbours.npz` and score CSVs from `scores_dir` where needed."""
    features_path = Path(features_path)
    if not features_path.exists():
        raise FingerprintError(f"{features_path}: features not found")
    split = SplitData(Features.load(features_path, fmaps=False), name=name or features_path.stem)
    if "relation" in feature_sets or "baselines" in feature_sets:
        if scores_dir is None:
            raise FingerprintError(f"{features_path}: relation/baselines features need the split's scores folder")
        scores_dir = Path(scores_dir)
    if "relation" in feature_sets:
        split.neighbours = read_neighbours(scores_dir / "neighbours.npz")
    if "baselines" in feature_sets:
        if not baselines:
            raise FingerprintError("the baselines feature set needs at least one baseline name")
        for b in baselines:
            split.baselines[b] = read_score_map(scores_dir / f"{b}.csv")
    return split


def read_neighbours(path: str | Path) -> dict[str, np.ndarray]:
    """Read `scores/neighbours.npz` (no pickle) into a dict of arrays; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: neighbours file not found (written by 'fingerprint score')")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise FingerprintError(f"{path}: not a readable .npz ({e})") from None
    for k in ("keys", "pair_scores"):
        if k not in data:
            raise FingerprintError(f"{path}: missing array '{k}'")
    if data["pair_scores"].ndim != 2 or len(data["pair_scores"]) != len(data["keys"]):
        raise FingerprintError(f"{path}: pair_scores must be N x k with one row per key")
    return data


def read_score_map(path: str | Path) -> dict[str, float]:
    """Read a score file (`key,score,label`) into {key: score}."""
    table = read_scores(path)
    return dict(zip(table.keys, table.scores.tolist()))


def label_codes(labels: np.ndarray) -> np.ndarray:
    """1 used, 0 not used, -1 unknown."""
    return np.array([label_code(lab) for lab in labels], dtype=int)


def profile_features(real_emb: np.ndarray, gen_emb: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Top-k cosine similarities of each real embedding to the generated ones, sorted descending (exact search)."""
    index = build_index(np.ascontiguousarray(gen_emb, dtype=np.float32), "Flat", seed=seed)
    sims, _ = search(index, np.ascontiguousarray(real_emb, dtype=np.float32), k)
    return -np.sort(-np.asarray(sims, dtype=np.float32), axis=1)


def build_features(
    split: SplitData, feature_sets: Sequence[str], *, top_k: int, baselines: Sequence[str] = (), seed: int = 0
) -> FeatureMatrix:
    """Feature rows for the real images of one split, columns in `FEATURE_SETS` order."""
    keys, roles, labels, emb = feature_arrays(split.features)
    real = roles == "real"
    if not real.any():
        raise FingerprintError(f"{split.name}: no real images in the features")
    rkeys = keys[real]
    blocks: list[np.ndarray] = []
    columns: list[str] = []
    if "embedding" in feature_sets:
        blocks.append(emb[real])
        columns += [f"emb_{i}" for i in range(emb.shape[1])]
    if "profile" in feature_sets:
        gen = roles == "generated"
        if gen.sum() < top_k:
            raise FingerprintError(
                f"{split.name}: profile features need >= {top_k} generated images (have {int(gen.sum())}); "
                "lower compare.top_k"
            )
        blocks.append(profile_features(emb[real], emb[gen], top_k, seed=seed))
        columns += [f"profile_{i}" for i in range(top_k)]
    if "relation" in feature_sets:
        if split.neighbours is None:
            raise FingerprintError(f"{split.name}: relation features need scores/neighbours.npz")
        nb_keys = np.asarray(split.neighbours["keys"]).astype(str)
        pos = {k: i for i, k in enumerate(nb_keys)}
        missing = [k for k in rkeys if k not in pos]
        if missing:
            raise FingerprintError(
                f"{split.name}: neighbours.npz lacks {len(missing)} real image(s), e.g. {missing[0]}"
            )
        ps = np.asarray(split.neighbours["pair_scores"], dtype=np.float32)[[pos[k] for k in rkeys]]
        blocks.append(-np.sort(-ps, axis=1))
        columns += [f"relation_{i}" for i in range(ps.shape[1])]
    if "baselines" in feature_sets:
        for b in baselines:
            smap = split.baselines.get(b)
            if smap is None:
                raise FingerprintError(f"{split.name}: no scores for baseline '{b}'")
            missing = [k for k in rkeys if k not in smap]
            if missing:
                raise FingerprintError(
                    f"{split.name}: scores/{b}.csv lacks {len(missing)} real image(s), e.g. {missing[0]}"
                )
            blocks.append(np.array([[smap[k]] for k in rkeys], dtype=np.float32))
            columns.append(f"baseline_{b}")
    X = np.concatenate(blocks, axis=1).astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise FingerprintError(f"{split.name}: non-finite values in the comparator features")
    return FeatureMatrix(rkeys, X, label_codes(labels[real]), columns)
