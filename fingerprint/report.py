"""One self-contained HTML report (and a Markdown summary) of a run folder.

Everything a run made is in its folder (layout in docs/design.md), so the
report is rebuilt from the folder alone: data set counts and sample images
(shards), training curves (model/train_log.jsonl), every scorer's and
comparator's metrics with intervals (metrics.json, compare/cv.json), ROC curves
and per-class score histograms (scores/*.csv + the truth), the dendrogram and
cluster metrics (cluster/), and neighbour strips (a real image beside its top-k
generated neighbours) for the most confident hits and misses
(scores/neighbours.npz + shards). Images are embedded as base64 PNG and there
are no external resources, so the HTML opens offline. A missing optional part
is a visible note in the report, never a crash.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fingerprint.utils import FingerprintError, write_text

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "f1",
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "roc_auc",
    "kappa",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
)
METRIC_TITLES = {
    "f1": "F1",
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "specificity": "specificity",
    "roc_auc": "ROC-AUC",
    "kappa": "kappa",
    "tpr_at_1fpr": "TPR@1%FPR",
    "tpr_at_5fpr": "TPR@5%FPR",
}
#: errors a broken optional part may raise; the report turns them into a note.
PART_ERRORS = (FingerprintError, OSError, ValueError, KeyError, json.JSONDecodeError)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;padding:0 18px 40px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin:22px 0 4px}h2{font-size:1.25em;margin:30px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:1.05em;margin:18px 0 6px}
nav{font-size:.9em;margin:8px 0 14px}nav a{margin-right:12px;color:#0b57d0;text-decoration:none}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}th,td{border:1px solid #d8d8d8;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td small{color:#666}.best{background:#e7f4e4;font-weight:600}
.note{background:#fff6dc;border-left:4px solid #e0b100;padding:6px 10px;font-size:.9em}
figure{margin:10px 0}figcaption{font-size:.85em;color:#555}img{max-width:100%;height:auto}
.muted{color:#666;font-size:.9em}
"""


# --------------------------------------------------------------------------- building blocks


@dataclass
class Section:
    """One report section, kept as HTML and Markdown side by side."""

    id: str
    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text)

    def note(self, text: str) -> None:
        """A visible note (a missing optional part, a caveat)."""
        self.notes.append(text)
        self.html.append(f'<p class="note">{html.escape(text)}</p>')
        self.md.append(f"> Note: {text}")

    def heading(self, text: str) -> None:
        self.html.append(f"<h3>{html.escape(text)}</h3>")
        self.md.append(f"### {text}")

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[str]], *, best_rows: Sequence[int] = (), md_rows=None
    ) -> None:
        """A table; cells are plain text (a `(value, ci)` pair renders the interval small)."""

        def hcell(c: Any) -> str:
            if isinstance(c, tuple):
                return f"{html.escape(c[0])} <small>{html.escape(c[1])}</small>" if c[1] else html.escape(c[0])
            return html.escape(str(c))

        def mcell(c: Any) -> str:
            return (f"{c[0]} {c[1]}".strip() if isinstance(c, tuple) else str(c)).replace("|", "\\|")

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        best = ' class="best"'
        body = "".join(
            f"<tr{best if i in best_rows else ''}>" + "".join(f"<td>{hcell(c)}</td>" for c in r) + "</tr>"
            for i, r in enumerate(rows)
        )
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        md_rows = rows if md_rows is None else md_rows
        self.md.append(
            "\n".join(
                [
                    "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header),
                    *("| " + " | ".join(mcell(c) for c in r) + " |" for r in md_rows),
                ]
            )
        )

    def figure(self, png: bytes, caption: str, alt: str | None = None) -> None:
        """An embedded PNG (base64 data URI) with a caption."""
        data = base64.b64encode(png).decode("ascii")
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt or caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"*Figure (in report.html): {caption}*")


