"""Detection quality of the run-file scorer against every baseline of the same run, on several data folders.

For each data folder (the 2023 layout + test_truth.csv) it runs the package
(`pipeline.run_pipeline`, the same stages as `fingerprint run`; comparators,
clustering and the report off; a finished run folder is reused), then reads
the run's metrics: test ROC-AUC with stratified bootstrap 95% intervals of
the fused scorer (run.csv) and of every baseline, its margin over the best
untrained baseline, kappa, balanced accuracy and the share labelled used.
`--ablations` refits the fusion stage on the run's saved profiles with one
lever changed at a time (learned metric, aligned evidence, calibration, sign
constraint, group selection, standardisation, the px32 input size, the
random-ResNet embedding group, threshold rules), which costs seconds per
variant; `--pretrain` adds a second run per folder with the SSCD-style
pretraining stage on. Writes OUT/quality.json and OUT/quality.md.

    nice python benchmarks/quality_table.py DATA_DIR... --runs RUNS --out OUT [--ablations] [--pretrain]

Run the six built-in runs as `medium-s0..2 hard-s0..2` folders (`fingerprint
synth DIR --level L --seed S`); a name ending in `-sN` runs with seed N.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import load_average, machine_info, portable  # noqa: E402

from fingerprint.core.files import read_json, write_json, write_text  # noqa: E402
from fingerprint.core.logs import setup_logging  # noqa: E402
from fingerprint.evaluation.metrics import align_truth, apply_threshold, evaluate, read_truth  # noqa: E402
from fingerprint.membership.fuse import FuseConfig, fused_scores, load_fusion, run_fuse  # noqa: E402
from fingerprint.membership.profile import ProfileConfig, load_profile, run_profile, save_profile  # noqa: E402
from fingerprint.membership.scorers import untrained_scorers  # noqa: E402
from fingerprint.membership.spaces import DEFAULT_SPACES  # noqa: E402
from fingerprint.tasks.configs import RunConfig  # noqa: E402
from fingerprint.tasks.pipeline import run_pipeline  # noqa: E402

BASELINES = ("dcr", "ssim", "emb_nn", "emb_topk")
SIX = ("medium-s0", "medium-s1", "medium-s2", "hard-s0", "hard-s1", "hard-s2")


def _spaces(drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """FuseConfig change: the default spaces without `drop`, plus `add`."""
    return {"spaces": tuple(s for s in DEFAULT_SPACES if s not in drop) + add}


#: one lever changed at a time: name -> (what, FuseConfig changes)
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": (f"the run's fused scorer (px64 anchor; + {', '.join(DEFAULT_SPACES[1:])} by dev CV)", {}),
    "no_learned": ("learned metric off (no k32x)", _spaces(("k32x",))),
    "no_align": ("aligned pixel evidence off (no al64)", _spaces(("al64",))),
    "no_register": ("free-form registered distance off (no ff32)", _spaces(("ff32",))),
    "no_learned_align": ("learned metric, aligned and registered evidence off", _spaces(("k32x", "al64", "ff32"))),
    "no_calibration": ("calibration off (distances to the generated pool only)", {"calibrated": False}),
    "px64_only": ("fusion over the px64 profile only (no selection)", {"spaces": ("px64",)}),
    "fusion_off": ("no fit: the untrained calibrated rule px64 cal_3", {"fixed": "px64:cal_3"}),
    "sign_free": ("sign constraint off (plain L2 logistic regression)", {"nonneg": False}),
    "robust_z": ("robust z instead of rank standardisation of the columns", {"standardise": "robust"}),
    "gain_0.01": ("selection gain threshold 0.01 instead of 0.02", {"min_gain": 0.01}),
    "free_start": ("selection not anchored at px64", {"anchor": ()}),
    "px32_anchor": (
        "input size: the anchor at 32 px instead of 64 px",
        {"spaces": ("px32",) + DEFAULT_SPACES[1:], "anchor": ("px32",)},
    ),
    "with_emb": ("+ emb group (the run model's random ResNet-18 embedding, 128 px)", _spaces(add=("emb",))),
    "rule_balacc": ("threshold rule: balanced accuracy", {"rule": "balanced_accuracy"}),
    "rule_max_f1": ("threshold rule: max-F1", {"rule": "max_f1"}),
    "scale_rank": ("threshold transferred on rank-gauss scores instead of robust z", {"scale": "rank"}),
}


def seed_of(name: str) -> int:
    m = re.search(r"-s(\d+)$", name)
    return int(m.group(1)) if m else 0


def run_folder(data: Path, run_dir: Path, n_boot: int, pretrain: bool) -> dict:
    """The package's run on one folder (reused when finished), timed."""
    if not (run_dir / "run.json").is_file() or not (run_dir / "metrics.json").is_file():
        cfg = RunConfig(
            data_dir=data, out=run_dir, seed=seed_of(data.name), compare=False, cluster=False, report=False,
            baselines=("relation", *BASELINES), n_boot=n_boot, pretrain=pretrain,
        )  # fmt: skip
        run_pipeline(cfg)
    return read_json(run_dir / "run.json")


