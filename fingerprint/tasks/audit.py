"""Dataset-level membership audit: "was this candidate collection used to train the generator?".

Per-image membership scores (any scorer, higher = more likely used) are pooled
over a collection into one calibrated test, an effect size, an estimate of how
many images were used, a power curve, and corrections for repeated audits; the
statistics, and why their assumptions hold, are in `fingerprint.tasks.audit_stats`.

The stage (`run_audit(AuditConfig)`, `fingerprint audit`) meets requirements
1-3 by construction: the candidate, the reference and the held-out labelled dev
images are scored by ONE call of one scorer against ONE generated pool
(`imagesets.score_together`, `imagesets.score_fused_together`), so a reference
drawn from the dev split (`reference="dev-not-used"`) is re-scored against the
audited pool, never taken from the dev split's score files; the default
scorer, `fused`, computes its calibration term (the distance to other real
images) and its standardisation once over the pooled candidate + reference,
each image left out of its own reference (`fingerprint.membership.pooled`),
so swapping candidate and reference changes no score; and an image the
scorer's model or fusion was fitted on is refused as candidate or reference,
or left out of the dev images, by content hash (`imagesets.training_hashes`,
`imagesets.fusion_hashes`). When it fits its own model or fusion, the audit
holds a seeded share of the dev split out of the fit, so those images can
serve as reference and as the labelled images of the fraction estimate.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.core.config import check_fields, command_line, exists_error, fail, option
from fingerprint.core.distributed import seed_everything, set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import output_folder, sha256_bytes, write_json, write_text
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import SPACES
from fingerprint.membership.scorers import get_scorer, scorer_names
from fingerprint.report.build import ReportConfig, run_report
from fingerprint.tasks.audit_stats import (
    CORRECTIONS,
    METHODS,
    AuditResult,
    audit,
    correct_audits,
    power_curve,
)
from fingerprint.tasks.imagesets import (
    FUSION_FILE,
    Members,
    TogetherScores,
    content_ids,
    dev_items,
    fit_dev_fusion,
    fusion_hashes,
    is_shard_folder,
    members,
    pack_collection,
    pack_items,
    score_fused_together,
    score_together,
    stratified_holdout,
    train_model,
    training_hashes,
)

log = logging.getLogger(__name__)

# -- the audit stage (`fingerprint audit`) ---------------------------------------------------------

#: `AuditConfig.reference` value: the --dev not-used images that the scorer's model never trained on
REFERENCE_FROM_DEV = "dev-not-used"
#: fewer held-out labelled dev images than this per class: the fraction is reported as a lower bound only
MIN_DEV_PER_CLASS = 5
FORMAT = "fingerprint-audit/1"

#: the audit's scorer unless told: the run file's scorer, applied to the pooled calibrated profile of the candidate
#: and the reference (docs/audit.md measures it against the others)
AUDIT_SCORER = "fused"
#: the default when no fitted fusion is available (only a relation model given with audit.model)
FALLBACK_SCORER = "relation"
#: the spaces of the fusion an audit fits on audit.dev (pixel spaces and the aligned one: no learned metric)
FIT_SPACES = ("px64", "pn32", "px16", "al64")


def audit_scorers() -> tuple[str, ...]:
    """The scorers an audit can apply: `fused` and the registered ones that read pixels or features."""
    return (AUDIT_SCORER, *(n for n in scorer_names() if "profile" not in get_scorer(n).needs))


def default_scorer(cfg: AuditConfig | None = None) -> str:
    """The scorer an audit uses unless told: `fused` whenever a fitted fusion is available (audit.model or
    audit.run holds one, or the audit fits one on audit.dev), else `relation`."""
    if cfg is None or fusion_source(cfg) is not None:
        return AUDIT_SCORER
    return FALLBACK_SCORER


def fusion_source(cfg: AuditConfig) -> Path | str | None:
    """The folder holding the fusion the audit applies, "fit" when it fits one on audit.dev, or None."""
    if cfg.model is not None:
        return Path(cfg.model) if (Path(cfg.model) / FUSION_FILE).is_file() else None
    if cfg.run is not None:
        folder = Path(cfg.run) / "model"
        return folder if (folder / FUSION_FILE).is_file() else None
    return "fit" if cfg.dev is not None else None


@dataclass(kw_only=True)
class AuditConfig:
    """Options of the audit stage (`fingerprint audit`)."""

    SECTION = "audit"

    candidate: Path = option(help="candidate collection: a folder of images or a shard folder (its real images)")
    reference: str = option(
        help="comparable real images known not to be in training: a folder, a shard folder, or "
        f"'{REFERENCE_FROM_DEV}' (the audit.dev not-used images the scorer's model did not train on)"
    )
    generated: Path = option(help="the audited model's generated images: a folder or a shard folder")
    out: Path = option(help="audit folder to write (audit.json, audit_scores.csv, shards/, features/, report)")
    scorer: str | None = option(
        None,
        choices=audit_scorers,
        help=f"membership scorer (default: {AUDIT_SCORER} when a fitted fusion is available, else {FALLBACK_SCORER})",
    )
    model: Path | None = option(
        None, help="trained model folder (fused: its fusion.json; feature scorers: its network); default: RUN/model"
    )
    run: Path | None = option(None, help="run folder of 'fingerprint run': its model, and its shards/dev as audit.dev")
    dev: Path | None = option(
        None,
        help="labelled images of the audited generator (2023 dev layout folder, or shards): held-out ones give the "
        "fraction used; without a model, a model is trained on the rest",
    )
    holdout: float = option(
        0.5, min=0, help="when the audit trains its model on audit.dev: share of used and not-used images held out"
    )
    alpha: float = option(0.01, help="significance level of the verdict and of the power curve")
    correction: str = option("holm", choices=CORRECTIONS, help="multiple-testing correction over the audit log")
    audit_log: Path | None = option(
        None, help="JSON-lines log of repeated audits, corrected together (default: this audit alone)"
    )
    name: str | None = option(None, help="this audit's name in the log (default: the candidate folder's name)")
    method: str = option("auto", choices=METHODS, help="p-value of the U test: exact, permutation, asymptotic")
    n_permutations: int = option(9999, min=99, help="permutations when the permutation test is used")
    n_boot: int = option(2000, min=100, help="bootstrap resamples for the AUC and fraction intervals")
    ci: float = option(0.95, help="confidence level of the intervals")
    power_reps: int = option(400, min=10, help="resampled audits per candidate size on the power curve")
    target_power: float = option(0.8, help="power at which the needed candidate size is reported")
    k: int = option(8, min=1, help="generated neighbours per real image (scorers that use k)")
    batch_size: int = option(64, min=1, help="images per forward pass")
    pixel_size: int = option(64, min=8, help="pixel scorers: side images are compared at")
    ssim_candidates: int = option(64, min=0, help="ssim: exact SSIM on the M nearest generated by pixel L2 (0 = all)")
    fit_spaces: tuple[str, ...] = option(
        FIT_SPACES, choices=SPACES, help="fused: spaces of the fusion the audit fits on audit.dev (anchor: the first)"
    )
    image_size: int = option(256, min=8, help="side images are packed at")
    model_image_size: int | None = option(None, min=32, help="model input side when the audit trains its model")
    epochs: int | None = option(None, min=1, help="training epochs when the audit trains its model")
    train_config: Path | None = option(None, help="TOML/YAML train config when the audit trains its model")
    index_factory: str = option("Flat", help="FAISS index over the generated embeddings")
    trust_model: bool = option(
        False, help="skip the check (by content hash) that no candidate or reference image is in the model's training"
    )
    report: bool = option(True, help="write report.html with the audit section")
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads")
    seed: int = option(0, help="seed of the bootstrap, permutations, power curve, held-out split and training")
    force: bool = option(False, help="replace an existing audit in the output folder")

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("alpha", "ci", "target_power"):
            if not 0 < getattr(self, name) < 1:
                raise fail(self, name, f"must be between 0 and 1, got {getattr(self, name)}")
        if self.holdout >= 1:
            raise fail(self, "holdout", f"must be below 1, got {self.holdout}")
        unfit = [s for s in self.fit_spaces if s in ("k32x", "emb")]
        if unfit or not self.fit_spaces:
            raise fail(self, "fit_spaces", f"must be pixel or aligned spaces (no metric or model here), got {unfit}")
        if self.reference == REFERENCE_FROM_DEV and self.dev is None and self.run is None:
            raise fail(self, "reference", f"{REFERENCE_FROM_DEV} needs audit.dev (or audit.run)")

    @property
    def dev_source(self) -> Path | None:
        return self.dev if self.dev is not None else (Path(self.run) / "shards" / "dev" if self.run else None)


def run_audit(cfg: AuditConfig) -> dict:
    """Audit "the candidate collection was used to train the generator"; write audit.json and audit_scores.csv."""
    out = Path(cfg.out)
    if (out / "audit.json").exists() and not cfg.force:
        raise exists_error(cfg, out / "audit.json")
    with output_folder(out):
        seed_everything(cfg.seed)
        set_threads(cfg.threads)
        t0 = time.perf_counter()
        name = cfg.scorer or default_scorer(cfg)
        shards = _pack_inputs(cfg, out)
        if name == AUDIT_SCORER:
            scores, provenance = _fused_scores(cfg, shards, out)
        else:
            scores, provenance = _registered_scores(cfg, name, shards, out)
        summary = audit_summary(cfg, name, scores, provenance)
        rows = "".join(f"{k},{g},{s!r}\n" for k, g, s in zip(scores.keys, scores.groups, scores.scores.tolist()))
        write_text(out / "audit_scores.csv", "key,group,score\n" + rows)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "audit.json", summary)
        JsonlLogger(out / "log.jsonl").log(stage="audit", seconds=summary["seconds"], pvalue=summary["test"]["pvalue"])
        log.info("audit: %s", summary["verdict"])
        if cfg.report:
            run_report(ReportConfig(run_dir=out, seed=cfg.seed, force=True))
        return summary


def _registered_scores(cfg: AuditConfig, name: str, shards: dict[str, Path], out: Path):
    """A registered scorer's scores of every group in one call (its model given, the run's, or trained here)."""
    model = _audit_model(cfg, get_scorer(name), out)
    groups, provenance = audit_groups(cfg, shards, model)
    params = {"k": cfg.k, "batch_size": cfg.batch_size, "pixel_size": cfg.pixel_size,
              "ssim_candidates": cfg.ssim_candidates}  # fmt: skip
    scores = score_together(
        name, groups, shards["generated"], out, model=model, params=params, index_factory=cfg.index_factory,
        seed=cfg.seed, threads=cfg.threads,
    )  # fmt: skip
    return scores, provenance


def _fused_scores(cfg: AuditConfig, shards: dict[str, Path], out: Path):
    """The fused scores of every group in one call: the fusion given, the run's, or fitted here on audit.dev."""
    folder = _audit_fusion(cfg, out)
    fitted = None
    if not cfg.trust_model:
        run = Path(cfg.run) if cfg.run is not None and cfg.model is None else None
        fallback = {} if run is None else {"fallback_profile": run / "profile" / "dev.npz",
                                           "fallback_shards": run / "shards" / "dev"}  # fmt: skip
        fitted = fusion_hashes(folder, **fallback)
    groups, provenance = audit_groups(cfg, shards, folder, fitted=fitted)
    scores = score_fused_together(groups, shards["generated"], folder)
    return scores, provenance


