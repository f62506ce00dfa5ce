"""Attribution: which real subset did each generated image come from (or none)?

The question of the ImageCLEFmedical GANs 2025 subtask 2: several named real
subsets, each used to train its own generator, and a mixed pool of generated
images. The evidence is the one membership scoring already computes, turned
around: nearest real neighbours of a generated image rather than nearest
generated neighbours of a real image.

1. Retrieval. Each generated image queries each subset's real images for its k
   nearest (exact inner-product FAISS search over unit-norm embeddings, one
   index per subset, so every subset always has k candidates and no subset is
   crowded out of one global top-k by a larger or more typical one).
2. Pair score. Any "higher = closer" score of a (generated, real) pair: the
   cosine from the search (default), or a re-scoring of the k candidates with
   negated pixel distance, SSIM, or the learned difference function's pair
   probability (`rescore`); retrieval by embedding, decision by the better
   pair function, as in copy detection (Pizzi et al., SSCD, CVPR 2022).
3. Aggregation per subset: the max (nearest-neighbour evidence, as GAN-Leaks,
   Chen et al. CCS 2020: a generator that memorised one image of the subset) or
   the mean of the top m (less swayed by one chance look-alike).
4. Decision. The subset with the highest aggregate score; its score and its
   margin over the runner-up come with it. "none" when the best score is not
   above a threshold t calibrated on a null: the best aggregate score of each
   generated image against real images known to be in no subset (held-out
   reals of the same population), split into pseudo-subsets of the real
   subsets' sizes and scored with the same pair score and aggregation. t is
   the conformal (1 - alpha) quantile of these null scores (rank
   ceil((n + 1)(1 - alpha)); Lei et al. JASA 2018), so a generated image that
   owes nothing to any subset is attributed to one with probability about
   alpha. The best of several subsets is a maximum, which grows with the
   number of reals searched: with fewer null reals than subset reals (ratio
   rho < 1) the level is raised to (1 - alpha)^rho (the max of N iid scores has
   CDF F^N; approximate, as pair scores of one generated image are correlated).
   With a labelled dev pool instead, the null of an image is its best score
   over the subsets that did not make it (`null_from_truth`; rho = (S-1)/S).
   `threshold=None` forces a subset for every image (when every generated
   image is known to come from one of the subsets).

Metrics when the truth is known: scikit-learn's confusion matrix (subsets,
then "none"), accuracy, balanced accuracy, Cohen's kappa (the 2025 metric), and
the chance levels to compare accuracy with (majority share, and kappa's
expected agreement).

The stage (`run_attribute(AttributeConfig)`, `fingerprint attribute`) uses
membership scoring's own parts: the trained model's unit-norm embeddings,
`fingerprint.index` FAISS indexes (one per subset), and, by default, the
model's relation head as the pair score (`relation_pair_score`: the real
image is the query and the generated image its support, the orientation the
head was trained in).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
)

from fingerprint.config import check_fields, command_line, exists_error, fail, option
from fingerprint.distributed import seed_everything, set_threads
from fingerprint.features import Features
from fingerprint.imagesets import check_unique_keys, embed_all, members, pack_collection, train_model
from fingerprint.index import MIN_POINTS_PER_CENTROID, build_index, neighbours
from fingerprint.inference import relation_logits
from fingerprint.model_io import load_model
from fingerprint.stream import StreamConfig, load_all
from fingerprint.utils import FingerprintError, JsonlLogger, output_folder, write_json, write_text

log = logging.getLogger(__name__)

#: The label of a generated image attributed to no subset.
NONE = "none"
#: Aggregations of the k pair scores of one (generated image, subset).
AGGREGATIONS = ("max", "topm")
#: pair_score(gen_rows (P,), real_rows (P,)) -> (P,) "higher = closer" scores.
PairScore = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Evidence:
    """Per-subset neighbours of each generated image: scores and real rows (G, S, k), best first."""

    subsets: tuple[str, ...]
    scores: np.ndarray
    rows: np.ndarray


def _unit(x, what: str) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
        raise FingerprintError(
            f"attribute: {what} embeddings must be a non-empty finite 2-D array, got shape {x.shape}"
        )
    faiss.normalize_L2(x)
    return x


def _subsets(labels: np.ndarray, subsets: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(sorted(set(labels.tolist()))) if subsets is None else tuple(str(s) for s in subsets)
    if NONE in names:
        raise FingerprintError(f"attribute: {NONE!r} is reserved for 'no subset' and cannot name a subset")
    empty = [s for s in names if not (labels == s).any()]
    if empty or not names:
        raise FingerprintError(f"attribute: subsets without real images: {', '.join(empty) or '(none given)'}")
    return names


def subset_neighbours(
    gen_emb,
    real_emb,
    real_subset: Sequence[str],
    *,
    k: int = 8,
    subsets: Sequence[str] | None = None,
    index_factory: str = "Flat",
    seed: int = 0,
) -> Evidence:
    """Top-k cosine neighbours of every generated image within each subset (one FAISS index per subset).

    `real_subset[i]` names the subset of real row i; rows of other names (not
    in `subsets`) are ignored. k is capped at the smallest subset's size.
    Returned rows index `real_emb`. The indexes are `fingerprint.index`
    ones (`index_factory`, exact "Flat" by default; an IVF factory falls back
    to Flat for a subset too small to train it), and `index.neighbours`
    fills whatever an approximate index misses with exact search.
    """
    g, r = _unit(gen_emb, "generated"), _unit(real_emb, "real")
    labels = np.asarray(real_subset, dtype=str)
    if len(labels) != len(r) or g.shape[1] != r.shape[1]:
        raise FingerprintError(
            f"attribute: {len(labels)} subset labels for {len(r)} reals, dims {g.shape[1]} vs {r.shape[1]}"
        )
    names = _subsets(labels, subsets)
    members = [np.flatnonzero(labels == s) for s in names]
    k = min(int(k), *(len(m) for m in members))
    if k < 1:
        raise FingerprintError(f"attribute: k must be >= 1, got {k}")
    scores = np.empty((len(g), len(names), k), dtype=np.float32)
    rows = np.empty((len(g), len(names), k), dtype=np.int64)
    for j, idx in enumerate(members):
        factory = index_factory if len(idx) >= MIN_POINTS_PER_CENTROID else "Flat"
        index = build_index(r[idx], factory, seed=seed)
        scores[:, j], ids = neighbours(g, r[idx], index, k=k)
        rows[:, j] = idx[ids]
    return Evidence(names, scores, rows)


def rescore(evidence: Evidence, pair_score: PairScore) -> Evidence:
    """The same candidates scored by another pair function (higher = closer), re-sorted best first."""
    gen_rows = np.broadcast_to(np.arange(len(evidence.rows))[:, None, None], evidence.rows.shape)
    s = np.asarray(pair_score(gen_rows.reshape(-1), evidence.rows.reshape(-1)), dtype=np.float64)
    if s.shape != (evidence.rows.size,) or not np.isfinite(s).all():
        raise FingerprintError(
            f"attribute: the pair score returned shape {s.shape} or non-finite values for {evidence.rows.size} pairs"
        )
    s = s.reshape(evidence.rows.shape)
    order = np.argsort(-s, axis=-1, kind="stable")
    return replace(evidence, scores=np.take_along_axis(s, order, -1), rows=np.take_along_axis(evidence.rows, order, -1))


def aggregate(scores: np.ndarray, how: str = "max", m: int = 3) -> np.ndarray:
    """(G, S, k) pair scores -> (G, S) subset scores: the max, or the mean of the top m."""
    if how not in AGGREGATIONS:
        raise FingerprintError(f"attribute: unknown aggregation {how!r} (choose from {', '.join(AGGREGATIONS)})")
    scores = np.asarray(scores, dtype=np.float64)
    if how == "max":
        return scores.max(axis=-1)
    if not 1 <= m <= scores.shape[-1]:
        raise FingerprintError(f"attribute: top-m mean needs 1 <= m <= k = {scores.shape[-1]}, got m={m}")
    return -np.sort(-scores, axis=-1)[..., :m].mean(axis=-1)


def null_best_scores(
    gen_emb,
    null_emb,
    subset_sizes: Sequence[int],
    *,
    k: int = 8,
    how: str = "max",
    m: int = 3,
    pair_score: PairScore | None = None,
    seed: int = 0,
    index_factory: str = "Flat",
) -> tuple[np.ndarray, float]:
    """(best pseudo-subset score of each generated image against reals in no subset, size ratio rho).

    The null reals are split at random (seeded) into pseudo-subsets of the real
    subsets' sizes, scaled down when there are fewer null reals than subset
    reals (rho = null reals used / subset reals, else 1). `pair_score` gets rows
    of `null_emb`, like `rescore`.
    """
    sizes = np.asarray(subset_sizes, dtype=np.int64)
    n0, total = len(null_emb), int(sizes.sum())
    scale = min(1.0, n0 / total)
    take = np.maximum(1, np.floor(sizes * scale).astype(np.int64))
    if take.sum() > n0:
        raise FingerprintError(f"attribute: {n0} null reals cannot form {len(sizes)} pseudo-subsets")
    perm = np.random.default_rng(seed).permutation(n0)
    labels = np.full(n0, "", dtype=object)
    names = [f"null{j}" for j in range(len(sizes))]
    for name, part in zip(names, np.split(perm[: take.sum()], np.cumsum(take)[:-1])):
        labels[part] = name
    ev = subset_neighbours(gen_emb, null_emb, labels.astype(str), k=k, subsets=names, index_factory=index_factory)
    if pair_score is not None:
        ev = rescore(ev, pair_score)
    return aggregate(ev.scores, how, m).max(axis=1), float(take.sum() / total)


def null_from_truth(subset_scores: np.ndarray, source: Sequence[int]) -> tuple[np.ndarray, float]:
    """Null from a labelled pool: each image's best score over the subsets that did not make it; rho = (S-1)/S."""
    s = np.asarray(subset_scores, dtype=np.float64)
    src = np.asarray(source, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] < 2 or src.shape != (len(s),) or ((src < 0) | (src >= s.shape[1])).any():
        raise FingerprintError("attribute: null_from_truth needs (G, S>=2) scores and one source column per image")
    others = s.copy()
    others[np.arange(len(s)), src] = -np.inf
    return others.max(axis=1), (s.shape[1] - 1) / s.shape[1]


