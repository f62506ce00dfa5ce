"""`fingerprint demo`: the pipeline on the built-in benchmark (`run_demo(DemoConfig)`), or a collection-level task.

membership (the default): the built-in benchmark is built once with
`benchdata.synth` (cached in data/benchmark-<level>-seed<seed>), then `run`
runs on it (`fingerprint.tasks.pipeline`).

audit: one audit-case benchmark (`benchdata.cases.build_audit_case`, cached
in data/audit-<level>-seed<seed>) gives three cases drawn from its test split
(used, not used, half used), each audited with the default scorer (the run
file's scorer; the first audit trains its model on the dev split with half of
it held out, the others reuse that model) and with `ssim`, all logged in one
audit log so their p-values are corrected together (Holm).
attribute: a 3-subset benchmark (`build_subsets`, cached in
data/subsets-<level>-seed<seed>) is attributed with a model trained on its
dev split, against its null reals and its truth.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from fingerprint.benchdata.cases import build_audit_case, build_subsets, select_audit_case
from fingerprint.benchdata.synth import LEVELS, SynthConfig, run_synth
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json
from fingerprint.tasks.attribute import AttributeConfig, run_attribute
from fingerprint.tasks.audit import AuditConfig, default_scorer, run_audit
from fingerprint.tasks.configs import DemoConfig, RunConfig, RunOptions
from fingerprint.tasks.pipeline import run_pipeline

log = logging.getLogger(__name__)

#: the demo's audit cases: (folder, case, fraction)
CASES = (("used", "used", None), ("not_used", "not_used", None), ("partial", "partial", 0.5))
#: candidate and reference sizes of the demo's audits per level (50 / 100 where a level is not listed)
SIZES = {"tiny": (10, 20)}
#: the comparison scorer every demo audit is also run with
COMPARISON_SCORER = "ssim"


def _cached(data_dir: Path, level: str, rebuild: bool) -> bool:
    """True when data_dir holds a finished build of `level` (an error for another level)."""
    if rebuild or not (data_dir / "synth.json").is_file():
        return False
    cached = read_json(data_dir / "synth.json").get("level")
    if cached != level:
        raise FingerprintError(f"{data_dir}: holds a '{cached}' benchmark, not '{level}' (use demo.rebuild_data)")
    log.info("using the cached benchmark in %s (level %s)", data_dir, level)
    return True


def _model_options(cfg: DemoConfig) -> dict[str, Any]:
    """Options every demo audit / attribution shares; images are packed at the level's own size."""
    size = LEVELS[cfg.level].get("image_size", 256)
    return {
        "seed": cfg.seed, "threads": cfg.threads, "batch_size": cfg.batch_size, "index_factory": cfg.index_factory,
        "epochs": cfg.epochs, "model_image_size": cfg.image_size, "image_size": size, "force": True,
    }  # fmt: skip


def run_audit_demo(cfg: DemoConfig) -> dict:
    """Build (or reuse) an audit-case benchmark, audit its three cases with two scorers; return the verdicts."""
    data = Path(cfg.data_dir or f"data/audit-{cfg.level}-seed{cfg.seed}")
    n_c, n_r = SIZES.get(cfg.level, (50, 100))
    if not _cached(data, cfg.level, cfg.rebuild_data):
        build_audit_case(data, case="used", n_candidate=n_c, n_reference=n_r, level=cfg.level, seed=cfg.seed,
                         force=data.exists())  # fmt: skip
    out = Path(cfg.out)
    log_file = out / "audits.jsonl"
    log_file.unlink(missing_ok=True)
    results, model = {}, None
    for folder, case, fraction in CASES:
        where = data / f"audit-{folder}"
        if not (where / "case.json").is_file():
            select_audit_case(data, where, case=case, fraction=fraction, n_candidate=n_c, n_reference=n_r,
                              seed=cfg.seed, force=True)  # fmt: skip
        for scorer in (default_scorer(), COMPARISON_SCORER):
            name = f"{folder}-{scorer}"
            a = AuditConfig(
                candidate=where / "candidate", reference=str(where / "reference"),
                generated=data / "test" / "generated_1", dev=data / "dev", out=out / name, scorer=scorer, name=name,
                audit_log=log_file, k=cfg.k, model=model if scorer == default_scorer() else None, **_model_options(cfg),
            )  # fmt: skip
            summary = run_audit(a)
            if scorer == default_scorer() and model is None:
                model = summary["conditions"]["model"] and Path(summary["conditions"]["model"])
            results[name] = summary["verdict"]
    return {"data_dir": str(data), "out": str(out), "audit_log": str(log_file), "verdicts": results}


def run_attribute_demo(cfg: DemoConfig) -> dict:
    """Build (or reuse) a 3-subset benchmark and attribute its generated pool; return the metrics."""
    data = Path(cfg.data_dir or f"data/subsets-{cfg.level}-seed{cfg.seed}")
    if not _cached(data, cfg.level, cfg.rebuild_data):
        build_subsets(data, n_subsets=3, level=cfg.level, seed=cfg.seed, force=data.exists())
    a = AttributeConfig(
        subsets=(str(data / "subsets"),), generated=data / "generated", null=data / "null",
        truth=data / "generated_truth.csv", dev=data / "dev", out=Path(cfg.out), k=cfg.k, **_model_options(cfg),
    )  # fmt: skip
    summary = run_attribute(a)
    return {"data_dir": str(data), "out": str(cfg.out), "counts": summary["counts"], "metrics": summary.get("metrics")}


def run_demo(cfg: DemoConfig) -> dict:
    """Build the built-in benchmark once (cached in data_dir), then run the pipeline on it (or the task's demo)."""
    if cfg.task != "membership":
        if cfg.out == Path("runs/demo"):
            cfg = dataclasses.replace(cfg, out=Path(f"runs/demo-{cfg.task}"))
        return run_audit_demo(cfg) if cfg.task == "audit" else run_attribute_demo(cfg)
    data_dir = Path(cfg.data_dir or f"data/benchmark-{cfg.level}-seed{cfg.seed}")
    if cfg.rebuild_data or not (data_dir / "synth.json").is_file():
        log.info("building the %s benchmark in %s (cached for later demos)", cfg.level, data_dir)
        run_synth(SynthConfig(out=data_dir, level=cfg.level, seed=cfg.seed, force=data_dir.exists()))
    else:
        params = read_json(data_dir / "synth.json")
        cached = params.get("level", params.get("params", {}).get("level"))
        if cached is not None and cached != cfg.level:
            raise FingerprintError(
                f"{data_dir}: holds a '{cached}' benchmark, not '{cfg.level}' (use demo.rebuild_data)"
            )
        log.info("using the cached benchmark in %s (level %s)", data_dir, cached)
    options = {f.name: getattr(cfg, f.name) for f in fields(RunOptions)}
    return run_pipeline(RunConfig(data_dir=data_dir, out=Path(cfg.out), **options))
