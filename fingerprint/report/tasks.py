"""The report's sections for the collection-level questions, present only when their outputs are in the folder.

Audit (audit.json + audit_scores.csv from `fingerprint audit`): the verdict,
the test, effect size and fraction used with their intervals, candidate vs
reference score distributions, the power curve with the candidate size
needed for p < alpha, and the audit log with corrected p-values.
Attribution (attribution.json from `fingerprint attribute`): counts per
label, the confusion matrix and accuracy against chance when the truth was
given, and one strip per subset (its top-scoring generated images, each
beside its nearest real image of that subset).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json
from fingerprint.report.data import load_images
from fingerprint.report.figures import fig_png
from fingerprint.report.html import Section, fmt

#: score groups of an audit, the order and colours they are drawn in
AUDIT_GROUPS = {"candidate": "tab:red", "reference": "tab:blue", "dev_used": "tab:orange", "dev_not_used": "tab:cyan"}


def task_sections(run_dir: Path) -> list[tuple[str, str, Callable[[], Section]]]:
    """(id, title, builder) of the audit and attribution sections whose outputs exist in `run_dir`."""
    run_dir = Path(run_dir)
    out = []
    if (run_dir / "audit.json").is_file():
        out.append(("audit", "Dataset-level audit", lambda: section_audit(run_dir)))
    if (run_dir / "attribution.json").is_file():
        out.append(("attribution", "Attribution to subsets", lambda: section_attribution(run_dir)))
    return out


def read_audit_scores(path: Path) -> dict[str, np.ndarray]:
    """audit_scores.csv -> {group: scores}."""
    if not path.is_file():
        raise FingerprintError(f"{path}: not found")
    groups: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["group"], []).append(float(row["score"]))
    return {g: np.asarray(v) for g, v in groups.items()}


def audit_scores_figure(groups: dict[str, np.ndarray], title: str) -> bytes:
    """Histograms and empirical CDFs of each group's scores on one axis each."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    allv = np.concatenate(list(groups.values()))
    bins = np.histogram_bin_edges(allv, bins=min(30, max(8, len(allv) // 8)))
    for g, colour in AUDIT_GROUPS.items():
        if g not in groups:
            continue
        v = np.sort(groups[g])
        label = f"{g.replace('_', ' ')} (n={len(v)})"
        ax1.hist(v, bins=bins, density=True, alpha=0.45, color=colour, label=label)
        ax2.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=colour, label=label)
    ax1.set_xlabel("membership score"), ax1.set_ylabel("density"), ax1.legend(fontsize=7)
    ax2.set_xlabel("membership score"), ax2.set_ylabel("share of images <= score"), ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig_png(fig)


def power_figure(power: dict, n_candidate: int) -> bytes:
    """Resampled power (+-1 MC SE) and Noether's curve against the candidate size; target and actual size marked."""
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    n, p, se = (np.asarray(power[k], dtype=float) for k in ("n", "power", "power_se"))
    ax.errorbar(n, p, yerr=se, fmt="o-", ms=3, lw=1.2, capsize=2, label=f"resampled ({power['n_rep']} audits per n)")
    ax.plot(n, power["power_noether"], "--", color="0.4", lw=1, label="Noether approximation")
    ax.axhline(power["target_power"], color="tab:green", lw=0.8, ls=":", label=f"target power {power['target_power']}")
    ax.axvline(n_candidate, color="tab:red", lw=0.8, ls=":", label=f"this candidate (n={n_candidate})")
    if power.get("n_required") is not None:
        ax.axvline(power["n_required"], color="tab:green", lw=1, label=f"n needed: {power['n_required']}")
    ax.set_xscale("log"), ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"candidate images (reference: {power['n_reference']})")
    ax.set_ylabel(f"P(p < {power['alpha']})")
    ax.set_title(f"n needed for p < {power['alpha']} at the measured effect (AUC {power['auc']:.3f})", fontsize=9)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    return fig_png(fig)


def _interval(v: float, lo: float, hi: float, digits: int = 3) -> tuple[str, str]:
    return (f"{v:.{digits}f}", f"[{lo:.{digits}f}, {hi:.{digits}f}]")


def section_audit(run_dir: Path) -> Section:
    """audit.json and audit_scores.csv: verdict, test, effect, fraction, distributions, power, audit log."""
    s = Section("audit", "Dataset-level audit")
    a = read_json(run_dir / "audit.json")
    s.para(a["verdict"])
    t, e, f, c = a["test"], a["effect"], a["fraction"], a["correction"]
    frac_name = "fraction used" + (
        " (lower bound: " + (f.get("why_bound") or "no dev split") + ")" if f["bound"] else ""
    )
    rows = [
        ["scorer", a["scorer"]["name"] + (" (the default: the run file's scorer)" if a["scorer"]["default"] else "")],
        ["test", f"{t['name']}, {t['method']} p-value"],
        ["U statistic", fmt(t["statistic"], 1)],
        ["p-value", f"{t['pvalue']:.3g}"],
        [f"{c['method']}-adjusted p over {c['m']} audit(s)", f"{c['adjusted_pvalue']:.3g} (alpha {c['alpha']})"],
        [f"effect size AUC ({e['ci']:.0%} {e['interval']})", _interval(e["auc"], e["low"], e["high"])],
        [f"{frac_name} ({f['ci']:.0%} percentile bootstrap)", _interval(f["fraction"], f["low"], f["high"], 2)],
        ["images", ", ".join(f"{g.replace('_', ' ')} {n}" for g, n in a["n"].items())],
    ]
    s.table(["", "value"], rows)
    try:
        groups = read_audit_scores(run_dir / "audit_scores.csv")
        cap = f"candidate vs reference scores ({a['scorer']['name']}): U {fmt(t['statistic'], 1)}, p {t['pvalue']:.3g}"
        s.figure(audit_scores_figure(groups, cap), cap + f", AUC {e['auc']:.3f} [{e['low']:.3f}, {e['high']:.3f}]")
    except (FingerprintError, KeyError, ValueError) as err:
        s.note(f"no score distributions: {err}")
    pw = a["power"]
    need = "not reached on the grid" if pw["n_required"] is None else str(pw["n_required"])
    s.figure(power_figure(pw, a["n"].get("candidate", 0)), f"power curve: candidate images needed: {need}")
    if c["m"] > 1:
        s.heading(f"audit log ({c['log']})")
        s.table(
            ["audit", "scorer", "p", f"{c['method']}-adjusted (m={c['m']})", "used"],
            [[x["name"], x["scorer"], f"{x['pvalue']:.3g}", f"{x['adjusted']:.3g}", "yes" if x["reject"] else "no"]
             for x in c["audits"]],
        )  # fmt: skip
    cond = a["conditions"]
    s.para(
        f"Conditions: every image scored in one call of {cond['scorer']} against one generated pool "
        f"({cond['generated_pool']}); reference: {cond.get('reference')}; "
        + (
            f"no candidate or reference image is among the real images of the model's training shards "
            f"({cond.get('model_training_shards')}, checked by content hash)."
            if cond.get("checked_against_training")
            else "no trained model involved, or the training-data check was skipped."
        )
    )
    return s


def confusion_figure(metrics: dict) -> bytes:
    """The confusion matrix as a heatmap: rows truth, columns predicted (subsets, then none)."""
    cm = np.asarray(metrics["confusion_matrix"])
    labels = metrics["labels"]
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.2))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "k")
    ax.set_xticks(range(len(labels)), labels, fontsize=8), ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted"), ax.set_ylabel("truth")
    fig.tight_layout()
    return fig_png(fig)