def _audit_fusion(cfg: AuditConfig, out: Path) -> Path:
    """The folder of the fusion the audit applies: audit.model's, the run's, or one fitted here with images held out."""
    source = fusion_source(cfg)
    if isinstance(source, Path):
        return source
    if source is None:
        where = cfg.model if cfg.model is not None else (Path(cfg.run) / "model" if cfg.run is not None else None)
        if where is not None:
            raise fail(cfg, "scorer", f"fused needs a fitted fusion: {Path(where) / FUSION_FILE} not found")
        raise fail(cfg, "scorer", "fused needs a fitted fusion: give audit.run, audit.model or audit.dev")
    items = dev_items(Path(cfg.dev), generated=False)
    held = stratified_holdout([f.stem for f, *_ in items], [lab for *_, lab in items], cfg.holdout, cfg.seed)
    log.info("audit: fitting the fusion on %s with %d of its %d real images held out", cfg.dev, len(held), len(items))
    return fit_dev_fusion(
        Path(cfg.dev), out / "model", out, exclude=held, spaces=tuple(cfg.fit_spaces), image_size=cfg.image_size,
        seed=cfg.seed,
    )  # fmt: skip


def _pack_inputs(cfg: AuditConfig, out: Path) -> dict[str, Path]:
    """Each input as a shard folder (folders are packed under out/shards/)."""
    kw = {"image_size": cfg.image_size, "seed": cfg.seed}
    d = out / "shards"
    shards = {
        "candidate": pack_collection(cfg.candidate, d / "candidate", role="real", label="unknown", **kw),
        "generated": pack_collection(cfg.generated, d / "generated", role="generated", label="unknown", **kw),
    }
    if cfg.reference != REFERENCE_FROM_DEV:
        shards["reference"] = pack_collection(Path(cfg.reference), d / "reference", role="real", label="not_used", **kw)
    dev = cfg.dev_source
    if dev is not None:
        shards["dev"] = dev if is_shard_folder(dev) else pack_items(dev_items(dev, generated=False), d / "dev", **kw)
    return shards