def none_threshold(null_best: np.ndarray, alpha: float = 0.05, size_ratio: float = 1.0) -> float:
    """The conformal (1 - alpha)^size_ratio quantile of null best scores: above it, a subset is named."""
    x = np.sort(np.asarray(null_best, dtype=np.float64))
    if x.ndim != 1 or len(x) == 0 or not np.isfinite(x).all():
        raise FingerprintError("attribute: null scores must be a non-empty finite 1-D array")
    if not 0 < alpha < 1 or not 0 < size_ratio <= 1:
        raise FingerprintError(f"attribute: need 0 < alpha < 1 and 0 < size_ratio <= 1, got {alpha}, {size_ratio}")
    level = (1.0 - alpha) ** size_ratio
    rank = math.ceil((len(x) + 1) * level)
    return float(x[min(rank, len(x)) - 1])


@dataclass(frozen=True)
class Attribution:
    """Per generated image: label (a subset or "none"), best subset score, margin over the runner-up."""

    labels: np.ndarray
    scores: np.ndarray
    margins: np.ndarray
    subset_scores: np.ndarray
    subsets: tuple[str, ...]
    threshold: float | None
    evidence: Evidence | None = None  # the neighbours the scores came from (attribute_embeddings)


def attribute(subset_scores: np.ndarray, subsets: Sequence[str], *, threshold: float | None = None) -> Attribution:
    """The best subset of each generated image, or "none" where its score is not above `threshold`."""
    s = np.asarray(subset_scores, dtype=np.float64)
    names = tuple(str(x) for x in subsets)
    if s.ndim != 2 or s.shape[1] != len(names) or len(s) == 0:
        raise FingerprintError(f"attribute: subset scores of shape {s.shape} for {len(names)} subsets")
    best = s.argmax(axis=1)
    top = s[np.arange(len(s)), best]
    second = np.sort(s, axis=1)[:, -2] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    labels = np.asarray(names, dtype=object)[best]
    if threshold is not None:
        labels[top <= threshold] = NONE
    return Attribution(labels.astype(str), top, top - second, s, names, threshold)


