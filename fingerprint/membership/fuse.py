"""The fusion stage: the trained scorer's fit on the dev labels, over the calibrated similarity profile.

`run_fuse(FuseConfig)` reads a dev profile (`fingerprint profile`) and writes
the fitted model (`RUN/model/fusion.json`), which the `fused` scorer applies
to any split's profile. With about 160 labelled dev reals, few strong
features and a penalty chosen by cross-validation are what generalise:

1. one group of columns per space (`ngen_k` and `cal_k`; the raw-pixel anchor
   spaces keep k = 1, 3, 5, 8), each column standardised within its split
   (rank-gauss by default: a pool of 500 and one of 2,000 generated images
   put every distance on a different scale);
2. forward selection of groups, anchored at `px64`: add the group that raises
   repeated stratified k-fold ROC-AUC on dev most, while it gains at least
   `min_gain` (at most `max_groups` groups);
3. L2 logistic regression with non-negative weights on the oriented columns
   (a feature is never used against its meaning: closer to the generated
   pool, relative to the reference, means "used"; with weak dev signal this
   is what keeps noise from being fitted), C chosen by the same CV;
4. out-of-fold dev scores (each dev image scored by a model that did not see
   its label) and the decision threshold on them (`metrics.calibrate_threshold`,
   kappa by default, on the `scale` the score stage uses for every scorer).

Labels are read from the dev profile only; the test split enters through its
own profile at scoring time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

from fingerprint.core.config import check_fields, exists_error, fail, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json, sha256_file, write_json
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import SCORE_SCALES, SPACES, THRESHOLD_RULES, label_codes
from fingerprint.evaluation.metrics import calibrate_threshold, on_scale, roc_auc, standardise
from fingerprint.evaluation.scorefiles import ScoreResult
from fingerprint.membership.profile import load_profile
from fingerprint.membership.spaces import DEFAULT_SPACES, KS_GEN, KS_REF

log = logging.getLogger(__name__)

FORMAT = "fingerprint-fusion/1"
#: raw-pixel spaces whose group keeps the long profile (k = 1, 3, 5, 8 to the pool; 1, 3, 5 to the reference)
LONG_GROUPS = ("px64", "px32")
STANDARDISE = ("rank", "robust")


@dataclass(kw_only=True)
class FuseConfig:
    """Options of the fusion stage (`fingerprint fuse`)."""

    SECTION = "fuse"

    dev: Path = option(help="labelled dev profile .npz (from 'fingerprint profile')")
    out: Path = option(help="fusion model to write (JSON), e.g. RUN/model/fusion.json")
    spaces: tuple[str, ...] = option(DEFAULT_SPACES, choices=SPACES, help="candidate groups, one per profile space")
    anchor: tuple[str, ...] = option(("px64",), choices=SPACES, help="groups the selection starts from (kept)")
    extra: tuple[str, ...] = option(
        (), help="more candidate groups: profile columns added by other stages, one group each (oriented)"
    )
    min_gain: float = option(0.02, min=0, help="add a group only if it raises CV ROC-AUC by at least this")
    max_groups: int = option(3, min=1, help="at most this many groups")
    calibrated: bool = option(True, help="use the calibrated cal_k columns (--no-calibrated: distances only)")
    nonneg: bool = option(True, help="non-negative weights on the oriented columns (--no-nonneg: plain L2 LR)")
    standardise: str = option("rank", choices=STANDARDISE, help="per-split standardisation of every column")
    C: tuple[float, ...] = option((0.01, 0.03, 0.1, 0.3, 1.0), min=1e-9, help="inverse L2 penalties tried by CV")
    folds: int = option(5, min=2, help="stratified folds (CV and out-of-fold scores)")
    repeats: int = option(4, min=1, help="CV repeats when choosing groups and C")
    rule: str = option(THRESHOLD_RULES[0], choices=THRESHOLD_RULES, help="threshold rule on the out-of-fold scores")
    scale: str = option(SCORE_SCALES[0], choices=SCORE_SCALES, help="scale the threshold applies on")
    fixed: str | None = option(None, help="no fit: this one profile column is the score (an untrained rule)")
    seed: int = option(0, help="seed of the CV splits and the threshold bootstrap")
    log: Path | None = option(None, help="append a JSON-lines record here")
    force: bool = option(False, help="replace the model if it exists")

    def __post_init__(self) -> None:
        check_fields(self)
        missing = [a for a in self.anchor if a not in self.spaces]
        if missing:
            raise fail(self, "anchor", f"must be among fuse.spaces, got {','.join(missing)}")


def group_columns(space: str, calibrated: bool = True) -> list[str]:
    """The columns of one space's group (oriented: higher = more likely used)."""
    ks = (KS_GEN, KS_REF) if space in LONG_GROUPS else ((1, 3), (1, 3))
    cols = [f"{space}:ngen_{k}" for k in ks[0]]
    return cols + ([f"{space}:cal_{k}" for k in ks[1]] if calibrated else [])