def _audit_model(cfg: AuditConfig, scorer, out: Path) -> Path | None:
    """The model the scorer's features come from: given, the run's, or trained here with images held out."""
    if "features" not in scorer.needs:
        return None
    if cfg.model is not None:
        return Path(cfg.model)
    if cfg.run is not None:
        return Path(cfg.run) / "model"
    if cfg.dev is None:
        raise fail(
            cfg, "scorer", f"{scorer.name} reads a trained model's features: give audit.model, audit.run or audit.dev"
        )
    items = dev_items(Path(cfg.dev), generated=False)
    held = stratified_holdout([f.stem for f, *_ in items], [lab for *_, lab in items], cfg.holdout, cfg.seed)
    log.info("audit: training a model on %s with %d of its %d real images held out", cfg.dev, len(held), len(items))
    return train_model(
        Path(cfg.dev), out / "model", out, exclude=held, train_config=cfg.train_config, image_size=cfg.image_size,
        seed=cfg.seed, threads=cfg.threads, epochs=cfg.epochs, model_image_size=cfg.model_image_size,
    )  # fmt: skip


def audit_groups(
    cfg: AuditConfig, shards: dict[str, Path], model: Path | None, *, fitted: tuple[set[str], Path] | None = None
) -> tuple[dict[str, Members], dict]:
    """candidate, reference and the held-out dev used / not-used images, with what the model has seen left out.

    The scorer's model must not have been fitted on any image whose score the
    test compares (exchangeability requirement 1): a candidate or reference
    image found, by content hash, among the real images of the model's
    training shards (or `fitted`: the hashes and shards a fusion was fitted
    on) is an error; for `reference=dev-not-used` and the dev images, such
    images are left out (counted in the provenance).
    """
    seen: set[str] = set()
    provenance: dict[str, Any] = {"checked_against_training": False, "model": None if model is None else str(model)}
    if fitted is not None:
        seen, where = fitted
        provenance |= {"checked_against_training": True, "model_training_shards": str(where)}
    elif model is not None and not cfg.trust_model:
        seen, where = training_hashes(model)
        provenance |= {"checked_against_training": True, "model_training_shards": str(where)}
    cand = members(shards["candidate"])
    _refuse_seen(cand, seen, "candidate", cfg.candidate)
    cand_ids = set().union(*(content_ids(r) for r in cand.records))

    def fresh(r: dict) -> bool:
        return not (content_ids(r) & (seen | cand_ids))

    groups = {"candidate": cand}
    if cfg.reference == REFERENCE_FROM_DEV:
        groups["reference"] = members(shards["dev"], label="not_used", keep=fresh)
        if not groups["reference"].keys:
            raise FingerprintError(
                f"{cfg.dev_source}: none of its not-used images is held out of the model's training "
                f"({provenance.get('model_training_shards')}); let the audit train its model on audit.dev, "
                "or give audit.reference as a folder"
            )
    else:
        groups["reference"] = members(shards["reference"])
        _refuse_seen(groups["reference"], seen, "reference", cfg.reference)
        _refuse_seen(groups["reference"], cand_ids, "reference", cfg.reference, what="the candidate collection")
    if "dev" in shards:
        labels = ("used",) if cfg.reference == REFERENCE_FROM_DEV else ("used", "not_used")
        for label in labels:
            groups[f"dev_{label}"] = members(shards["dev"], label=label, keep=fresh)
        all_dev = members(shards["dev"])
        provenance["dev_left_out_seen_by_model"] = sum(bool(content_ids(r) & seen) for r in all_dev.records)
    provenance["reference"] = REFERENCE_FROM_DEV if cfg.reference == REFERENCE_FROM_DEV else str(cfg.reference)
    return {g: m for g, m in groups.items() if m.keys}, provenance