def attribute_embeddings(
    gen_emb,
    real_emb,
    real_subset: Sequence[str],
    *,
    null_emb=None,
    k: int = 8,
    how: str = "max",
    m: int = 3,
    alpha: float = 0.05,
    pair_score: PairScore | None = None,
    null_pair_score: PairScore | None = None,
    seed: int = 0,
    index_factory: str = "Flat",
) -> Attribution:
    """The whole rule on embeddings: retrieval, optional re-scoring, aggregation, null threshold (None: no "none")."""
    ev = subset_neighbours(gen_emb, real_emb, real_subset, k=k, index_factory=index_factory, seed=seed)
    if pair_score is not None:
        ev = rescore(ev, pair_score)
    scores = aggregate(ev.scores, how, m)
    threshold = None
    if null_emb is not None:
        labels = np.asarray(real_subset, dtype=str)
        sizes = [int((labels == s).sum()) for s in ev.subsets]
        null, rho = null_best_scores(
            gen_emb, null_emb, sizes, k=ev.scores.shape[-1], how=how, m=m, pair_score=null_pair_score, seed=seed,
            index_factory=index_factory,
        )  # fmt: skip
        threshold = none_threshold(null, alpha, rho)
    return replace(attribute(scores, ev.subsets, threshold=threshold), evidence=ev)