def example_strip(examples: list[dict], pixels: dict[str, np.ndarray], title: str) -> bytes:
    """Pairs (generated image, its nearest real image of the subset), side by side."""
    n = max(1, len(examples))
    fig, axes = plt.subplots(1, 2 * n, figsize=(1.5 * 2 * n, 1.9), squeeze=False)
    for i, ex in enumerate(examples):
        for j, (key, what) in enumerate(((ex["generated"], f"score {ex['score']:.3f}"), (ex["real"], "nearest real"))):
            ax = axes[0, 2 * i + j]
            ax.set_xticks([]), ax.set_yticks([])
            if key in pixels:
                ax.imshow(pixels[key], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{key}\n{what}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig_png(fig)


def section_attribution(run_dir: Path) -> Section:
    """attribution.json: settings, counts, confusion matrix and accuracy (with truth), example strips."""
    s = Section("attribution", "Attribution to subsets")
    a = read_json(run_dir / "attribution.json")
    thr = "none" if a["threshold"] is None else f"{a['threshold']:.4g}"
    sizes = ", ".join(f"{n} ({a['sizes'][n]})" for n in a["subsets"])
    s.para(
        f"{a['n_generated']} generated images, subsets {sizes}; "
        f"retrieval: {a['retrieval']}; pair score: {a['pair_score']}; aggregation: {a['agg']}; "
        f"'none' rule: {a['none_rule']} (alpha {a['alpha']}, threshold {thr}, {a['n_null']} null reals)."
    )
    s.table(["label", "generated images"], [[k, str(v)] for k, v in a["counts"].items()])
    m = a.get("metrics")
    if m:
        s.figure(confusion_figure(m), f"confusion matrix against {a.get('truth')} (rows: truth)")
        s.table(
            ["accuracy", "balanced accuracy", "kappa", "chance (majority)", "chance (kappa's expected)", "n"],
            [[fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["kappa"]), fmt(m["chance_majority"]),
              fmt(m["chance_expected"]), str(m["n"])]],
        )  # fmt: skip
    else:
        s.note("no truth given (attribute.truth): no confusion matrix")
    for name, examples in a["examples"].items():
        if not examples:
            s.para(f"{name}: no generated image attributed to it")
            continue
        try:
            pixels = load_images(Path(a["shards"]["generated"]), {ex["generated"] for ex in examples})
            pixels |= load_images(Path(a["shards"]["subsets"][name]), {ex["real"] for ex in examples})
        except FingerprintError as err:
            s.note(f"{name}: no example strip ({err})")
            continue
        cap = f"{name}: the top-scoring generated images attributed to it, each beside its nearest real image"
        s.figure(example_strip(examples, pixels, name), cap)
    return s