def _refuse_seen(m: Members, seen: set[str], group: str, source, what: str = "the model's training shards") -> None:
    bad = [r["key"] for r in m.records if content_ids(r) & seen]
    if bad:
        raise FingerprintError(
            f"{source}: {len(bad)} {group} image(s) (first: {bad[0]}) are also in {what}: "
            "their scores would not be comparable (use a model not trained on them, or other images)"
        )


def _fraction_inputs(scores: TogetherScores, reference_from_dev: bool) -> tuple[dict, str | None]:
    """dev used / not-used scores for `fraction_used`, or none (lower bound) with the reason."""
    used = scores.of("dev_used")
    if len(used) < MIN_DEV_PER_CLASS:
        return {}, f"fewer than {MIN_DEV_PER_CLASS} held-out labelled used images: lower bound only"
    if reference_from_dev:
        return {"dev_used": used}, None  # the reference doubles as the dev not-used images (resampled jointly)
    not_used = scores.of("dev_not_used")
    if len(not_used) < MIN_DEV_PER_CLASS:
        return {}, f"fewer than {MIN_DEV_PER_CLASS} held-out labelled not-used images: lower bound only"
    return {"dev_used": used, "dev_not_used": not_used}, None


def _run_test(cfg: AuditConfig, cand: np.ndarray, ref: np.ndarray, dev: dict) -> tuple[AuditResult, str | None]:
    kw = {"method": cfg.method, "n_permutations": cfg.n_permutations, "n_boot": cfg.n_boot, "ci": cfg.ci}
    try:
        return audit(cand, ref, **dev, **kw, seed=cfg.seed), None
    except FingerprintError as e:
        if not dev or "not identifiable" not in str(e):
            raise
        return audit(cand, ref, **kw, seed=cfg.seed), str(e).removeprefix("audit: ") + ": lower bound only"


