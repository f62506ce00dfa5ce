"""Quality of the collection-level commands (docs/audit.md): audit calibration and power, attribution accuracy.

Not a speed benchmark: it measures what `fingerprint audit` and `fingerprint attribute` conclude on
builds of known truth, with the commands' own library entry points.

    python benchmarks/audit_quality.py audit --level medium --seed 0 --work benchmarks/work/aq
    python benchmarks/audit_quality.py attribute --level medium --seed 0 --work benchmarks/work/aq
    python benchmarks/audit_quality.py fixture --level medium --seed 0 --work benchmarks/work/aq \
        --scorers relation,ssim,dcr
    python benchmarks/audit_quality.py audit --level tiny --candidate 20 --reference 100 --scorers fused,ssim,relation

--keep keeps the saved rows of scorers not re-run; --collect rebuilds the results from the audits already in WORK.

audit: an audit-case build (candidate 50, reference 100; cached in WORK), its used / not-used /
half-used cases, each audited with every scorer in --scorers (the relation model is trained once, on
the dev split with half of it held out, and reused), plus the not-used candidate against the held-out
dev not-used images (a false-positive check, scored against the audited pool).
Calibration: the not-used case's 150 fresh images (candidate + reference, scored in one call) are
re-split 1,000 times into 50 vs 100 (seeded), giving null p-values; their histogram and FPR go to
docs/images/audit_null_<level>.png. Power: each used case's power curve, docs/images/audit_power_<level>.png.
attribute: a 3-subset build, attributed with each pair score. Results: benchmarks/results/quality_*.json.
fixture: after `audit`, writes the used case's scores to tests/fixtures/ (the cached fixture of the medium test).
figures: redraws every figure from the saved results.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fingerprint.benchdata.cases import build_audit_case, build_subsets, select_audit_case  # noqa: E402
from fingerprint.core.files import write_json  # noqa: E402
from fingerprint.core.logs import setup_logging
from fingerprint.tasks.attribute import PAIR_SCORES, AttributeConfig, run_attribute  # noqa: E402
from fingerprint.tasks.audit import AuditConfig, run_audit
from fingerprint.tasks.audit_stats import calibration_summary, null_pvalues, split_null

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parent
CASES = (("used", "used", None), ("not_used", "not_used", None), ("partial", "partial", 0.5))


def _scores(folder: Path) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    with open(folder / "audit_scores.csv", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["group"], []).append(float(row["score"]))
    return {g: np.asarray(v) for g, v in out.items()}


def audit_quality(args) -> dict:
    data = Path(args.work) / f"audit-{args.level}-seed{args.seed}"
    if not (data / "synth.json").is_file():
        build_audit_case(data, case="used", n_candidate=args.candidate, n_reference=args.reference, level=args.level,
                         seed=args.seed)  # fmt: skip
    results: dict = {"level": args.level, "seed": args.seed, "data": data.name, "scorers": {},
                     "candidate": args.candidate, "reference": args.reference}  # fmt: skip
    for scorer in args.scorers.split(","):
        model = None  # each scorer's model (relation network, fusion) is fitted by its first audit, then reused
        row = results["scorers"].setdefault(scorer, {"measured": time.strftime("%Y-%m-%d", time.gmtime())})
        for folder, case, fraction in CASES:
            where = data / f"audit-{folder}"
            if not (where / "case.json").is_file():
                select_audit_case(data, where, case=case, fraction=fraction, n_candidate=args.candidate,
                                  n_reference=args.reference, seed=args.seed)  # fmt: skip
            out = Path(args.work) / f"out-{args.level}-seed{args.seed}" / f"{folder}-{scorer}"
            t0 = time.perf_counter()
            cfg = AuditConfig(
                candidate=where / "candidate", reference=str(where / "reference"),
                generated=data / "test" / "generated_1", dev=data / "dev", out=out, scorer=scorer, model=model,
                seed=args.seed, force=True, report=args.report,
            )  # fmt: skip
            s = json.loads((out / "audit.json").read_text()) if args.collect else run_audit(cfg)
            if s["conditions"].get("model") and model is None:
                model = Path(s["conditions"]["model"])
            row[folder] = _digest(s) | {
                "seconds": s.get("seconds") if args.collect else round(time.perf_counter() - t0, 1)
            }
            if folder == "not_used":
                sc = _scores(out)
                pool = np.concatenate([sc["candidate"], sc["reference"]])
                p = null_pvalues(split_null(pool, args.candidate, args.reference), 1000, seed=args.seed)
                row["null_resplit"] = calibration_summary(p, alpha=0.05) | {"pvalues": p.tolist()}
            if folder == "used":
                row["power"] = s["power"]
        if model is not None or scorer in ("ssim", "dcr"):
            where = data / "audit-not_used"
            out = Path(args.work) / f"out-{args.level}-seed{args.seed}" / f"not_used-devref-{scorer}"
            cfg = AuditConfig(
                candidate=where / "candidate", reference="dev-not-used", generated=data / "test" / "generated_1",
                dev=data / "dev", out=out, scorer=scorer, model=model, seed=args.seed, force=True, report=False,
            )  # fmt: skip
            s = json.loads((out / "audit.json").read_text()) if args.collect else run_audit(cfg)
            row["not_used_vs_dev_not_used"] = _digest(s)
    return results


def _digest(s: dict) -> dict:
    return {
        "pvalue": s["test"]["pvalue"], "method": s["test"]["method"], "auc": s["effect"]["auc"],
        "auc_ci": [s["effect"]["low"], s["effect"]["high"]], "fraction": s["fraction"]["fraction"],
        "fraction_ci": [s["fraction"]["low"], s["fraction"]["high"]], "fraction_bound": s["fraction"]["bound"],
        "n": s["n"], "used": s["used"], "n_required": s["power"]["n_required"], "verdict": s["verdict"],
    }  # fmt: skip


def null_figure(results: dict, path: Path) -> None:
    names = list(results["scorers"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        cal = results["scorers"][name]["null_resplit"]
        edges = np.asarray(cal["hist_edges"])
        ax.bar(edges[:-1], cal["hist_counts"], width=np.diff(edges), align="edge", color="tab:blue", alpha=0.7)
        ax.axhline(cal["n"] / len(cal["hist_counts"]), color="k", ls="--", lw=1, label="uniform")
        ax.set_title(f"{name}: FPR@0.05 {cal['fpr']:.3f}\n[{cal['fpr_low']:.3f}, {cal['fpr_high']:.3f}]", fontsize=8)
        ax.set_xlabel("null p-value", fontsize=8), ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{results['level']}: 1,000 re-splits 50 vs 100 of 150 not-used images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def power_figure(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, row in results["scorers"].items():
        pw = row["power"]
        ax.errorbar(pw["n"], pw["power"], yerr=pw["power_se"], fmt="o-", ms=3, capsize=2,
                    label=f"{name} (AUC {pw['auc']:.3f}, n needed {pw['n_required']})")  # fmt: skip
    ax.axhline(0.8, color="0.5", ls=":", lw=1)
    ax.axvline(50, color="tab:red", ls=":", lw=1)
    ax.set_xscale("log"), ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("candidate images (reference 100)"), ax.set_ylabel("P(p < 0.01)")
    ax.set_title(f"{results['level']}: power of the audit of a used candidate", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def attribution_figure(results: dict, path: Path) -> None:
    """The confusion matrix of each pair score, side by side."""
    names = list(results["pair_scores"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = results["pair_scores"][name]["metrics"]
        cm, labels = np.asarray(m["confusion_matrix"]), m["labels"]
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "k")  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"{name}: accuracy {m['accuracy']:.3f}, kappa {m['kappa']:.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0, 0].set_ylabel("truth", fontsize=8)
    fig.suptitle(f"{results['level']}: 3 subsets + 'none' (chance 0.25)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def figures(args) -> None:
    """Redraw the figures of saved results (benchmarks/results/quality_*.json) without re-running anything."""
    images = ROOT.parent / "docs" / "images"
    for path in sorted((ROOT / "results").glob("quality_*_seed*.json")):
        results = json.loads(path.read_text())
        if path.name.startswith("quality_audit_"):
            null_figure(results, images / f"audit_null_{results['level']}.png")
            power_figure(results, images / f"audit_power_{results['level']}.png")
        else:
            attribution_figure(results, images / f"attribution_{results['level']}.png")


def attribute_quality(args) -> dict:
    data = Path(args.work) / f"subsets-{args.level}-seed{args.seed}"
    if not (data / "synth.json").is_file():
        build_subsets(data, n_subsets=3, level=args.level, seed=args.seed)
    results: dict = {"level": args.level, "seed": args.seed, "data": data.name, "pair_scores": {}}
    results["synth"] = json.loads((data / "synth.json").read_text())["difficulty"]
    model = None
    for pair in PAIR_SCORES:
        out = Path(args.work) / f"attr-{args.level}-seed{args.seed}" / pair
        t0 = time.perf_counter()
        cfg = AttributeConfig(
            subsets=(str(data / "subsets"),), generated=data / "generated", null=data / "null",
            truth=data / "generated_truth.csv", model=model, dev=data / "dev", out=out, pair_score=pair,
            seed=args.seed, force=True, report=args.report,
        )  # fmt: skip
        s = run_attribute(cfg)
        model = model or (Path(s["model"]) if s["model"] else None)
        results["pair_scores"][pair] = {"metrics": s["metrics"], "counts": s["counts"], "threshold": s["threshold"],
                                        "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        forced = AttributeConfig(
            **{**cfg.__dict__, "null": None, "model": model, "out": out.with_name(f"{pair}-forced")}
        )
        sf = run_attribute(forced)
        results["pair_scores"][pair]["forced_on_subset_images"] = _forced_accuracy(sf, data)
    return results


def _forced_accuracy(summary: dict, data: Path) -> float:
    """Accuracy of the forced choice on the images some subset's generator made."""
    with open(data / "generated_truth.csv", newline="") as f:
        truth = {r["figure_id"]: r["subset"] for r in csv.DictReader(f)}
    with open(Path(summary["shards"]["generated"]).parent.parent / "attribution.csv", newline="") as f:
        pred = {r["figure_id"]: r["subset"] for r in csv.DictReader(f)}
    made = [k for k, t in truth.items() if t != "none"]
    return float(np.mean([pred[k] == truth[k] for k in made]))