def attribution_rows(ids: Sequence[str], result: Attribution) -> list[tuple[str, str, float]]:
    """(image id, subset label or "none", score) per generated image, in the given order (subtask-2 style)."""
    if len(ids) != len(result.labels):
        raise FingerprintError(f"attribute: {len(ids)} ids for {len(result.labels)} attributed images")
    return [(str(i), str(lab), float(s)) for i, lab, s in zip(ids, result.labels, result.scores)]


def attribution_metrics(truth: Sequence[str], predicted: Sequence[str], subsets: Sequence[str]) -> dict:
    """Confusion matrix (rows truth, columns predicted; subsets then "none"), accuracy, kappa, chance levels."""
    t, p = np.asarray(truth, dtype=str), np.asarray(predicted, dtype=str)
    labels = [str(s) for s in subsets] + [NONE]
    unknown = sorted((set(t.tolist()) | set(p.tolist())) - set(labels))
    if t.shape != p.shape or len(t) == 0 or unknown:
        raise FingerprintError(
            f"attribute: {len(t)} truths for {len(p)} predictions; unknown labels: {', '.join(unknown)}"
        )
    share_t = np.array([(t == c).mean() for c in labels])
    share_p = np.array([(p == c).mean() for c in labels])
    cm = confusion_matrix(t, p, labels=labels)
    present = cm.sum(axis=1) > 0
    return {
        "labels": labels,
        "confusion_matrix": cm.tolist(),
        "accuracy": float(accuracy_score(t, p)),
        "balanced_accuracy": float(balanced_accuracy_score(t, p)) if present.sum() > 1 else None,
        "kappa": float(cohen_kappa_score(t, p, labels=labels)),
        "chance_majority": float(share_t.max()),
        "chance_expected": float(share_t @ share_p),
        "n": len(t),
    }


# -- the attribute stage (`fingerprint attribute`) ----------------------------------------------------

#: pair scores of a (generated, real) candidate pair, higher = closer
PAIR_SCORES = ("relation", "cosine", "pixel")
FORMAT = "fingerprint-attribution/1"
#: generated images per subset shown in the report's example strips
N_EXAMPLES = 4