def audit_summary(cfg: AuditConfig, scorer: str, scores: TogetherScores, provenance: dict) -> dict:
    """The test, effect, fraction, power, correction over the log and the verdict (the content of audit.json)."""
    cand, ref = scores.of("candidate"), scores.of("reference")
    dev, why_bound = _fraction_inputs(scores, cfg.reference == REFERENCE_FROM_DEV)
    result, not_identifiable = _run_test(cfg, cand, ref, dev)
    power = power_curve(cand, ref, alpha=cfg.alpha, target_power=cfg.target_power, n_rep=cfg.power_reps, seed=cfg.seed)
    if not math.isfinite(power["n_required_noether"]):
        power["n_required_noether"] = None
    name = cfg.name or Path(cfg.candidate).name
    record = {"name": name, "id": _audit_id(cfg, scorer), "scorer": scorer, "pvalue": result.pvalue,
              "n_candidate": len(cand), "n_reference": len(ref)}  # fmt: skip
    correction = log_and_correct(cfg, record)
    d = result.to_dict()
    summary = {
        "format": FORMAT,
        "name": name,
        "verdict": verdict(result, correction, power),
        "used": bool(correction["reject"]),
        "scorer": {"name": scorer, "default": cfg.scorer is None, "help": get_scorer(scorer).help},
        "test": {
            "name": "one-sided Mann-Whitney U (candidate > reference)",
            "statistic": d["statistic"],
            "pvalue": d["pvalue"],
            "method": d["method"],
            "alpha": cfg.alpha,
        },  # fmt: skip
        "effect": {
            "auc": d["auc"],
            "low": d["auc_low"],
            "high": d["auc_high"],
            "ci": cfg.ci,
            "interval": "BCa bootstrap, candidate and reference resampled separately",
        },  # fmt: skip
        "fraction": d["fraction"] | {"why_bound": not_identifiable or why_bound if d["fraction"]["bound"] else None},
        "power": power,
        "correction": correction,
        "n": {g: int(np.sum(np.asarray(scores.groups) == g)) for g in dict.fromkeys(scores.groups)},
        "conditions": scores.conditions | provenance,
        "inputs": {
            "candidate": str(cfg.candidate),
            "reference": str(cfg.reference),
            "generated": str(cfg.generated),
            "dev": None if cfg.dev_source is None else str(cfg.dev_source),
        },  # fmt: skip
        "seed": cfg.seed,
        "command": command_line(cfg),
    }
    return summary