def write_fixture(args) -> Path:
    """tests/fixtures/audit_<level>_seed<seed>_used.csv: the used case's candidate and reference scores per scorer.

    The cached fixture of tests/test_audit.py's medium test (a medium build and its audits take minutes).
    """
    out_root = Path(args.work) / f"out-{args.level}-seed{args.seed}"
    path = ROOT.parent / "tests" / "fixtures" / f"audit_{args.level}_seed{args.seed}_used.csv"
    scorers = args.scorers.split(",")
    rows = ["scorer,key,group,score"]
    if args.keep and path.is_file():  # the saved rows of scorers not re-run
        rows += [line for line in path.read_text().splitlines()[1:] if line.split(",")[0] not in scorers]
    for scorer in scorers:
        with open(out_root / f"used-{scorer}" / "audit_scores.csv", newline="") as f:
            rows += [f"{scorer},{r['key']},{r['group']},{r['score']}" for r in csv.DictReader(f)
                     if r["group"] in ("candidate", "reference")]  # fmt: skip
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("audit", "attribute", "fixture", "figures"))
    ap.add_argument("--level", default="medium")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="benchmarks/work/audit-quality", help="where the builds and runs go")
    ap.add_argument("--scorers", default="fused,relation,ssim,dcr,emb_nn")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--candidate", type=int, default=50, help="audit: candidate size of each case")
    ap.add_argument("--reference", type=int, default=100, help="audit: reference size of each case")
    ap.add_argument("--keep", action="store_true", help="keep the saved rows of scorers not re-run")
    ap.add_argument("--collect", action="store_true", help="audit: read the audits already in WORK, run none")
    args = ap.parse_args()
    setup_logging()
    if args.what == "fixture":
        print(write_fixture(args))
        return
    if args.what == "figures":
        figures(args)
        return
    t0 = time.perf_counter()
    results = audit_quality(args) if args.what == "audit" else attribute_quality(args)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["command"] = command_line()
    results["machine"] = machine_info("cpu")
    name = f"{args.what}_{args.level}_seed{args.seed}"
    path = ROOT / "results" / f"quality_{name}.json"
    if args.keep and path.is_file():  # scorers / pair scores not re-run keep their saved rows
        key = "scorers" if args.what == "audit" else "pair_scores"
        saved = json.loads(path.read_text())
        results[key] = {**saved.get(key, {}), **results[key]}
    write_json(path, results)
    if args.what == "audit":
        null_figure(results, ROOT.parent / "docs" / "images" / f"audit_null_{args.level}.png")
        power_figure(results, ROOT.parent / "docs" / "images" / f"audit_power_{args.level}.png")
    else:
        attribution_figure(results, ROOT.parent / "docs" / "images" / f"attribution_{args.level}.png")
    print(json.dumps({k: v for k, v in results.items() if k != "scorers"}, indent=1, default=str)[:2000])


if __name__ == "__main__":
    main()