@dataclass(kw_only=True)
class AttributeConfig:
    """Options of the attribute stage (`fingerprint attribute`)."""

    SECTION = "attribute"

    subsets: tuple[str, ...] = option(
        help="real subsets as NAME=DIR (a folder of images or a shard folder), comma-separated; or one DIR whose "
        "sub-folders are the subsets"
    )
    generated: Path = option(help="the generated images to attribute: a folder or a shard folder")
    out: Path = option(help="folder to write attribution.csv, attribution.json and the report into")
    null: Path | None = option(
        None,
        help="real images of the same population in no subset (held out) for the 'none' threshold; without it "
        "every generated image is given a subset",
    )
    truth: Path | None = option(None, help="CSV figure_id,subset of the generated images: confusion matrix, accuracy")
    model: Path | None = option(None, help="trained model folder (embeddings, FAISS retrieval, relation head)")
    run: Path | None = option(None, help="run folder of 'fingerprint run' (its model)")
    dev: Path | None = option(None, help="2023 dev folder to train a model on when none is given")
    pair_score: str = option(
        "relation",
        choices=PAIR_SCORES,
        help="how a retrieved (generated, real) pair is scored: relation (the model's learned difference function, "
        "as in membership scoring), cosine (embeddings), pixel (negated pixel L2)",
    )
    k: int = option(8, min=1, help="real neighbours retrieved per generated image and subset")
    agg: str = option("max", choices=AGGREGATIONS, help="per subset: the best pair, or the mean of the top m")
    m: int = option(3, min=1, help="topm: pairs averaged")
    alpha: float = option(0.05, help="share of generated images owing nothing to any subset that get one anyway")
    index_factory: str = option("Flat", help="FAISS index per subset (Flat = exact)")
    batch_size: int = option(64, min=1, help="images per forward pass")
    pixel_size: int = option(64, min=8, help="pixel pair score: side images are compared at")
    image_size: int = option(256, min=8, help="side images are packed at")
    model_image_size: int | None = option(None, min=32, help="model input side when a model is trained here")
    epochs: int | None = option(None, min=1, help="training epochs when a model is trained here")
    train_config: Path | None = option(None, help="TOML/YAML train config when a model is trained here")
    report: bool = option(True, help="write report.html with the attribution section")
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads")
    seed: int = option(0, help="seed of the null split and of training")
    force: bool = option(False, help="replace an existing attribution in the output folder")

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 < self.alpha < 1:
            raise fail(self, "alpha", f"must be between 0 and 1, got {self.alpha}")
        if self.agg == "topm" and self.m > self.k:
            raise fail(self, "m", f"must be at most attribute.k={self.k}, got {self.m}")

    def subset_paths(self) -> dict[str, Path]:
        """{name: folder} from `subsets`: NAME=DIR items, or one folder's sub-folders."""
        if len(self.subsets) == 1 and "=" not in self.subsets[0]:
            root = Path(self.subsets[0])
            if not root.is_dir():
                raise FingerprintError(f"{root}: subsets folder not found")
            found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        else:
            bad = [s for s in self.subsets if "=" not in s]
            if bad:
                raise fail(self, "subsets", f"items must be NAME=DIR, got {bad[0]!r}")
            found = {}
            for item in self.subsets:
                name, path = item.split("=", 1)
                if name.strip() in found:
                    raise fail(self, "subsets", f"names subset {name.strip()!r} twice")
                found[name.strip()] = Path(path)
        bad = [n for n in found if n == NONE or not n or any(c in n for c in ".,/ ")]
        if bad or len(found) < 2:
            raise fail(self, "subsets", f"needs >= 2 subsets named without '.,/ ' and not {NONE!r}, got {list(found)}")
        return found


def run_attribute(cfg: AttributeConfig) -> dict:
    """Attribute every generated image to the subset it most likely came from, or "none"; write the outputs."""
    out = Path(cfg.out)
    if (out / "attribution.json").exists() and not cfg.force:
        raise exists_error(cfg, out / "attribution.json")
    with output_folder(out):
        seed_everything(cfg.seed)
        set_threads(cfg.threads)
        t0 = time.perf_counter()
        data = _attribution_data(cfg, out)
        pair, null_pair = _pair_functions(cfg, data)
        result = attribute_embeddings(
            data["gen"].embeddings, data["real"].embeddings, data["real_subset"],
            null_emb=None if data["null"] is None else data["null"].embeddings, k=cfg.k, how=cfg.agg, m=cfg.m,
            alpha=cfg.alpha, pair_score=pair, null_pair_score=null_pair, seed=cfg.seed, index_factory=cfg.index_factory,
        )  # fmt: skip
        ids = data["gen"].keys.tolist()
        rows = attribution_rows(ids, result)
        lines = "".join(f"{i},{s},{v!r}\n" for i, s, v in rows)
        write_text(out / "attribution.csv", "figure_id,subset,score\n" + lines)
        summary = attribution_summary(cfg, data, result)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "attribution.json", summary)
        JsonlLogger(out / "log.jsonl").log(stage="attribute", seconds=summary["seconds"], n=len(ids))
        if cfg.report:
            from fingerprint.report import ReportConfig, run_report

            run_report(ReportConfig(run_dir=out, seed=cfg.seed, force=True))
        return summary