def fig_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes (no timestamp metadata, so reruns are byte-identical) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def gray_png(pixels: np.ndarray) -> bytes:
    """A uint8 HxW array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.{digits}f}"
    return str(v)


def _metric_cell(d: dict | None) -> tuple[str, str]:
    if not d or d.get("value") is None:
        return ("n/a", "")
    ci = (
        f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
        if d.get("ci_low") is not None and d.get("ci_high") is not None
        else ""
    )
    return (f"{d['value']:.3f}", ci)


# --------------------------------------------------------------------------- run-folder inputs


@dataclass
class RunInputs:
    """What the report reads from a run folder (each part None where missing, with the reason)."""

    run_dir: Path
    truth: dict[str, int] | None = None
    truth_source: str | None = None
    truth_problem: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)  # scorer -> score.ScoreTable
    score_meta: dict[str, dict] = field(default_factory=dict)  # scorer -> sidecar
    score_problems: list[str] = field(default_factory=list)
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split -> key -> pixels


def read_inputs(run_dir: Path, truth: str | Path | None) -> RunInputs:
    """Score files and the truth; an explicitly given truth file that is broken is an error, a default one a note."""
    from fingerprint.metrics import read_truth
    from fingerprint.score import read_score_meta, read_scores

    run = RunInputs(run_dir)
    if truth is not None:
        run.truth, run.truth_source = read_truth(truth), str(truth)
    elif (run_dir / "test_truth.csv").is_file():
        try:
            run.truth, run.truth_source = read_truth(run_dir / "test_truth.csv"), "test_truth.csv"
        except FingerprintError as e:
            run.truth_problem = str(e)
    else:
        run.truth_problem = "no truth for the test split (RUN_DIR/test_truth.csv or --truth): ROC curves, per-class histograms and hit/miss strips need it"
    for path in sorted((run_dir / "scores").glob("*.csv")):
        try:
            run.scores[path.stem] = read_scores(path)
            run.score_meta[path.stem] = read_score_meta(path) or {}
        except FingerprintError as e:
            run.score_problems.append(str(e))
    return run


def _truth_for(run: RunInputs, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(truth, scores, labels) of the keys of scorer `name` that the truth knows."""
    table = run.scores[name]
    have = np.array([k in run.truth for k in table.keys])
    if not have.any():
        return None
    y = np.array([run.truth[k] for k, h in zip(table.keys, have) if h])
    return y, table.scores[have], table.labels[have]


def load_images(shards_dir: Path, keys: set[str]) -> dict[str, np.ndarray]:
    """Pixels of `keys` from a shard folder, decoding only those samples and stopping once all are found."""
    from fingerprint.shards import decode_sample, iter_shard, shard_urls

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


