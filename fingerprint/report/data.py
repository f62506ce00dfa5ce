"""The report's data layer: what a run folder holds, read without failing on missing parts.

Everything a run made is in its folder (layout in docs/design.md), so the
report is rebuilt from the folder alone: score files and their sidecars, the
truth, sample pixels from the shards (decoding only the samples shown),
split membership from the features files, stage timings from log.jsonl and
training records from model/train_log.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json
from fingerprint.data.shards import decode_sample, iter_shard, shard_urls
from fingerprint.embedding.features import SET_FILE, FeatureStore
from fingerprint.evaluation.metrics import read_truth
from fingerprint.evaluation.scorefiles import ScoreTable, read_score_meta, read_scores
from fingerprint.report.html import fmt


@dataclass
class RunInputs:
    """What the report reads from a run folder (each part None where missing, with the reason)."""

    run_dir: Path
    truth: dict[str, int] | None = None
    truth_source: str | None = None
    truth_problem: str | None = None
    scores: dict[str, ScoreTable] = field(default_factory=dict)  # scorer -> its score file
    score_meta: dict[str, dict] = field(default_factory=dict)  # scorer -> sidecar
    score_problems: list[str] = field(default_factory=list)
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split -> key -> pixels


def read_inputs(run_dir: Path, truth: str | Path | None) -> RunInputs:
    """Score files and the truth; an explicitly given truth file that is broken is an error, a default one a note."""
    run = RunInputs(run_dir)
    if truth is not None:
        run.truth, run.truth_source = read_truth(truth), str(truth)
    elif (run_dir / "test_truth.csv").is_file():
        try:
            run.truth, run.truth_source = read_truth(run_dir / "test_truth.csv"), "test_truth.csv"
        except FingerprintError as e:
            run.truth_problem = str(e)
    else:
        run.truth_problem = (
            "no truth for the test split (RUN_DIR/test_truth.csv or report.truth): "
            "ROC curves, per-class histograms and hit/miss strips need it"
        )
    for path in sorted((run_dir / "scores").glob("*.csv")):
        try:
            run.scores[path.stem] = read_scores(path)
            run.score_meta[path.stem] = read_score_meta(path) or {}
        except FingerprintError as e:
            run.score_problems.append(str(e))
    return run


def truth_for(run: RunInputs, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(truth, scores, labels) of the keys of scorer `name` that the truth knows."""
    table = run.scores[name]
    have = np.array([k in run.truth for k in table.keys])
    if not have.any():
        return None
    y = np.array([run.truth[k] for k, h in zip(table.keys, have) if h])
    return y, table.scores[have], table.labels[have]


def shards_of(run_dir: Path, split: str) -> Path | str | None:
    """Where a run read a split's shards: RUN/shards/<split>, or what `fingerprint run` was given (shards.json)."""
    packed = run_dir / "shards" / split
    if packed.is_dir():
        return packed
    given = run_dir / "shards.json"
    if given.is_file():
        found = read_json(given)
        if isinstance(found, dict) and found.get(split):
            return found[split]
    return None


def load_images(shards_dir: Path | str, keys: set[str]) -> dict[str, np.ndarray]:
    """Pixels of `keys` from a shard folder, decoding only those samples and stopping once all are found."""
    found: dict[str, np.ndarray] = {}
    if not keys:
        return found
    for url in shard_urls(shards_dir):
        for sample in iter_shard(url):
            if sample["__key__"] in keys:
                key, pixels, _ = decode_sample(sample)
                found[key] = pixels
                if len(found) == len(keys):
                    return found
    return found