def _attribution_data(cfg: AttributeConfig, out: Path) -> dict:
    """Pack, (train,) embed: the generated, subset and null rows, with each subset's shard folder."""
    kw = {"image_size": cfg.image_size, "seed": cfg.seed}
    paths = cfg.subset_paths()
    shards = {n: pack_collection(p, out / "shards" / f"subset-{n}", role="real", label="unknown", **kw)
              for n, p in paths.items()}  # fmt: skip
    gen_shards = pack_collection(cfg.generated, out / "shards" / "generated", role="generated", label="unknown", **kw)
    null_shards = None
    if cfg.null is not None:
        null_shards = pack_collection(cfg.null, out / "shards" / "null", role="real", label="unknown", **kw)
    groups = {n: members(s) for n, s in shards.items()} | ({"null": members(null_shards)} if null_shards else {})
    check_unique_keys(groups, gen_shards)
    model = _attribution_model(cfg, out)
    folders = [*shards.values(), gen_shards, *([null_shards] if null_shards else [])]
    relation = cfg.pair_score == "relation"
    feats = embed_all(model, folders, out, fmaps=relation, batch_size=cfg.batch_size, seed=cfg.seed,
                      threads=cfg.threads)  # fmt: skip
    real_parts = [feats[s].select(role="real") for s in shards.values()]
    real = _concat(real_parts)
    return {
        "subsets": list(paths), "shards": shards, "gen_shards": gen_shards, "null_shards": null_shards,
        "model": model, "real": real, "real_subset": np.repeat(list(paths), [len(p) for p in real_parts]),
        "gen": feats[gen_shards].select(role="generated"),
        "null": None if null_shards is None else feats[null_shards].select(role="real"),
    }  # fmt: skip


def _concat(parts: list[Features]) -> Features:
    """Rows of several Features, in order (keys were checked unique across them)."""
    return Features(
        np.concatenate([p.keys for p in parts]),
        np.concatenate([p.roles for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.embeddings for p in parts]),
        None if parts[0].fmaps is None else np.concatenate([p.fmaps for p in parts]),
        dict(parts[0].meta),
    )


def _attribution_model(cfg: AttributeConfig, out: Path) -> Path:
    if cfg.model is not None:
        return Path(cfg.model)
    if cfg.run is not None:
        return Path(cfg.run) / "model"
    if cfg.dev is None:
        raise fail(cfg, "model", "must be given (or attribute.run, or attribute.dev to train one)")
    return train_model(
        Path(cfg.dev), out / "model", out, train_config=cfg.train_config, image_size=cfg.image_size, seed=cfg.seed,
        threads=cfg.threads, epochs=cfg.epochs, model_image_size=cfg.model_image_size,
    )  # fmt: skip


class _RowView:
    """`maps[rows[s]]` for slices `s`: a pair's query maps without materialising every pair's map at once."""

    def __init__(self, maps: np.ndarray, rows: np.ndarray):
        self.maps, self.rows = maps, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.maps[self.rows[s]]