# ----------------------------------------------------------------------------- the fit


class NonNegLR:
    """L2 logistic regression with w >= 0 (L-BFGS-B): the prior of every similarity attack as a constraint."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, X: np.ndarray, y: np.ndarray) -> NonNegLR:
        d = X.shape[1]
        t = 2.0 * y - 1.0

        def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = p[:d], p[d]
            z = t * (X @ w + b)
            value = np.logaddexp(0, -z).sum() + 0.5 / self.C * (w @ w)
            s = -t * 0.5 * (1.0 - np.tanh(0.5 * z))  # -t * sigmoid(-z), stable
            return value, np.r_[X.T @ s + w / self.C, s.sum()]

        r = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", bounds=[(0, None)] * d + [(None, None)])
        self.coef_, self.intercept_ = r.x[None, :d], float(r.x[d])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_[0] + self.intercept_


def make_lr(C: float, nonneg: bool):
    return NonNegLR(C) if nonneg else LogisticRegression(C=C, max_iter=2000)


def stack(columns: dict[str, np.ndarray], names: list[str], how: str) -> np.ndarray:
    """The named columns of one split, each standardised within the split."""
    return np.column_stack([standardise(columns[n], how) for n in names])


def cv_auc(X: np.ndarray, y: np.ndarray, C: float, cfg: FuseConfig) -> float:
    """Mean out-of-fold ROC-AUC over repeated stratified k-fold (pooled per repeat)."""
    aucs, oof = [], np.zeros(len(y))
    split = RepeatedStratifiedKFold(n_splits=cfg.folds, n_repeats=cfg.repeats, random_state=cfg.seed % 2**32)
    for i, (tr, te) in enumerate(split.split(X, y)):
        oof[te] = make_lr(C, cfg.nonneg).fit(X[tr], y[tr]).decision_function(X[te])
        if (i + 1) % cfg.folds == 0:
            aucs.append(roc_auc(y, oof))
    return float(np.mean(aucs))


def best_C(X: np.ndarray, y: np.ndarray, cfg: FuseConfig) -> tuple[float, dict[float, float]]:
    """(C with the best CV ROC-AUC, ties to the stronger penalty; {C: CV ROC-AUC})."""
    cv = {C: cv_auc(X, y, C, cfg) for C in cfg.C}
    return max(cv, key=lambda c: (round(cv[c], 4), -c)), cv


def oof_scores(X: np.ndarray, y: np.ndarray, C: float, cfg: FuseConfig) -> np.ndarray:
    """Each row scored by a model fitted on the other folds (one stratified k-fold)."""
    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed % 2**32).split(X, y):
        oof[te] = make_lr(C, cfg.nonneg).fit(X[tr], y[tr]).decision_function(X[te])
    return oof


def select_groups(columns: dict, y: np.ndarray, groups: dict[str, list[str]], cfg: FuseConfig) -> tuple[list, list]:
    """Forward selection of groups by repeated-CV ROC-AUC on dev, from the anchor groups (labels: dev only).

    Returns (chosen group names, trace [(groups, CV ROC-AUC)]).
    """
    chosen = list(cfg.anchor)
    names = [n for g in chosen for n in groups[g]]
    best = max(best_C(stack(columns, names, cfg.standardise), y, cfg)[1].values()) if chosen else -1.0
    trace = [(list(chosen), round(best, 4))] if chosen else []
    while len(chosen) < cfg.max_groups:
        scores = {}
        for g in groups:
            if g not in chosen:
                names = [n for h in [*chosen, g] for n in groups[h]]
                scores[g] = max(best_C(stack(columns, names, cfg.standardise), y, cfg)[1].values())
        if not scores:
            break
        g = max(scores, key=lambda k: (scores[k], -list(groups).index(k)))
        if chosen and scores[g] < best + cfg.min_gain:
            break
        chosen.append(g)
        best = scores[g]
        trace.append((list(chosen), round(best, 4)))
    return chosen, trace


def fit_fusion(columns: dict[str, np.ndarray], y: np.ndarray, cfg: FuseConfig) -> dict:
    """Select groups, choose C, fit on all of dev; out-of-fold dev scores and the threshold on them."""
    if cfg.fixed is not None:
        return _fixed_rule(columns, y, cfg)
    groups = {}
    for space in cfg.spaces:
        cols = group_columns(space, cfg.calibrated)
        missing = [c for c in cols if c not in columns]
        if missing:
            raise fail(cfg, "spaces", f"{space}: the dev profile has no column {missing[0]} (profile it first)")
        groups[space] = cols
    for name in cfg.extra:
        if name not in columns:
            raise fail(cfg, "extra", f"the dev profile has no column {name!r}")
        groups[name] = [name]
    chosen, trace = select_groups(columns, y, groups, cfg)
    names = [n for g in chosen for n in groups[g]]
    X = stack(columns, names, cfg.standardise)
    C, cv = best_C(X, y, cfg)
    oof = oof_scores(X, y, C, cfg)
    model = make_lr(C, cfg.nonneg).fit(X, y)
    weights = np.asarray(model.coef_[0], dtype=np.float64)
    return {
        "groups": chosen,
        "columns": names,
        "weights": weights.round(8).tolist(),
        "intercept": float(np.ravel(model.intercept_)[0]),
        "C": C,
        "cv_auc": {repr(c): round(v, 5) for c, v in cv.items()},
        "selection": trace,
        "oof": oof,
    }


def _fixed_rule(columns: dict[str, np.ndarray], y: np.ndarray, cfg: FuseConfig) -> dict:
    if cfg.fixed not in columns:
        raise fail(cfg, "fixed", f"no column {cfg.fixed!r} in the dev profile")
    s = standardise(columns[cfg.fixed], cfg.standardise)
    return {"groups": [], "columns": [cfg.fixed], "weights": [1.0], "intercept": 0.0, "C": None, "cv_auc": {},
            "selection": [], "oof": s}  # fmt: skip


def run_fuse(cfg: FuseConfig) -> dict:
    """Fit the fused scorer on the dev profile's labels; write cfg.out (the model the `fused` scorer applies)."""
    if Path(cfg.out).exists() and not cfg.force:
        raise exists_error(cfg, cfg.out)
    t0 = time.perf_counter()
    feats, columns = load_profile(cfg.dev)
    labelled = np.isin(feats.labels, ("used", "not_used"))
    if labelled.sum() < 2 * cfg.folds:
        raise FingerprintError(f"{cfg.dev}: {int(labelled.sum())} labelled real images, too few for fuse.folds")
    y = label_codes(feats.labels[labelled], source=str(cfg.dev))
    columns = {n: v[labelled] for n, v in columns.items()}
    if min(y.sum(), len(y) - y.sum()) < cfg.folds:
        raise FingerprintError(f"{cfg.dev}: needs >= fuse.folds={cfg.folds} used and not-used images")
    fit = fit_fusion(columns, y, cfg)
    oof = fit.pop("oof")
    threshold = calibrate_threshold(y, on_scale(oof, cfg.scale), cfg.rule, seed=cfg.seed)
    model = {
        "format": FORMAT,
        **fit,
        "standardise": cfg.standardise,
        "calibration": {
            "threshold": threshold,
            "rule": cfg.rule,
            "scale": cfg.scale,
            "scorer": "fused",
            "on": "out-of-fold dev scores",
            "n": int(len(y)),
            "n_pos": int(y.sum()),
        },  # fmt: skip
        "dev": {
            "profile": str(cfg.dev),
            "profile_sha256": sha256_file(cfg.dev),
            "keys": feats.keys[labelled].tolist(),
            "oof_scores": oof.round(8).tolist(),
            "oof_auc": roc_auc(y, oof),
        },  # fmt: skip
        "profile_meta": {k: feats.meta.get(k) for k in ("spaces", "metric_sha256", "n_reference")},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    write_json(cfg.out, model)
    seconds = time.perf_counter() - t0
    log.info(
        "fuse: groups %s, C %s, out-of-fold dev ROC-AUC %.3f, threshold %.3f (%s, %s) in %.1f s",
        *("+".join(fit["groups"]) or cfg.fixed, fit["C"], model["dev"]["oof_auc"], threshold, cfg.rule, cfg.scale),
        seconds,
    )
    record = {"groups": fit["groups"], "C": fit["C"], "oof_auc": model["dev"]["oof_auc"], "threshold": threshold}
    JsonlLogger(cfg.log).log(stage="fuse", seconds=round(seconds, 3), **record)
    return record | {"seconds": seconds}


# ----------------------------------------------------------------------------- scoring


def load_fusion(path: str | Path) -> dict:
    """A fusion model (from `run_fuse`); a clear error for anything else."""
    model = read_json(path)
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise FingerprintError(f"{path}: not a fusion model (format {FORMAT}; run 'fingerprint fuse')")
    return model


def fused_scores(model: dict, profile_path: str | Path) -> ScoreResult:
    """The fused score of every real image of a profile; the images the model was fitted on get their
    out-of-fold scores (so their labels and metrics are honest), with the in-sample score as a component."""
    feats, columns = load_profile(profile_path)
    missing = [c for c in model["columns"] if c not in columns]
    if missing:
        raise FingerprintError(f"{profile_path}: no column {missing[0]} (the fusion model needs it)")
    X = stack(columns, model["columns"], model["standardise"])
    score = X @ np.asarray(model["weights"]) + model["intercept"]
    keys = feats.keys.tolist()
    if sha256_file(profile_path) != model["dev"]["profile_sha256"]:
        return ScoreResult(keys, score)
    oof = dict(zip(model["dev"]["keys"], model["dev"]["oof_scores"]))
    out = np.array([oof.get(k, s) for k, s in zip(keys, score)], dtype=np.float64)
    return ScoreResult(keys, out, components={"in_sample": score})