def _audit_id(cfg: AuditConfig, scorer: str) -> str:
    """What makes two log entries the same audit: the inputs, scorer, test options and seed (not out/force)."""
    same = replace(cfg, out=Path("."), force=False, report=True, audit_log=None, scorer=scorer, threads=None)
    return sha256_bytes(command_line(same).encode())[:16]


def log_and_correct(cfg: AuditConfig, record: dict) -> dict:
    """Add this audit to the log (a re-run of the same audit replaces its entry) and correct over the log.

    Holm bounds the chance of any false "used" among the logged audits; BH/BY
    the expected share of false ones among the "used" verdicts. A growing log
    can withdraw an earlier Holm verdict, so each verdict is stored with the
    log size it was made at (`m`).
    """
    entries = []
    if cfg.audit_log is not None and Path(cfg.audit_log).is_file():
        for n, line in enumerate(Path(cfg.audit_log).read_text().splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    raise FingerprintError(f"{cfg.audit_log}: line {n} is not JSON") from None
    entries = [e for e in entries if e.get("id") != record["id"]] + [record]
    bad = [e.get("name") for e in entries if not isinstance(e.get("pvalue"), (int, float))]
    if bad:
        raise FingerprintError(f"{cfg.audit_log}: an entry ({bad[0]}) has no p-value")
    corrected = correct_audits([e["pvalue"] for e in entries], alpha=cfg.alpha, method=cfg.correction)
    for e, adj, rej in zip(entries, corrected["adjusted"], corrected["reject"]):
        e["adjusted_at_m"] = {"m": len(entries), "adjusted": float(adj), "reject": bool(rej)}
    if cfg.audit_log is not None:
        write_text(cfg.audit_log, "".join(json.dumps(e) + "\n" for e in entries))
    return {
        "method": cfg.correction, "alpha": cfg.alpha, "m": len(entries),
        "log": None if cfg.audit_log is None else str(cfg.audit_log),
        "adjusted_pvalue": float(corrected["adjusted"][-1]), "reject": bool(corrected["reject"][-1]),
        "audits": [{k: e.get(k) for k in ("name", "scorer", "pvalue")} | e["adjusted_at_m"] for e in entries],
    }  # fmt: skip


def verdict(result: AuditResult, correction: dict, power: dict) -> str:
    """One line: used or not shown, p (raw and adjusted), effect and fraction with intervals, or the n needed."""
    adj = f"{correction['method']}-adjusted over {correction['m']} audit(s) {correction['adjusted_pvalue']:.2g}"
    p = f"one-sided Mann-Whitney U p = {result.pvalue:.2g}, {adj}"
    effect = f"AUC {result.auc:.3f} [{result.auc_low:.3f}, {result.auc_high:.3f}]"
    f = result.fraction
    frac = f"{'at least ' if f.bound else ''}{f.fraction:.2f} [{f.low:.2f}, {f.high:.2f}] of the candidate used"
    if correction["reject"]:
        used = "USED: the candidate collection scores higher than the reference"
        return f"{used} ({p} <= {correction['alpha']}); {effect}; {frac}"
    need = power["n_required"]
    more = (
        f"at this effect about {need} candidate images would reach p < {power['alpha']} with "
        f"{power['target_power']:.0%} power"
        if need is not None
        else f"at this effect no candidate size up to {max(power['n'])} reaches p < {power['alpha']} reliably"
    )
    shown = f"NOT SHOWN: no evidence at alpha {correction['alpha']} that the candidate collection was used"
    return f"{shown} ({p}); {effect}; {more}"