def auc_traced_only(data: Path) -> float | None:
    """The build's `auc_traced_only` on test from its synth.json (generators that report each sample's source):
    the ROC-AUC of finding exactly the used images some test sample was drawn from."""
    path = data / "synth.json"
    traced = read_json(path).get("generator", {}).get("traceability") if path.is_file() else None
    return traced["test"]["auc_traced_only"] if traced else None


def cell(d: dict) -> dict:
    return {"value": d["value"], "lo": d["ci_low"], "hi": d["ci_high"]}


def summarise(name: str, run_dir: Path) -> dict:
    """The run-file scorer's numbers, every baseline's ROC-AUC with its interval, the margin and the timings."""
    metrics = read_json(run_dir / "metrics.json")["scorers"]
    run = read_json(run_dir / "run.json")
    fused = metrics["fused"]
    cm = fused["confusion_matrix"]
    known = {b: cell(metrics[b]["roc_auc"]) for b in untrained_scorers() if b in metrics}
    best = max(known, key=lambda b: known[b]["value"])
    fusion = load_fusion(run_dir / "model" / "fusion.json")
    seconds = run.get("stage_seconds", {})
    return {
        "name": name,
        "auc": cell(fused["roc_auc"]),
        "kappa": cell(fused["kappa"]),
        "balanced_accuracy": cell(fused["balanced_accuracy"]),
        "tpr_at_5fpr": cell(fused["tpr_at_5fpr"]),
        "share_used": (cm["tp"] + cm["fp"]) / max(1, sum(cm.values())),
        "baselines": known,
        "baseline_kappa": {b: metrics[b]["kappa"]["value"] for b in known},
        "relation": cell(metrics["relation"]["roc_auc"]) if "relation" in metrics else None,
        "best_baseline": best,
        "margin": fused["roc_auc"]["value"] - known[best]["value"],
        "groups": fusion["groups"],
        "dev_oof_auc": fusion["dev"]["oof_auc"],
        "seconds": {k: seconds.get(k) for k in ("adapt", "pretrain", "profile", "fuse", "train")},
        "total_seconds": run.get("seconds"),
    }


# ----------------------------------------------------------------------------- ablations


def extra_profile(run_dir: Path) -> Path:
    """The run's profiles plus the px32 and emb (the run model's embedding) spaces, in run_dir/ablations/."""
    out = run_dir / "ablations"
    if (out / "profile" / "test.npz").is_file():
        return out / "profile"
    shards = run_dir / "shards"
    extra = ProfileConfig(
        dev=shards / "dev", test=shards / "test", out=out / "extra", spaces=("px32", "emb"),
        descriptor=run_dir / "model", force=True,
    )  # fmt: skip
    run_profile(extra)
    for split in ("dev", "test"):
        feats, cols = load_profile(run_dir / "profile" / f"{split}.npz")
        more, extra_cols = load_profile(out / "extra" / f"{split}.npz")
        assert list(more.keys) == list(feats.keys)
        keys, labels = feats.keys.tolist(), feats.labels.tolist()
        save_profile(out / "profile" / f"{split}.npz", keys, labels, {**cols, **extra_cols}, feats.meta)
    return out / "profile"


