"""The evaluate stage: every score file (or official run file) against a truth file, with bootstrap intervals.

`run_evaluate(EvaluateConfig)` reads each input, aligns it with the truth by
key (a key on one side only is an error naming the file), and computes
`metrics.evaluate` at the threshold the score file's sidecar records, so the
metrics describe the labels the scorer actually wrote. The result is the
`metrics.json` of a run folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fingerprint.core.config import check_fields, exists_error, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import check_writable, write_json
from fingerprint.evaluation.metrics import align_truth, evaluate, read_truth
from fingerprint.evaluation.runfile import read_run_file
from fingerprint.evaluation.scorefiles import SCORE_HEADER, read_score_meta, read_scores

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvaluateConfig:
    """Options of the evaluate stage (`fingerprint evaluate`)."""

    SECTION = "evaluate"

    scores: tuple[Path, ...] = option(
        positional=True, help="score files (key,score,label) or run files (figure_id,label, no header)"
    )
    truth: Path = option(help="truth file: figure_id,label with 1 = used")
    out: Path | None = option(None, help="write every scorer's metrics here as JSON")
    n_boot: int = option(1000, min=0, help="bootstrap resamples for the 95%% intervals (0: none)")
    split: str = option("test", help="name of the evaluated split, stored in the JSON")
    seed: int = option(0, help="bootstrap seed")
    force: bool = option(False, help="replace the output if it exists")

    def __post_init__(self) -> None:
        check_fields(self)


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """{scorer name (file stem): evaluate dict}; written (with split, truth, n_boot, seed) to `cfg.out` if set."""
    if cfg.out and Path(cfg.out).exists() and not cfg.force:
        raise exists_error(cfg, cfg.out)
    if cfg.out:
        check_writable(Path(cfg.out).parent)
    truth = read_truth(cfg.truth)
    results: dict[str, dict] = {}
    for path in cfg.scores:
        name = Path(path).stem
        if name in results:
            raise FingerprintError(f"{path}: another input is also named {name!r}")
        results[name] = evaluate_file(path, truth, truth_path=str(cfg.truth), n_boot=cfg.n_boot, seed=cfg.seed)
    if cfg.out:
        doc = {"split": cfg.split, "truth": str(cfg.truth), "n_boot": cfg.n_boot, "seed": cfg.seed, "scorers": results}
        write_json(cfg.out, doc)
        log.info("wrote %s", cfg.out)
    return results


def _is_score_file(path: Path) -> bool:
    if not path.is_file():
        raise FingerprintError(f"{path}: file not found")
    with open(path, errors="replace") as f:
        first = f.readline()
    return [c.strip() for c in first.split(",")] == SCORE_HEADER


def evaluate_file(path: str | Path, truth: dict[str, int], *, truth_path: str, n_boot: int, seed: int) -> dict:
    """metrics.evaluate for one score or run file; the threshold comes from the score file's sidecar."""
    path = Path(path)
    if _is_score_file(path):
        table = read_scores(path)
        keys, scores, labels = table.keys, table.scores, table.labels
        threshold = (read_score_meta(path) or {}).get("threshold")
    else:
        run = read_run_file(path)
        keys, scores, labels, threshold = list(run), None, list(run.values()), None
    y_true = align_truth(keys, truth, source=str(path), truth_path=truth_path)
    return evaluate(y_true, scores, labels, threshold=threshold, n_boot=n_boot, seed=seed)
