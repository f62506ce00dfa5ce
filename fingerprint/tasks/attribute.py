"""Attribution: which real subset did each generated image come from (or none)?

The question of the ImageCLEFmedical GANs 2025 subtask 2: several named real
subsets, each used to train its own generator, and a mixed pool of generated
images. How the evidence is retrieved, scored, aggregated and decided (and the
metrics) is `fingerprint.tasks.attribute_stats`.

The stage (`run_attribute(AttributeConfig)`, `fingerprint attribute`) uses
membership scoring's own parts. By default the evidence is the calibrated
profile's pixel spaces (`profile_pair_score`: each generated image's nearest
reals per subset by normalised pixels at 32 px, each pair scored by -log L2
distance summed over px64, pn32 and px16; no model). Otherwise a trained
model's unit-norm embeddings retrieve (`fingerprint.embedding.index` FAISS
indexes, one per subset) and the pair score is the model's relation head
(`relation_pair_score`: the real image is the query and the generated image
its support, the orientation the head was trained in), the cosine, or pixels.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fingerprint.core.config import check_fields, command_line, exists_error, fail, option
from fingerprint.core.distributed import seed_everything, set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import output_folder, write_json, write_text
from fingerprint.core.logs import JsonlLogger
from fingerprint.data.stream import StreamConfig, load_all
from fingerprint.embedding.features import Features
from fingerprint.embedding.inference import relation_logits
from fingerprint.embedding.model_io import load_model
from fingerprint.membership.spaces import flat
from fingerprint.report.build import ReportConfig, run_report
from fingerprint.tasks.attribute_stats import (
    AGGREGATIONS,
    NONE,
    Attribution,
    PairScore,
    attribute_embeddings,
    attribution_metrics,
    attribution_rows,
)
from fingerprint.tasks.imagesets import check_unique_keys, embed_all, members, pack_collection, train_model

log = logging.getLogger(__name__)

# -- the attribute stage (`fingerprint attribute`) ----------------------------------------------------

#: pair scores of a (generated, real) candidate pair, higher = closer
PAIR_SCORES = ("profile", "relation", "cosine", "pixel")
#: the default pair score (docs/audit.md measures them)
DEFAULT_PAIR_SCORE = "profile"
#: profile evidence: the pixel spaces of the calibrated profile, (side, per-image normalised); retrieval in the
#: normalised 32 px space (pn32), pairs scored by the sum of -log L2 distance over every space
PROFILE_SPACES = ((64, False), (32, True), (16, False))
RETRIEVAL_SPACE = (32, True)
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
        DEFAULT_PAIR_SCORE,
        choices=PAIR_SCORES,
        help="evidence for a (generated, real) pair: profile (nearest reals by normalised pixels at 32 px, scored "
        "by -log L2 distance summed over the profile's pixel spaces px64, pn32, px16; no model), relation (the "
        "model's learned difference function, as in membership scoring), cosine (embeddings), pixel (-pixel L2)",
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
        data = _profile_data(cfg, out) if cfg.pair_score == "profile" else _attribution_data(cfg, out)
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
            run_report(ReportConfig(run_dir=out, seed=cfg.seed, force=True))
        return summary


def _packed(cfg: AttributeConfig, out: Path) -> tuple[dict[str, Path], Path, Path | None]:
    """Each subset, the generated images and the null reals as shard folders (keys checked unique)."""
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
    return shards, gen_shards, null_shards


def _profile_rows(shards: Path, role: str) -> dict:
    """{"keys", "spaces": {(side, normalised): rows}} of a shard folder's images of one role (sorted by key)."""
    spaces, keys = {}, None
    for size in sorted({s for s, _ in PROFILE_SPACES} | {RETRIEVAL_SPACE[0]}):
        batch = load_all(shards, StreamConfig(roles=(role,), image_size=size))
        if not batch["key"]:
            raise FingerprintError(f"{shards}: no {role} images")
        keys = batch["key"]
        for side, normalised in {*PROFILE_SPACES, RETRIEVAL_SPACE}:
            if side == size:
                spaces[(side, normalised)] = flat(batch["image"], normalised)
    return {"keys": keys, "spaces": spaces}