def evaluate_fusion(path: Path, test_profile: Path, truth: dict, n_boot: int, seed: int) -> dict:
    """Test metrics of a fitted fusion, labelled as the score stage labels (its threshold, on its scale)."""
    model = load_fusion(path)
    result = fused_scores(model, test_profile)
    cal = model["calibration"]
    labels, _ = apply_threshold(result.score, cal["threshold"], cal["scale"])
    y = align_truth(result.keys, truth, source=str(test_profile))
    m = evaluate(y, result.score, labels, n_boot=n_boot, seed=seed)
    return {"auc": cell(m["roc_auc"]), "kappa": m["kappa"]["value"], "share_used": float(labels.mean()),
            "groups": model["groups"]}  # fmt: skip


def ablate(name: str, run_dir: Path, truth: dict, n_boot: int) -> dict:
    profiles = extra_profile(run_dir)
    seed = int(load_fusion(run_dir / "model" / "fusion.json")["config"]["seed"])  # the run's own CV splits
    rows = {}
    for key, (_, change) in ABLATIONS.items():
        out = run_dir / "ablations" / f"{key}.json"
        if not out.is_file():
            run_fuse(FuseConfig(dev=profiles / "dev.npz", out=out, seed=seed, **change))
        rows[key] = evaluate_fusion(out, profiles / "test.npz", truth, n_boot, seed)
    return rows


# ----------------------------------------------------------------------------- tables


def fmt_ci(c: dict | None) -> str:
    if c is None or c["value"] is None:
        return "n/a"
    return f"{c['value']:.3f} [{c['lo']:.2f}, {c['hi']:.2f}]" if c.get("lo") is not None else f"{c['value']:.3f}"


def main_table(rows: list[dict]) -> str:
    """One line per data set; a traced-only column (synth.json's traceability) when any build reports one."""
    traced = any(r.get("test_auc_traced_only") is not None for r in rows)
    head = "| data | best baseline | fused ROC-AUC [95% CI] | margin | kappa | bal. acc. | labelled used | groups |"
    rule = "|---|---|---|---|---|---|---|---|"
    lines = [head + " AUC traced only |", rule + "---|"] if traced else [head, rule]
    for r in rows:
        b, c = r["best_baseline"], r.get("test_auc_traced_only")
        lines.append(
            f"| {r['name']} | {b} {r['baselines'][b]['value']:.3f} | {fmt_ci(r['auc'])} | {r['margin']:+.3f} | "
            f"{r['kappa']['value']:.2f} | {r['balanced_accuracy']['value']:.2f} | {r['share_used']:.2f} | "
            f"{'+'.join(r['groups'])} |" + (f" {'n/a' if c is None else f'{c:.3f}'} |" if traced else "")
        )
    return "\n".join(lines)


def baseline_table(rows: list[dict]) -> str:
    lines = ["| data | " + " | ".join(BASELINES) + " | relation |", "|---|" + "---|" * (len(BASELINES) + 1)]
    for r in rows:
        cells = [fmt_ci(r["baselines"].get(b)) + f" k={r['baseline_kappa'].get(b, 0):.2f}" for b in BASELINES]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {fmt_ci(r['relation'])} |")
    return "\n".join(lines)


