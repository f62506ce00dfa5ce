"""The whole pipeline on one data set: `run_pipeline(RunConfig)`.

pack -> adapt (-> pretrain) -> train -> embed -> index -> profile -> fuse ->
score (every registered scorer; the fused scorer writes run.csv) -> compare /
cluster -> evaluate -> report, each stage a library call with its config
object (`run_pack(PackConfig)`, `run_adapt(AdaptConfig)`, ...). Every stage
config is built, and so checked, before the first stage starts (`plan_run`),
together with the input's file names (figure ids). Every stage writes into
one run folder (layout in docs/design.md), which is locked while the run
writes into it (`fingerprint.core.locks`); `Stages` is the one place a stage is
run: it skips a stage whose stage-complete record matches
(`fingerprint.core.records`; so an interrupted or failed run picks up where it
stopped, and an interrupted training continues from its last checkpoint;
`force` redoes everything), logs the stage's equivalent command line, times
it and writes the record last. Before it reports success, `run` checks its
run file with the rules of `fingerprint validate` against the test split's
real figure ids. The run's options are `fingerprint.tasks.configs`, its
plan (every stage config, built before the first stage) `fingerprint.tasks.plan`;
the demo (`fingerprint.tasks.demo`) runs this pipeline on the built-in benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from fingerprint.analysis.cluster import run_cluster
from fingerprint.analysis.compare import run_compare
from fingerprint.core.config import (
    command_line,
    section_of,
    to_argv,
)
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, check_writable, read_json, remove_stale_temporaries, write_json
from fingerprint.core.locks import folder_lock
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.records import StageRecords, listing_digest
from fingerprint.core.vocab import SPLITS
from fingerprint.data.pack import run_pack
from fingerprint.data.shards import read_manifest
from fingerprint.embedding.embed import run_embed
from fingerprint.embedding.index import run_index
from fingerprint.evaluation.evaluate import EvaluateConfig, run_evaluate
from fingerprint.evaluation.metrics import LEAD_METRICS, auc_margin, format_table, label_share_warning
from fingerprint.evaluation.runfile import validate
from fingerprint.evaluation.scorefiles import read_score_meta
from fingerprint.membership.fuse import run_fuse
from fingerprint.membership.profile import load_profile, run_profile
from fingerprint.membership.score import run_score
from fingerprint.membership.scorers import get_scorer, untrained_scorers
from fingerprint.report.build import run_report
from fingerprint.tasks.configs import RUN_FILE_SCORER, RunConfig, RunPaths
from fingerprint.tasks.plan import (
    EVERY_TEST_IMAGE,
    RunPlan,
    plan_run,
    score_config,
)
from fingerprint.training.adapt import METRIC_META, run_adapt
from fingerprint.training.checkpoints import resumable_checkpoint
from fingerprint.training.pretrain import BACKBONE_FILE, run_pretrain
from fingerprint.training.train import TrainConfig, run_train

log = logging.getLogger(__name__)


class Stages:
    """The one place a run's stage is run: skipped when its stage-complete record matches, logged, timed, recorded.

    A stage runs when it has no matching record (`fingerprint.core.records`): its
    record is removed first and written last, after every output exists.
    `derived` stages (evaluate, report) are cheap and always redone. A stage
    that runs may find what an interrupted attempt left (a score file without
    its run file, a model folder with checkpoints), so it runs with `force`
    (the run folder is locked: nothing else writes there), or as `resume(cfg)`
    returns it (an interrupted training continues from its checkpoint).
    """

    def __init__(self, out: Path, force: bool):
        self.out = out
        self.force = force
        self.log = JsonlLogger(out / "log.jsonl")
        self.timings: dict[str, float] = {}
        self.records = StageRecords(out)
        self.after = ""  # digest of the previous stage's record: redoing a stage redoes every later one

    def __call__(
        self, name: str, fn: Callable[[Any], Any], cfg: Any, outputs: Sequence[Path], derived: bool = False, *,
        inputs: Sequence[Path] = (), resume: Callable[[Any], Any] | None = None,
    ) -> Any:  # fmt: skip
        """Run `fn(cfg)` as stage `name` unless its record says it is done; returns its result (None if skipped)."""
        config = to_argv(dataclasses.replace(cfg, force=False))
        listing = listing_digest(inputs) if inputs else ""
        done = None if self.force or derived else self.records.complete(name, config, self.after, outputs, listing)
        if done is not None:
            log.info("[%s] complete (%s): skipped", name, self.records.path(name).relative_to(self.out))
            self.log.log(stage="run", step=name, skipped=True)
            self.after = done["digest"]
            return None
        self.records.invalidate(name)
        cfg = dataclasses.replace(cfg, force=True)
        if resume is not None and not self.force:
            cfg = resume(cfg)
        log.info("[%s] %s", name, command_line(cfg))
        t0 = time.perf_counter()
        result = fn(cfg)
        dt = time.perf_counter() - t0
        missing = [p for p in outputs if not Path(p).exists()]
        if missing:
            raise FingerprintError(f"{missing[0]}: stage {name} ended without writing it")
        self.after = self.records.write(name, config, self.after, outputs, listing, seconds=round(dt, 3))["digest"]
        self.timings[name] = round(dt, 2)
        self.log.log(stage="run", step=name, command=section_of(cfg), seconds=round(dt, 3))
        return result


def run_pipeline(cfg: RunConfig) -> dict:
    """pack -> train -> embed -> index -> score (+ baselines) -> compare -> cluster -> evaluate -> report.

    Splits given as shards (`dev_shards`, `test_shards`: local or by URL) are
    read from there instead of being packed from DATA_DIR.
    """
    plan = plan_run(cfg)
    out = plan.paths.out
    if cfg.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    with folder_lock(out, "fingerprint run"):
        remove_stale_temporaries(out, recursive=True)
        check_writable(out)
        if plan.paths.given:
            write_json(out / "shards.json", plan.paths.given)
        return _run_stages(plan)


def _run_stages(plan: RunPlan) -> dict:
    cfg, paths, out, truth = plan.cfg, plan.paths, plan.paths.out, plan.truth
    stage = Stages(out, cfg.force)
    t0 = time.perf_counter()
    for s, pack in plan.pack.items():
        stage(f"pack-{s}", run_pack, pack, [paths.shards(s) / "manifest.json"], inputs=[pack.src])
    if "test" in plan.pack:
        check_test_pack(plan.pack["test"].src, paths.shards("test"))
    fusion = plan.fusion
    if fusion["adapt"] is not None:
        stage("adapt", run_adapt, fusion["adapt"], [paths.model / METRIC_META])
    if fusion["pretrain"] is not None:
        stage("pretrain", run_pretrain, fusion["pretrain"], [paths.pretrain / BACKBONE_FILE])
    if "train" in plan.cnn:
        stage("train", run_train, plan.train, [paths.model / "model.safetensors"], resume=_resume_training)
    _embed_and_index(stage, paths, plan)
    skipped = [name for name in ("train", "embed", "index") if name not in plan.cnn]
    if skipped:
        log.info("[%s] not needed: no scorer, comparator or clustering reads the CNN", ", ".join(skipped))
        stage.log.log(stage="run", step="cnn", not_needed=skipped)
    stage("profile", run_profile, fusion["profile"], [paths.profile(s) for s in SPLITS])
    stage("fuse", run_fuse, fusion["fuse"], [paths.fusion])
    warnings = _score(stage, paths, cfg)
    check_run_file(paths, plan.test_ids)
    if plan.compare is not None:
        stage("compare", run_compare, plan.compare, [out / "compare"])
    if plan.cluster is not None:
        stage("cluster", run_cluster, plan.cluster, [out / "cluster"])
    metrics = _evaluate(stage, paths, truth, cfg) if truth is not None else None
    if truth is None:
        log.info("no test truth (run.truth, DATA_DIR/test_truth.csv): scores and run file written, nothing to evaluate")
    if plan.report is not None:
        stage("report", run_report, plan.report, [out / "report.html"], derived=True)
    total = time.perf_counter() - t0
    summary = {
        "data_dir": None if plan.data is None else str(plan.data),
        "shards": {s: str(paths.shards(s)) for s in SPLITS},
        "out": str(out),
        "seconds": round(total, 1),
        "stage_seconds": stage.timings,
        "run_file": str(out / "run.csv"),
        "run_file_scorer": RUN_FILE_SCORER,
        "warnings": warnings,
        "metrics": str(out / "metrics.json") if metrics else None,
        "table": roc_table(metrics["scorers"]) if metrics else None,
        "margin": auc_margin(metrics["scorers"], RUN_FILE_SCORER, untrained_scorers()) if metrics else None,
        "report": str(out / "report.html") if cfg.report else None,
    }
    write_json(out / "run.json", summary)
    stage.log.log(stage="run", seconds=round(total, 3))
    return summary


def check_test_pack(src: Path, shards: Path) -> None:
    """A real test image that pack skipped (unreadable, too large) is an error naming it: it has no score."""
    for skip in read_manifest(shards).get("skipped", []):
        if skip.get("role") == "real":
            raise FingerprintError(
                f"{src / skip['path']}: unreadable test image ({skip['reason']}); {EVERY_TEST_IMAGE}"
            )


def check_run_file(paths: RunPaths, test_ids: list[str] | None) -> None:
    """The run file must pass `fingerprint validate` against the real test images' ids (less any skipped at pack).

    With the test split given as shards (`test_ids` None), the ids are the real images' keys as profiled.
    """
    if test_ids is None:
        ids = sorted(str(k) for k in load_profile(paths.profile("test"))[0].keys)
    else:
        skipped = {Path(s["path"]).stem for s in read_manifest(paths.shards("test")).get("skipped", [])}
        ids = [i for i in test_ids if i not in skipped]
        if len(ids) < len(test_ids):
            log.warning("run.csv: %d real test image(s) were unreadable (skipped at pack) and are not in it",
                        len(test_ids) - len(ids))  # fmt: skip
    run_file = paths.out / "run.csv"
    problems = validate(run_file, ids)
    if problems:
        raise FingerprintError(
            f"{run_file}: {problems[0]} ({len(problems)} problem(s) against the {len(ids)} real test images' ids)"
        )


def _resume_training(cfg: TrainConfig) -> TrainConfig:
    """An interrupted training continues from its newest complete checkpoint if that was the same training."""
    ckpt = resumable_checkpoint(cfg)
    if ckpt is None:
        return cfg
    log.info("[train] continuing the interrupted training from %s", ckpt)
    return dataclasses.replace(cfg, resume="latest", force=False)


def _embed_and_index(stage: Stages, paths: RunPaths, plan: RunPlan) -> None:
    for s in SPLITS:
        if "embed" in plan.cnn:
            stage(f"embed-{s}", run_embed, plan.embed[s], [paths.features_done(s)])
        if "index" in plan.cnn:
            stage(f"index-{s}", run_index, plan.index[s], [paths.index(s), paths.index(s).with_suffix(".json")])


def _split_sizes(shards_dir: Path | str) -> tuple[int, int]:
    """(real, generated) image counts of a packed split, from its manifest."""
    counts = read_manifest(shards_dir).get("counts", {})
    roles = counts.get("role", counts)
    return int(roles.get("real", 0)), int(roles.get("generated", 0))


def _score(stage: Stages, paths: RunPaths, cfg: RunConfig) -> list[str]:
    """Every scorer on dev then test; returns the warnings about the run file's labels."""
    n_real, n_gen = _split_sizes(paths.shards("test"))
    pool = max(n_gen, _split_sizes(paths.shards("dev"))[1])
    for name in (RUN_FILE_SCORER, *cfg.baselines):
        if get_scorer(name).pairwise and n_real * n_gen > cfg.seed_rule_max_pairs:
            log.info(
                "[score] %s skipped: %d x %d pairs > run.seed_rule_max_pairs %d",
                *(name, n_real, n_gen, cfg.seed_rule_max_pairs),
            )
            continue
        if "pixels" in get_scorer(name).needs and pool > cfg.pixel_baselines_max:
            log.info("[score] %s skipped: %d generated > run.pixel_baselines_max %d", name, pool,
                     cfg.pixel_baselines_max)  # fmt: skip
            continue
        for s in SPLITS:
            # the test config reads the dev threshold, so it is built after the dev stage ran
            score = score_config(name, s, paths, cfg)
            stage(f"score-{name}-{s}", run_score, score, [*score.outputs(), score.out.with_suffix(".json")])
    return check_label_share(paths)


