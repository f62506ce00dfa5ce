"""The report stage: one self-contained HTML report and a Markdown summary of a run folder (`run_report`).

Sections, the answer first: the verdict (the scorer that wrote run.csv, its
test ROC-AUC with interval, kappa, balanced accuracy, share labelled used,
margin over the best untrained baseline, and warnings), ROC curves
(scores/*.csv + the truth), neighbour strips (a real image beside its top-k
generated neighbours) for the most confident hits and misses
(scores/neighbours.npz + shards); then every scorer's and comparator's
metrics with intervals (metrics.json, compare/cv.json), per-class score
histograms, the dendrogram and cluster metrics (cluster/), the audit and
attribution sections where their outputs exist; last the training curves
(model/train_log.jsonl), the data set counts and sample images (shards),
and the run folder's parts with one timing per stage (log.jsonl). The data comes from `report.data`, the figures from
`report.figures`, the HTML/Markdown from `report.html`. A missing or broken
optional part becomes a visible note in its section, never a crash.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fingerprint.core.config import check_fields, exists_error, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import check_writable, write_text
from fingerprint.core.locks import locks_folder
from fingerprint.core.logs import JsonlLogger
from fingerprint.report.data import RunInputs, read_inputs
from fingerprint.report.html import Section, render_html, render_markdown
from fingerprint.report.sections import (
    section_clustering,
    section_comparators,
    section_dataset,
    section_histograms,
    section_metrics,
    section_roc,
    section_run,
    section_strips,
    section_training,
    section_verdict,
)
from fingerprint.report.tasks import task_sections

log = logging.getLogger(__name__)

#: errors a broken optional part may raise; the report turns them into a note.
PART_ERRORS = (FingerprintError, OSError, ValueError, KeyError, json.JSONDecodeError)


@dataclass(kw_only=True)
class ReportConfig:
    """Options of the report stage (`fingerprint report`)."""

    SECTION = "report"

    run_dir: Path = option(
        positional=True, metavar="RUN_DIR", help="run folder (fingerprint run, or the stages' outputs)"
    )
    truth: Path | None = option(
        None, help="truth file figure_id,label for the test split (default: RUN_DIR/test_truth.csv)"
    )
    out_dir: Path | None = option(None, help="where report.html and report.md go (default: RUN_DIR)")
    samples_per_group: int = option(4, min=1, help="sample images shown per split and role/label")
    strip_scorer: str = option("relation", help="scorer whose hits and misses get neighbour strips")
    top_n: int = option(3, min=1, help="strips per category (true positives, false positives, false negatives)")
    strip_k: int = option(5, min=1, help="generated neighbours per strip")
    seed: int = option(0, help="picks the sample images")
    force: bool = option(False, help="replace an existing report")

    def __post_init__(self) -> None:
        check_fields(self)


@locks_folder(lambda cfg: cfg.run_dir, "fingerprint report", create=False)
def run_report(cfg: ReportConfig) -> tuple[Path, Path]:
    """Write report.html and report.md for `cfg.run_dir`; returns their paths (and logs the stage)."""
    t0 = time.perf_counter()
    html_path, md_path = build_report(cfg)
    JsonlLogger(Path(cfg.run_dir) / "log.jsonl").log(
        stage="report", seconds=round(time.perf_counter() - t0, 3), html_bytes=html_path.stat().st_size
    )
    return html_path, md_path


def build_report(cfg: ReportConfig) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` for `cfg.run_dir` (into `cfg.out_dir`, default the run folder).

    The neighbour strips follow `cfg.strip_scorer`, showing its `top_n` most
    confident true positives, false positives and false negatives with
    `strip_k` neighbours each. Same run folder + seed = byte-identical files.
    """
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise FingerprintError(f"{run_dir}: run folder not found")
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else run_dir
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    for p in (html_path, md_path):
        if p.exists() and not cfg.force:
            raise exists_error(cfg, p)
    check_writable(out_dir)
    run = read_inputs(run_dir, cfg.truth)
    builders = section_builders(run, cfg)
    sections = [_guard(i, t, fn) for i, t, fn in builders]
    title = f"fingerprint report: {run_dir.resolve().name}"
    write_text(html_path, render_html(title, sections))
    write_text(md_path, render_markdown(title, sections))
    n_notes = sum(len(s.notes) for s in sections)
    log.info("report: wrote %s and %s (%d notes)", html_path, md_path, n_notes)
    return html_path, md_path


def section_builders(run: RunInputs, cfg: ReportConfig) -> list[tuple[str, str, Callable[[], Section]]]:
    """(id, title, builder) of every section, answer first: the verdict, ROC curves and neighbour strips, then
    the details, with the data-set inventory and the stage timings last.

    A folder with audit or attribution outputs and no membership scores
    (`fingerprint audit`, `fingerprint attribute`) opens with those sections
    instead and leaves out the membership ones.
    """
    strips = dict(scorer=cfg.strip_scorer, top_n=cfg.top_n, k=cfg.strip_k)
    answer = [
        ("verdict", "Verdict", lambda: section_verdict(run, seed=cfg.seed)),
        ("roc", "ROC curves", lambda: section_roc(run)),
        ("neighbours", "Nearest generated neighbours", lambda: section_strips(run, **strips)),
    ]
    details = [
        ("metrics", "Metrics of every scorer", lambda: section_metrics(run)),
        ("histograms", "Score histograms", lambda: section_histograms(run)),
        ("comparators", "Comparators (cross-validated on dev)", lambda: section_comparators(run)),
        ("clustering", "Hierarchical clustering", lambda: section_clustering(run)),
    ]
    inventory = [
        ("training", "Training", lambda: section_training(run)),
        ("dataset", "Data set", lambda: section_dataset(run, per_group=cfg.samples_per_group, seed=cfg.seed)),
        ("run", "Run folder and stage timings", lambda: section_run(run)),
    ]
    tasks = task_sections(run.run_dir)  # audit and attribution, when their outputs are in the folder
    d = run.run_dir
    membership = run.scores or run.score_problems or (d / "metrics.json").is_file() or (d / "run.csv").is_file()
    if tasks and not membership:
        return tasks + inventory
    return answer + tasks + details + inventory


def _guard(section_id: str, title: str, fn: Callable[[], Section]) -> Section:
    """Build one section; a broken optional input becomes a note in that section."""
    try:
        return fn()
    except PART_ERRORS as e:
        log.warning("report: %s: %s", section_id, e)
        s = Section(section_id, title)
        s.note(f"could not build this part: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return s