def criterion(rows: list[dict]) -> str:
    six = [r["margin"] for r in rows if r["name"] in SIX]
    other = [r["margin"] for r in rows if r["name"] not in SIX]
    out = []
    for what, m in (("six built-in runs", six), ("other kinds", other)):
        if m:
            out.append(f"- {what} ({len(m)}): mean margin {np.mean(m):+.3f}, worst {min(m):+.3f}")
    kappas = [r["kappa"]["value"] for r in rows]
    out.append(f"- mean kappa of run.csv over {len(rows)} data sets: {np.mean(kappas):.3f}")
    return "\n".join(out)


def ablation_table(rows: list[dict], ablations: dict[str, dict]) -> str:
    names = [r["name"] for r in rows if r["name"] in ablations]
    head = "| variant | what | " + " | ".join(names) + " | mean margin (six) | mean margin (other) | mean kappa |"
    lines = [head, "|---|---|" + "---|" * (len(names) + 3)]
    best = {r["name"]: r["baselines"][r["best_baseline"]]["value"] for r in rows}
    for key, (what, _) in ABLATIONS.items():
        vals = {n: ablations[n][key] for n in names}
        six = [v["auc"]["value"] - best[n] for n, v in vals.items() if n in SIX]
        other = [v["auc"]["value"] - best[n] for n, v in vals.items() if n not in SIX]
        cells = [f"{vals[n]['auc']['value']:.3f} / {vals[n]['kappa']:.2f}" for n in names]
        mean = lambda m: f"{np.mean(m):+.3f}" if m else "-"  # noqa: E731
        kappa = np.mean([v["kappa"] for v in vals.values()])
        lines.append(f"| `{key}` | {what} | " + " | ".join(cells) + f" | {mean(six)} | {mean(other)} | {kappa:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path, help="data folders (2023 layout + test_truth.csv)")
    ap.add_argument("--runs", type=Path, required=True, help="where the run folders go (reused when finished)")
    ap.add_argument("--out", type=Path, required=True, help="folder for quality.json and quality.md")
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (default 500)")
    ap.add_argument("--ablations", action="store_true", help="refit the fusion with one lever changed at a time")
    ap.add_argument("--pretrain", action="store_true", help="run with the SSCD-style pretraining stage on")
    a = ap.parse_args(argv)
    setup_logging()
    started, load_before, t_all = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_average(), time.perf_counter()
    rows, ablations = [], {}
    suffix = "-pretrain" if a.pretrain else ""
    for data in a.data:
        t0 = time.perf_counter()
        run_dir = a.runs / f"{data.name}{suffix}"
        run_folder(data, run_dir, a.n_boot, a.pretrain)
        rows.append(summarise(data.name, run_dir) | {"test_auc_traced_only": auc_traced_only(data)})
        if a.ablations:
            ablations[data.name] = ablate(data.name, run_dir, read_truth(data / "test_truth.csv"), a.n_boot)
        r = rows[-1]
        print(f"== {data.name}: fused {r['auc']['value']:.3f} margin {r['margin']:+.3f} kappa {r['kappa']['value']:.2f}"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    doc = {"runs": portable(a.runs), "pretrain": a.pretrain, "n_boot": a.n_boot, "rows": rows, "ablations": ablations}
    doc["run"] = {
        "command": " ".join(
            ["python", "benchmarks/quality_table.py", *map(portable, sys.argv[1:] if argv is None else argv)]
        ),
        "started": started,
        "seconds": round(time.perf_counter() - t_all, 1),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "machine": machine_info("cpu"),
    }
    write_json(a.out / f"quality{suffix}.json", doc)
    md = ["# Detection quality (benchmarks/quality_table.py)", "", criterion(rows), "", main_table(rows), ""]
    md += ["Baselines of the same runs (test ROC-AUC [95% CI], kappa at their dev threshold):", ""]
    md += [baseline_table(rows)]
    if ablations:
        md += ["", "Ablations (test ROC-AUC / kappa):", "", ablation_table(rows, ablations)]
    write_text(a.out / f"quality{suffix}.md", "\n".join(md) + "\n")
    print(json.dumps({"out": str(a.out), "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