def _split_rows(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(keys, roles, labels) of a split from its features file (cheap: the embeddings are not read), or None."""
    path = run_dir / "features" / f"{split}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["keys"].astype(str), z["roles"].astype(str), z["labels"].astype(str)


def _scan_groups(shards_dir: Path, n: int, limit: int = 5000) -> dict[str, list[str]]:
    """Without a features file: the first `n` keys of each role/label group in shard order (pack shuffles it)."""
    from fingerprint.shards import iter_shard, shard_urls

    groups: dict[str, list[str]] = {}
    seen = 0
    for url in shard_urls(shards_dir):
        for sample in iter_shard(url):
            rec = json.loads(sample.get("json", b"{}"))
            g = _group(rec.get("role", "?"), rec.get("label", "?"))
            if len(groups.setdefault(g, [])) < n:
                groups[g].append(sample["__key__"])
            seen += 1
            if seen >= limit:
                return groups
    return groups


def _group(role: str, label: str) -> str:
    return "generated" if role == "generated" else f"real, {label.replace('_', ' ')}"


# --------------------------------------------------------------------------- sections


def section_overview(run: RunInputs) -> Section:
    s = Section("overview", "Overview")
    d = run.run_dir
    parts = [
        ("shards", (d / "shards").is_dir()),
        ("model", (d / "model").is_dir()),
        ("features", (d / "features").is_dir()),
        ("scores", bool(run.scores)),
        ("metrics.json", (d / "metrics.json").is_file()),
        ("truth", run.truth is not None),
        ("compare", (d / "compare" / "cv.json").is_file()),
        ("cluster", (d / "cluster" / "cluster.json").is_file()),
        ("run.csv", (d / "run.csv").is_file()),
    ]
    s.para(f"Run folder: {d.name}. Parts found: " + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in parts) + ".")
    if run.truth is not None:
        s.para(f"Truth: {run.truth_source} ({len(run.truth)} images, {sum(run.truth.values())} used).")
    elif run.truth_problem:
        s.note(run.truth_problem)
    for p in run.score_problems:
        s.note(f"unreadable score file skipped: {p}")
    timings = _stage_timings(d / "log.jsonl")
    if timings:
        s.heading("Stage timings (log.jsonl)")
        s.table(["stage", "seconds", "details"], timings)
    return s


def _stage_timings(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "stage" in rec and "seconds" in rec:
            extra = ", ".join(
                f"{k} {_fmt(v)}"
                for k, v in rec.items()
                if k not in ("stage", "step", "seconds", "time")
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            )
            label = f"run: {rec['step']}" if rec.get("step") else str(rec["stage"])
            rows.append([label, f"{float(rec['seconds']):.1f}", extra])
    return rows


def section_dataset(run: RunInputs, *, per_group: int, seed: int) -> Section:
    """Counts per split and role/label, and a few sample images of each group."""
    from fingerprint.shards import read_manifest

    s = Section("dataset", "Data set")
    rows = []
    for split in ("dev", "test"):
        sdir = run.run_dir / "shards" / split
        counts: dict[str, int] | None = None
        if (sdir / "manifest.json").is_file():
            counts = read_manifest(sdir)["counts"]["role_label"]
        else:
            feats = _split_rows(run.run_dir, split)
            if feats is not None:
                _, roles, labels = feats
                pairs = [f"{r}/{lab}" for r, lab in zip(roles, labels)]
                counts = {p: pairs.count(p) for p in sorted(set(pairs))}
        if counts is None:
            s.note(f"no shards/{split}/manifest.json or features/{split}.npz: {split} counts unknown")
            continue
        rows += [[split, k.split("/")[0], k.split("/")[1].replace("_", " "), str(v)] for k, v in sorted(counts.items())]
        rows.append([split, "all", "", str(sum(counts.values()))])
    if rows:
        s.table(["split", "role", "label", "images"], rows)
    for split in ("dev", "test"):
        sdir = run.run_dir / "shards" / split
        if not sdir.is_dir():
            s.note(f"no shards/{split}: no sample images of the {split} split")
            continue
        feats = _split_rows(run.run_dir, split)
        rng = np.random.default_rng(seed)
        if feats is not None:
            keys, roles, labels = feats
            groups = {}
            for g in sorted({_group(r, lab) for r, lab in zip(roles, labels)}):
                members = [k for k, r, lab in zip(keys, roles, labels) if _group(r, lab) == g]
                groups[g] = sorted(rng.choice(members, size=min(per_group, len(members)), replace=False).tolist())
        else:
            groups = _scan_groups(sdir, per_group)
        pixels = load_images(sdir, {k for ks in groups.values() for k in ks})
        run.images.setdefault(split, {}).update(pixels)
        if not pixels:
            s.note(f"shards/{split}: none of the chosen sample images were found")
            continue
        s.figure(_sample_grid(groups, pixels, split), f"{split}: random samples of each group (seed {seed})")
    return s


def _sample_grid(groups: dict[str, list[str]], pixels: dict[str, np.ndarray], split: str) -> bytes:
    plt = _plt()
    ncols = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(len(groups), ncols, figsize=(1.6 * ncols, 1.8 * len(groups)), squeeze=False)
    for row, (g, keys) in zip(axes, sorted(groups.items())):
        for ax, key in zip(row, keys + [None] * (ncols - len(keys))):
            ax.axis("off")
            if key is not None and key in pixels:
                ax.imshow(pixels[key], cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{g}\n{key}", fontsize=7)
    fig.suptitle(split, fontsize=9)
    fig.tight_layout()
    return fig_png(fig)


def section_training(run: RunInputs) -> Section:
    """Loss and learning rate per logged step; validation AUC and loss per epoch."""
    s = Section("training", "Training")
    path = run.run_dir / "model" / "train_log.jsonl"
    if not path.is_file():
        s.note("no model/train_log.jsonl: no training curves")
        return s
    steps, epochs, final = [], [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            s.note(f"model/train_log.jsonl: line {n} is not JSON, skipped")
            continue
        if "step" in rec and "loss" in rec:
            steps.append(rec)
        elif "epochs" in rec:
            final = rec
        elif "epoch" in rec:
            epochs.append(rec)
    if not steps and not epochs:
        s.note("model/train_log.jsonl has no step or epoch records")
        return s
    plt = _plt()
    panels = [
        p
        for p in ("loss", "lr", "val")
        if (p != "val" and steps) or (p == "val" and any("val_auc" in e for e in epochs))
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.2), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if p == "loss":
            x = [r["step"] for r in steps]
            y = np.array([r["loss"] for r in steps], dtype=float)
            ax.plot(x, y, lw=0.8, alpha=0.45, label="logged loss")
            w = max(1, len(y) // 20)
            if w > 1:
                ax.plot(x[w - 1 :], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.6, label=f"mean of {w}")
            ax.set_xlabel("step"), ax.set_title("training loss", fontsize=10), ax.legend(fontsize=7)
        elif p == "lr":
            ax.plot([r["step"] for r in steps], [r.get("lr", np.nan) for r in steps], lw=1.2)
            ax.set_xlabel("step"), ax.set_title("learning rate", fontsize=10)
        else:
            ev = [e for e in epochs if "val_auc" in e]
            ax.plot([e["epoch"] for e in ev], [e["val_auc"] for e in ev], "o-", label="val AUC")
            ax.set_ylim(0, 1.02), ax.set_xlabel("epoch"), ax.set_title("validation", fontsize=10)
            handles = ax.get_lines()
            if any("val_loss" in e for e in ev):
                ax2 = ax.twinx()
                handles += ax2.plot(
                    [e["epoch"] for e in ev],
                    [e.get("val_loss", np.nan) for e in ev],
                    "s--",
                    color="tab:red",
                    label="val loss",
                )
                ax2.set_ylabel("val loss", fontsize=8)
            ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    s.figure(fig_png(fig), "training curves (model/train_log.jsonl)")
    if epochs:
        s.table(
            ["epoch", "mean loss", "val AUC", "val loss", "seconds"],
            [
                [
                    str(e["epoch"]),
                    _fmt(e.get("loss")),
                    _fmt(e.get("val_auc")),
                    _fmt(e.get("val_loss")),
                    _fmt(e.get("seconds"), 1),
                ]
                for e in epochs
            ],
        )
    if final:
        s.para(
            "Training summary: "
            + ", ".join(
                f"{k} {_fmt(v)}"
                for k, v in final.items()
                if k not in ("stage", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
            )
            + "."
        )
    return s


def _metrics_rows(
    results: dict[str, dict], thresholds: dict[str, Any] | None = None
) -> tuple[list[str], list[list], list[int]]:
    """Rows sorted by ROC-AUC; the threshold comes from the metrics or, failing that, the score file's sidecar."""
    thresholds = thresholds or {}
    header = ["scorer", *(METRIC_TITLES[m] for m in METRIC_COLUMNS), "threshold", "tn/fp/fn/tp"]

    def auc(name: str) -> float:
        v = (results[name].get("roc_auc") or {}).get("value")
        return -1.0 if v is None else v

    order = sorted(results, key=lambda n: (-auc(n), n))
    rows = []
    for name in order:
        r = results[name]
        cm = r.get("confusion_matrix") or {}
        cm_text = "/".join(_fmt(cm.get(k), 1) for k in ("tn", "fp", "fn", "tp")) if cm else "n/a"
        thr = r.get("threshold")
        thr = thresholds.get(name) if thr is None else thr
        rows.append([name, *(_metric_cell(r.get(m)) for m in METRIC_COLUMNS), _fmt(thr, 4), cm_text])
    f1s = [(r.get("f1") or {}).get("value") for r in (results[n] for n in order)]
    best = [i for i, v in enumerate(f1s) if v is not None and v == max(x for x in f1s if x is not None)]
    return header, rows, best


def section_metrics(run: RunInputs) -> Section:
    """metrics.json: every scorer on the test split (and dev numbers where known), with 95% intervals."""
    from fingerprint.utils import read_json

    s = Section("metrics", "Metrics")
    path = run.run_dir / "metrics.json"
    if not path.is_file():
        s.note("no metrics.json (written by 'fingerprint evaluate' / 'fingerprint run' when the truth is known)")
        return s
    data = read_json(path)
    for key, title in (
        ("scorers", f"{data.get('split', 'test')} split"),
        ("dev", "development split (cross-validated / calibration)"),
    ):
        results = data.get(key) or {}
        if not results:
            continue
        s.heading(title)
        sidecar = {n: m.get("threshold") for n, m in run.score_meta.items()} if key == "scorers" else {}
        header, rows, best = _metrics_rows(results, sidecar)
        s.table(header, rows, best_rows=best)
    if run.truth:
        p = sum(run.truth.values()) / len(run.truth)
        s.para(
            f"Reference: labelling every image 'used' gives F1 {2 * p / (1 + p):.3f} and accuracy {p:.3f} on this truth; "
            "ROC-AUC and TPR at low FPR cannot be gamed that way. Rows are sorted by ROC-AUC; the best F1 is highlighted."
        )
    return s


def section_comparators(run: RunInputs) -> Section:
    """compare/cv.json: the ranked comparators with cross-validated metrics on dev."""
    from fingerprint.utils import read_json

    s = Section("comparators", "Comparators (cross-validated on dev)")
    path = run.run_dir / "compare" / "cv.json"
    if not path.is_file():
        s.note("no compare/cv.json (run 'fingerprint compare')")
        return s
    cv = read_json(path)
    cfg = cv.get("config", {})
    s.para(
        f"{cfg.get('folds')}-fold x {cfg.get('repeats')} stratified CV on {cv.get('n_dev')} labelled dev images; "
        f"features: {', '.join(cfg.get('features', []))}; mode: {cfg.get('mode')}; ranked by {cfg.get('rank_by')}; "
        f"best: {cv.get('best')}. Values are means over repeats with mean 95% bootstrap bounds."
    )
    metrics = ("roc_auc", "f1", "accuracy", "kappa", "tpr_at_5fpr")
    rows = [
        [
            str(i),
            name,
            *(_metric_cell(cv["cv"][name].get(m)) for m in metrics),
            _fmt(cv.get("seconds", {}).get(name), 1),
        ]
        for i, name in enumerate(cv.get("ranking", []), 1)
    ]
    s.table(
        ["rank", "comparator", *(METRIC_TITLES[m] for m in metrics), "CV seconds"], rows, best_rows=[0] if rows else []
    )
    s.para(
        "Caveat: if the embedding model was trained on these same dev images, dev CV numbers are optimistic; the test metrics are the honest ones."
    )
    return s


def section_roc(run: RunInputs) -> Section:
    """ROC curves of every scorer on one plot."""
    from sklearn.metrics import roc_auc_score, roc_curve

    s = Section("roc", "ROC curves")
    if not run.scores:
        s.note("no score files in scores/")
        return s
    if run.truth is None:
        s.note("no truth: ROC curves need it")
        return s
    plt = _plt()
    curves = []
    for name in run.scores:
        t = _truth_for(run, name)
        if t is None or len(np.unique(t[0])) < 2:
            s.note(f"scores/{name}.csv: no keys with both classes in the truth, left out")
            continue
        y, sc, _ = t
        if len(y) < len(run.scores[name].keys):
            s.note(
                f"scores/{name}.csv: {len(run.scores[name].keys) - len(y)} key(s) not in the truth, left out of its curve"
            )
        fpr, tpr, _ = roc_curve(y, sc)
        curves.append((roc_auc_score(y, sc), name, fpr, tpr))
    if not curves:
        return s
    curves.sort(key=lambda c: (-c[0], c[1]))
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for i, (auc, name, fpr, tpr) in enumerate(curves):
        ax.plot(fpr, tpr, lw=1.6 if i < 3 else 1.0, color=cmap(i % cmap.N), label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="0.5", lw=1)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate"), ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    s.figure(fig_png(fig), f"ROC curves of {len(curves)} scorers against {run.truth_source}")
    return s


def section_histograms(run: RunInputs) -> Section:
    """Score distributions of used and not-used images per scorer, with each scorer's threshold."""
    s = Section("histograms", "Score histograms")
    if not run.scores:
        s.note("no score files in scores/")
        return s
    plt = _plt()
    names = list(run.scores)
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        table = run.scores[name]
        bins = np.histogram_bin_edges(table.scores, bins=20)
        t = _truth_for(run, name) if run.truth else None
        if t is not None:
            y, sc, _ = t
            ax.hist(sc[y == 1], bins=bins, alpha=0.6, color="tab:red", label="used")
            ax.hist(sc[y == 0], bins=bins, alpha=0.6, color="tab:blue", label="not used")
        else:
            ax.hist(table.scores, bins=bins, color="0.5", label="all")
        thr = run.score_meta.get(name, {}).get("threshold")
        if isinstance(thr, (int, float)):
            ax.axvline(thr, color="k", ls="--", lw=1, label="threshold")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    if run.truth is None:
        s.note("no truth: histograms show all scores together")
    s.figure(fig_png(fig), "score histograms per scorer (used vs not used where the truth is known; dashed: threshold)")
    return s


def section_clustering(run: RunInputs) -> Section:
    """The cluster stage's metrics, composition and dendrogram."""
    from fingerprint.utils import read_json

    s = Section("clustering", "Hierarchical clustering")
    cdir = run.run_dir / "cluster"
    if not (cdir / "cluster.json").is_file():
        s.note("no cluster output (cluster/cluster.json; run 'fingerprint cluster')")
        return s
    res = read_json(cdir / "cluster.json")
    cfg = res.get("config", {})
    s.para(
        f"{cfg.get('method')} linkage, {cfg.get('metric')} distance, cut into {cfg.get('n_clusters')} clusters"
        + (", real and generated images together." if cfg.get("include_generated") else ", real images only.")
    )
    keys = (
        "n_real",
        "n_generated",
        "cophenetic_correlation",
        "silhouette",
        "ari_used",
        "nmi_used",
        "ari_role",
        "nmi_role",
    )
    splits = [sp for sp in ("dev", "test") if sp in res]
    s.table(["metric", *splits], [[k, *(_fmt(res[sp]["metrics"].get(k)) for sp in splits)] for k in keys])
    if "dev" in res:
        s.heading("dev clusters")
        s.table(
            ["cluster", "n", "generated", "used", "not used", "real unknown", "generated share"],
            [
                [
                    str(r["cluster"]),
                    str(r["n"]),
                    str(r["generated"]),
                    str(r["used"]),
                    str(r["not_used"]),
                    str(r["real_unknown"]),
                    f"{r['generated_share']:.3f}",
                ]
                for r in res["dev"]["composition"]
            ],
        )
    for fname, cap in (("dendrogram.png", "dev dendrogram"), ("dendrogram_test.png", "test dendrogram")):
        if (cdir / fname).is_file():
            s.figure(
                (cdir / fname).read_bytes(), f"{cap} (cluster/{fname}; leaves: points | generated, used, not used)"
            )
        elif fname == "dendrogram.png":
            s.note(f"no cluster/{fname}")
    sc = res.get("scorer")
    if sc:
        s.para(
            f"Cluster scorer: share of generated images in a real image's cluster; threshold {sc['threshold']:.4f} ({sc['rule']})."
        )
    return s


def section_strips(run: RunInputs, *, scorer: str, top_n: int, k: int) -> Section:
    """Real images beside their top-k generated neighbours for the most confident hits and misses of `scorer`."""
    s = Section("neighbours", "Nearest generated neighbours")
    nb_path = run.run_dir / "scores" / "neighbours.npz"
    if not nb_path.is_file():
        s.note("no scores/neighbours.npz (written by 'fingerprint score' for the trained scorer): no neighbour strips")
        return s
    if scorer not in run.scores:
        s.note(f"no scores/{scorer}.csv: no neighbour strips")
        return s
    with np.load(nb_path, allow_pickle=False) as z:
        nb = {name: z[name] for name in z.files}
    for a in ("keys", "neighbour_keys", "neighbour_sims"):
        if a not in nb:
            raise FingerprintError(f"{nb_path}: missing array '{a}'")
    row_of = {str(key): i for i, key in enumerate(nb["keys"])}
    table = run.scores[scorer]
    score = dict(zip(table.keys, table.scores))
    label = dict(zip(table.keys, table.labels))
    keys = [key for key in table.keys if key in row_of]
    groups: list[tuple[str, list[str]]] = []
    if run.truth is not None:
        keys = [key for key in keys if key in run.truth]
        cats = [
            ("true positives (used, predicted used), highest scores", 1, 1, True),
            ("false positives (not used, predicted used), highest scores", 0, 1, True),
            ("false negatives (used, predicted not used), lowest scores", 1, 0, False),
        ]
        for title, t, p, high in cats:
            members = sorted(
                (key for key in keys if run.truth[key] == t and label[key] == p),
                key=lambda q: (-score[q] if high else score[q], q),
            )
            groups.append((title, members[:top_n]))
    else:
        s.note("no truth: strips show the most confident 'used' and 'not used' predictions instead of hits and misses")
        ranked = sorted(keys, key=lambda q: (-score[q], q))
        groups = [
            ("most confident 'used' predictions", ranked[:top_n]),
            ("most confident 'not used' predictions", ranked[::-1][:top_n]),
        ]
    kk = min(k, nb["neighbour_keys"].shape[1])
    wanted = {key for _, ms in groups for key in ms}
    wanted |= {str(n) for key in wanted for n in nb["neighbour_keys"][row_of[key], :kk]}
    sdir = run.run_dir / "shards" / "test"
    pixels = dict(run.images.get("test", {}))
    missing = wanted - set(pixels)
    if sdir.is_dir():
        pixels.update(load_images(sdir, missing))
    else:
        s.note("no shards/test: strips show keys and similarities without images")
    pair = nb.get("pair_scores")
    for title, members in groups:
        s.heading(title)
        if not members:
            s.para("none")
            continue
        rows = [
            [
                key,
                f"{score[key]:.4f}",
                ", ".join(
                    f"{nb['neighbour_keys'][row_of[key], j]} ({nb['neighbour_sims'][row_of[key], j]:.3f})"
                    for j in range(kk)
                ),
            ]
            for key in members
        ]
        if any(key in pixels for key in members):
            s.figure(
                _strip_figure(members, nb, row_of, kk, pixels, score, pair),
                f"{title}: real image, then its {kk} nearest generated images "
                "(cosine similarity; relation probability p where known)",
            )
        s.table(["real image", f"{scorer} score", "neighbours (cosine)"], rows)
    return s


def _strip_figure(members, nb, row_of, k, pixels, score, pair) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(len(members), k + 1, figsize=(1.45 * (k + 1), 1.75 * len(members)), squeeze=False)
    for row, key in zip(axes, members):
        i = row_of[key]
        cells = [(key, f"{key}\nscore {score[key]:.3f}")]
        for j in range(k):
            cap = f"{nb['neighbour_keys'][i, j]}\nsim {nb['neighbour_sims'][i, j]:.3f}" + (
                f", p {pair[i, j]:.3f}" if pair is not None else ""
            )
            cells.append((str(nb["neighbour_keys"][i, j]), cap))
        for ax, (ck, cap) in zip(row, cells):
            ax.set_xticks([]), ax.set_yticks([])
            if ck in pixels:
                ax.imshow(pixels[ck], cmap="gray", vmin=0, vmax=255)
            else:
                ax.text(0.5, 0.5, "image\nnot found", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_title(cap, fontsize=6.5)
        for side in row[0].spines.values():
            side.set_color("tab:red"), side.set_linewidth(2)
    fig.tight_layout()
    return fig_png(fig)


# --------------------------------------------------------------------------- the report


def _guard(section_id: str, title: str, fn: Callable[[], Section]) -> Section:
    """Build one section; a broken optional input becomes a note in that section."""
    try:
        return fn()
    except PART_ERRORS as e:
        log.warning("report: %s: %s", section_id, e)
        s = Section(section_id, title)
        s.note(f"could not build this part: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return s


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One HTML document: inline CSS, in-page navigation, no external resources."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{"".join(s.html)}</section>' for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</body>\n</html>\n"
    )


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    parts = [f"# {title}", ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        for block in s.md:
            parts += [block, ""]
    return "\n".join(parts).rstrip() + "\n"


def build_report(
    run_dir: str | Path,
    *,
    truth: str | Path | None = None,
    out_dir: str | Path | None = None,
    samples_per_group: int = 4,
    strip_scorer: str = "relation",
    top_n: int = 3,
    strip_k: int = 5,
    seed: int = 0,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` for `run_dir` (into `out_dir`, default the run folder); returns their paths.

    `truth` defaults to RUN_DIR/test_truth.csv. The neighbour strips follow
    `strip_scorer`, showing its `top_n` most confident true positives, false
    positives and false negatives with `strip_k` neighbours each. Same run
    folder + seed = byte-identical files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FingerprintError(f"{run_dir}: run folder not found")
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    for p in (html_path, md_path):
        if p.exists() and not force:
            raise FingerprintError(f"{p}: already exists (use --force to replace it)")
    if samples_per_group < 1 or top_n < 1 or strip_k < 1:
        raise FingerprintError("samples per group, top-n and strip-k must be >= 1")
    _plt()
    run = read_inputs(run_dir, truth)
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("overview", "Overview", lambda: section_overview(run)),
        ("dataset", "Data set", lambda: section_dataset(run, per_group=samples_per_group, seed=seed)),
        ("training", "Training", lambda: section_training(run)),
        ("metrics", "Metrics", lambda: section_metrics(run)),
        ("comparators", "Comparators (cross-validated on dev)", lambda: section_comparators(run)),
        ("roc", "ROC curves", lambda: section_roc(run)),
        ("histograms", "Score histograms", lambda: section_histograms(run)),
        ("clustering", "Hierarchical clustering", lambda: section_clustering(run)),
        (
            "neighbours",
            "Nearest generated neighbours",
            lambda: section_strips(run, scorer=strip_scorer, top_n=top_n, k=strip_k),
        ),
    ]
    sections = [_guard(i, t, fn) for i, t, fn in builders]
    title = f"fingerprint report: {run_dir.resolve().name}"
    write_text(html_path, render_html(title, sections))
    write_text(md_path, render_markdown(title, sections))
    n_notes = sum(len(s.notes) for s in sections)
    log.info("report: wrote %s and %s (%d notes)", html_path, md_path, n_notes)
    return html_path, md_path