def check_label_share(paths: RunPaths) -> list[str]:
    """Warn (log + the run-file scorer's sidecar) when a balanced dev set meets a run file labelled one way."""
    test = paths.scores("test") / f"{RUN_FILE_SCORER}.csv"
    meta = read_score_meta(test) or {}
    labels = read_manifest(paths.shards("dev")).get("counts", {}).get("label", {})
    n_used, n_not = int(labels.get("used", 0)), int(labels.get("not_used", 0))
    if not meta.get("n"):
        return []
    warning = label_share_warning(meta["n_predicted_used"] / meta["n"], n_used + n_not, n_used)
    if warning is None:
        if meta.pop("warnings", None) is not None:
            write_json(test.with_suffix(".json"), meta)
        return []
    log.warning("run.csv (%s): %s", RUN_FILE_SCORER, warning)
    write_json(test.with_suffix(".json"), {**meta, "warnings": [warning]})
    return [warning]


def roc_table(results: dict[str, dict]) -> str:
    """The test metrics that lead (ROC-AUC, kappa, balanced accuracy, TPR at 1% / 5% FPR), the run file's
    scorer first, then every other scorer by ROC-AUC, and the margin line."""

    def auc(name: str) -> float:
        v = (results[name].get("roc_auc") or {}).get("value")
        return -1.0 if v is None else v

    order = [n for n in results if n == RUN_FILE_SCORER] + sorted(
        (n for n in results if n != RUN_FILE_SCORER), key=lambda n: (-auc(n), n)
    )
    text = format_table({n: results[n] for n in order}, LEAD_METRICS)
    margin = auc_margin(results, RUN_FILE_SCORER, untrained_scorers())
    if margin is not None:
        text += (
            f"\nmargin of {RUN_FILE_SCORER} (run.csv) over the best untrained baseline "
            f"({margin['baseline']} {margin['baseline_auc']:.3f}): {margin['margin']:+.3f} ROC-AUC"
        )
    return text