def relation_pair_score(model, gen_fmaps: np.ndarray, real_fmaps: np.ndarray, *, batch_size: int = 256) -> PairScore:
    """The learned difference function on (generated, real) pairs: the relation head's logit.

    Oriented as it was trained and as membership scoring uses it: the REAL
    image is the query and the generated image its one support.
    """

    def score(gen_rows: np.ndarray, real_rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(gen_rows, dtype=np.int64)[:, None]
        logits = relation_logits(model, _RowView(real_fmaps, real_rows), gen_fmaps, rows, batch_size=batch_size)
        return logits[:, 0].astype(np.float64)

    return score


def pixel_pair_score(gen_px: np.ndarray, real_px: np.ndarray, chunk: int = 4096) -> PairScore:
    """Negated pixel L2 between a generated and a real image (rows of flattened pixels in [0, 1])."""

    def score(gen_rows: np.ndarray, real_rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(gen_rows))
        for i in range(0, len(gen_rows), chunk):
            g, r = gen_px[gen_rows[i : i + chunk]], real_px[real_rows[i : i + chunk]]
            out[i : i + chunk] = -np.linalg.norm(g - r, axis=1)
        return out

    return score


def _pixel_rows(shards: Path, role: str, keys: Sequence[str], size: int) -> np.ndarray:
    batch = load_all(shards, StreamConfig(roles=(role,), image_size=size))
    pos = {k: i for i, k in enumerate(batch["key"])}
    return batch["image"][[pos[k] for k in keys]].reshape(len(keys), -1).numpy().astype(np.float32)


def _pair_functions(cfg: AttributeConfig, data: dict) -> tuple[PairScore | None, PairScore | None]:
    """(pair score over generated x subset rows, the same over generated x null rows) for `cfg.pair_score`."""
    gen, real, null = data["gen"], data["real"], data["null"]
    if cfg.pair_score == "cosine":
        return None, None
    if cfg.pair_score == "relation":
        model, _ = load_model(data["model"])
        pair = relation_pair_score(model, gen.fmaps, real.fmaps, batch_size=4 * cfg.batch_size)
        return pair, None if null is None else relation_pair_score(model, gen.fmaps, null.fmaps)
    gen_px = _pixel_rows(data["gen_shards"], "generated", gen.keys.tolist(), cfg.pixel_size)
    real_px = np.concatenate(
        [_pixel_rows(s, "real", real.keys[data["real_subset"] == n].tolist(), cfg.pixel_size)
         for n, s in data["shards"].items()]
    )  # fmt: skip
    null_pair = None
    if null is not None:
        null_pair = pixel_pair_score(
            gen_px, _pixel_rows(data["null_shards"], "real", null.keys.tolist(), cfg.pixel_size)
        )
    return pixel_pair_score(gen_px, real_px), null_pair


def read_subset_truth(path: Path, ids: Sequence[str], subsets: Sequence[str]) -> list[str]:
    """The truth (subset name or "none") of each generated id from a CSV figure_id,subset."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: truth file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"figure_id", "subset"} <= set(reader.fieldnames):
            raise FingerprintError(f"{path}: line 1: expected a header with figure_id,subset")
        truth = {row["figure_id"].strip(): row["subset"].strip() for row in reader}
    missing = [i for i in ids if i not in truth]
    if missing:
        raise FingerprintError(f"{path}: no truth for {len(missing)} generated image(s) (first: {missing[0]})")
    unknown = sorted({truth[i] for i in ids} - {*subsets, NONE})
    if unknown:
        raise FingerprintError(f"{path}: unknown subset label(s) {', '.join(unknown)} (known: {', '.join(subsets)})")
    return [truth[i] for i in ids]


def attribution_summary(cfg: AttributeConfig, data: dict, result: Attribution) -> dict:
    """The content of attribution.json: settings, the "none" threshold, counts, examples and (with truth) metrics."""
    ids = data["gen"].keys.tolist()
    ev = result.evidence
    examples = {}
    for j, name in enumerate(result.subsets):
        mine = np.flatnonzero(result.labels == name)
        top = mine[np.argsort(-result.scores[mine], kind="stable")[:N_EXAMPLES]]
        examples[name] = [
            {"generated": ids[i], "real": str(data["real"].keys[ev.rows[i, j, 0]]), "score": float(result.scores[i])}
            for i in top
        ]
    labels, counts = np.unique(result.labels, return_counts=True)
    summary = {
        "format": FORMAT,
        "subsets": list(result.subsets),
        "sizes": {n: int(np.sum(data["real_subset"] == n)) for n in result.subsets},
        "n_generated": len(ids),
        "n_null": 0 if data["null"] is None else len(data["null"]),
        "pair_score": cfg.pair_score,
        "retrieval": f"FAISS per subset ({cfg.index_factory}) over unit-norm embeddings, top {ev.scores.shape[-1]}",
        "k": int(ev.scores.shape[-1]), "agg": cfg.agg, "m": cfg.m if cfg.agg == "topm" else None, "alpha": cfg.alpha,
        "threshold": result.threshold,
        "none_rule": "forced (no null reals given)" if result.threshold is None else (
            "conformal (1 - alpha)^rho quantile of the best pseudo-subset score against the null reals"),
        "counts": {str(lab): int(n) for lab, n in zip(labels, counts)},
        "examples": examples,
        "shards": {"generated": str(data["gen_shards"]), "subsets": {n: str(s) for n, s in data["shards"].items()}},
        "model": str(data["model"]),
        "seed": cfg.seed,
        "command": command_line(cfg),
    }  # fmt: skip
    if cfg.truth is not None:
        truth = read_subset_truth(cfg.truth, ids, result.subsets)
        summary["metrics"] = attribution_metrics(truth, result.labels, result.subsets)
        summary["truth"] = str(cfg.truth)
    return summary