def split_rows(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(keys, roles, labels) of a split from its features (folder or .npz; the embeddings are not read), or None."""
    folder = run_dir / "features" / split
    if (folder / SET_FILE).is_file():
        return FeatureStore.open(folder).rows()
    path = run_dir / "features" / f"{split}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["keys"].astype(str), z["roles"].astype(str), z["labels"].astype(str)


def split_meta(run_dir: Path, split: str) -> dict[str, Any]:
    """The `meta` record of a split's features (folder or .npz): image size, skip counts, ...; {} without features."""
    folder = run_dir / "features" / split
    if (folder / SET_FILE).is_file():
        return FeatureStore.open(folder).meta
    path = run_dir / "features" / f"{split}.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])) if "meta" in z.files else {}


def scan_groups(shards_dir: Path | str, n: int, limit: int = 5000) -> dict[str, list[str]]:
    """Without a features file: the first `n` keys of each role/label group in shard order (pack shuffles it)."""
    groups: dict[str, list[str]] = {}
    seen = 0
    for url in shard_urls(shards_dir):
        for sample in iter_shard(url):
            rec = json.loads(sample.get("json", b"{}"))
            g = group_name(rec.get("role", "?"), rec.get("label", "?"))
            if len(groups.setdefault(g, [])) < n:
                groups[g].append(sample["__key__"])
            seen += 1
            if seen >= limit:
                return groups
    return groups


def group_name(role: str, label: str) -> str:
    """How sample grids name a role/label group."""
    return "generated" if role == "generated" else f"real, {label.replace('_', ' ')}"


def stage_timings(path: Path) -> list[list[str]]:
    """Rows (stage, seconds, details) of log.jsonl, one per stage run.

    Under `fingerprint run` a stage logs twice: its own record (stage
    "score", with its numbers), then the run's record of it (step
    "score-fused-test", with the stage's whole time). The two become one
    row: the run's name and seconds with the stage's numbers. A stage run on
    its own keeps its own row, and the run's closing record is the total.
    """
    if not path.is_file():
        return []
    rows, pending = [], []
    for rec in _log_records(path):
        if rec.get("stage") != "run":
            if "seconds" in rec:
                pending.append(rec)
            continue
        if not rec.get("step"):
            rows += [_timing_row(str(r["stage"]), r) for r in pending]
            pending = []
            if "seconds" in rec:
                rows.append(_timing_row("run (total)", rec))
        elif "seconds" in rec:
            step = str(rec["step"])
            own = [r for r in pending if step == r["stage"] or step.startswith(f"{r['stage']}-")][-1:]
            rows += [_timing_row(str(r["stage"]), r) for r in pending if r not in own]
            rows.append(_timing_row(step, {**(own[0] if own else {}), "seconds": rec["seconds"]}))
            pending = []
    return rows + [_timing_row(str(r["stage"]), r) for r in pending]


def _log_records(path: Path) -> list[dict]:
    """The JSON object lines of a log (other lines skipped)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "stage" in rec:
            out.append(rec)
    return out


def _timing_row(label: str, rec: dict) -> list[str]:
    """(label, seconds, the record's other numbers)."""
    extra = ", ".join(
        f"{k} {fmt(v)}"
        for k, v in rec.items()
        if k not in ("stage", "step", "seconds", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    return [label, f"{float(rec['seconds']):.1f}", extra]


def training_records(path: Path) -> tuple[list[dict], list[dict], dict | None, list[str]]:
    """(step records, epoch records, final summary record, problems) of model/train_log.jsonl."""
    steps, epochs, final, problems = [], [], None, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"model/train_log.jsonl: line {n} is not JSON, skipped")
            continue
        if "step" in rec and "loss" in rec:
            steps.append(rec)
        elif "epochs" in rec:
            final = rec
        elif "epoch" in rec:
            epochs.append(rec)
    return steps, epochs, final, problems


def read_neighbours(path: Path) -> dict[str, np.ndarray]:
    """scores/neighbours.npz as a dict of arrays; the arrays the strips need must be there."""
    with np.load(path, allow_pickle=False) as z:
        nb = {name: z[name] for name in z.files}
    for a in ("keys", "neighbour_keys", "neighbour_sims"):
        if a not in nb:
            raise FingerprintError(f"{path}: missing array '{a}'")
    return nb