def _evaluate(stage: Stages, paths: RunPaths, truth: Path, cfg: RunConfig) -> dict:
    """Every test score file against the truth -> metrics.json (with the dev numbers where a stage measured them)."""
    out = paths.out
    with atomic_path(out / "test_truth.csv") as tmp:
        shutil.copyfile(truth, tmp)
    score_files = tuple(Path(p) for p in sorted(str(p) for p in paths.scores("test").glob("*.csv")))
    evaluate = EvaluateConfig(
        scores=score_files, truth=out / "test_truth.csv", out=out / "metrics.json", split="test", n_boot=cfg.n_boot,
        seed=cfg.seed,
    )  # fmt: skip
    results = stage("evaluate", run_evaluate, evaluate, [out / "metrics.json"], derived=True)
    log.info("test metrics:\n%s", roc_table(results))
    metrics = read_json(out / "metrics.json")
    dev = _dev_metrics(out)
    if dev:
        metrics["dev"] = dev
        write_json(out / "metrics.json", metrics)
    return metrics


def _dev_metrics(out: Path) -> dict:
    """Dev-set metrics where a stage measured them: comparators (cross-validated) and the cluster scorer."""
    cv = out / "compare" / "cv.json"
    if not cv.is_file():
        return {}
    dev = dict(read_json(cv).get("cv", {}))
    clusters = out / "cluster" / "cluster.json"
    if clusters.is_file():
        scorer = read_json(clusters).get("scorer") or {}
        if scorer.get("dev"):
            dev[scorer.get("name", "cluster")] = scorer["dev"]
    return dev