def _pixel_features(rows: dict, role: str) -> Features:
    """Features whose embeddings are the retrieval space's rows."""
    n = len(rows["keys"])
    return Features(rows["keys"], [role] * n, ["unknown"] * n, rows["spaces"][RETRIEVAL_SPACE], None, {})


def _profile_data(cfg: AttributeConfig, out: Path) -> dict:
    """Pack, read pixels: the generated, subset and null rows in the profile's pixel spaces (no model)."""
    shards, gen_shards, null_shards = _packed(cfg, out)
    parts = [_profile_rows(s, "real") for s in shards.values()]
    spaces = list(parts[0]["spaces"])
    real = {"keys": [k for p in parts for k in p["keys"]],
            "spaces": {sp: np.concatenate([p["spaces"][sp] for p in parts]) for sp in spaces}}  # fmt: skip
    gen = _profile_rows(gen_shards, "generated")
    null = None if null_shards is None else _profile_rows(null_shards, "real")
    return {
        "subsets": list(shards), "shards": shards, "gen_shards": gen_shards, "null_shards": null_shards,
        "model": None, "real": _pixel_features(real, "real"),
        "real_subset": np.repeat(list(shards), [len(p["keys"]) for p in parts]),
        "gen": _pixel_features(gen, "generated"), "null": None if null is None else _pixel_features(null, "real"),
        "pixels": {"real": real["spaces"], "gen": gen["spaces"], "null": None if null is None else null["spaces"]},
    }  # fmt: skip


def _attribution_data(cfg: AttributeConfig, out: Path) -> dict:
    """Pack, (train,) embed: the generated, subset and null rows, with each subset's shard folder."""
    shards, gen_shards, null_shards = _packed(cfg, out)
    paths = cfg.subset_paths()
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


def profile_pair_score(gen_px: dict, real_px: dict, eps: float = 1e-6) -> PairScore:
    """The profile evidence of a (generated, real) pair: sum over the profile's pixel spaces of -log L2 distance
    (`{space: rows}` for the generated and the real images; the same spaces and distances as the profile)."""

    def score(gen_rows: np.ndarray, real_rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(gen_rows))
        for space in PROFILE_SPACES:
            g, r = gen_px[space][gen_rows], real_px[space][real_rows]
            out -= np.log(np.linalg.norm(g - r, axis=1).astype(np.float64) + eps)
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
    if cfg.pair_score == "profile":
        px = data["pixels"]
        null_pair = None if null is None else profile_pair_score(px["gen"], px["null"])
        return profile_pair_score(px["gen"], px["real"]), null_pair
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
        "retrieval": f"FAISS per subset ({cfg.index_factory}) over unit-norm "
        f"{'normalised 32 px pixels' if data['model'] is None else 'embeddings'}, top {ev.scores.shape[-1]}",
        "k": int(ev.scores.shape[-1]), "agg": cfg.agg, "m": cfg.m if cfg.agg == "topm" else None, "alpha": cfg.alpha,
        "threshold": result.threshold,
        "none_rule": "forced (no null reals given)" if result.threshold is None else (
            "conformal (1 - alpha)^rho quantile of the best pseudo-subset score against the null reals"),
        "counts": {str(lab): int(n) for lab, n in zip(labels, counts)},
        "examples": examples,
        "shards": {"generated": str(data["gen_shards"]), "subsets": {n: str(s) for n, s in data["shards"].items()}},
        "model": None if data["model"] is None else str(data["model"]),
        "seed": cfg.seed,
        "command": command_line(cfg),
    }  # fmt: skip
    if cfg.truth is not None:
        truth = read_subset_truth(cfg.truth, ids, result.subsets)
        summary["metrics"] = attribution_metrics(truth, result.labels, result.subsets)
        summary["truth"] = str(cfg.truth)
    return summary
