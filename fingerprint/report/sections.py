"""The report's sections: each reads its part of the run folder and becomes HTML + Markdown, or a note.

The verdict (the run file's scorer, its test metrics, its margin over the
best untrained baseline and any warning), ROC curves, neighbour strips for
the most confident hits and misses, every scorer's metrics (test split and
dev), per-class score histograms, comparators (CV ranking), hierarchical
clustering, training curves, the data set (counts, sample images), and the
run folder's parts and stage timings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.analysis.cluster_outputs import COMPOSITION, SPLIT_METRICS
from fingerprint.core.files import read_json
from fingerprint.core.vocab import METRIC_TITLES, METRICS, SPLITS
from fingerprint.data.shards import read_manifest
from fingerprint.evaluation.metrics import (
    LABEL_SHARE_LIMIT,
    auc_margin,
    evaluate,
    label_share_warning,
    roc_auc,
    roc_points,
)
from fingerprint.evaluation.scorefiles import read_scores
from fingerprint.membership.scorers import SCORERS, get_scorer, untrained_scorers
from fingerprint.report.data import (
    RunInputs,
    group_name,
    load_images,
    read_neighbours,
    scan_groups,
    shards_of,
    split_meta,
    split_rows,
    stage_timings,
    training_records,
    truth_for,
)
from fingerprint.report.figures import (
    gan_curve_figure,
    histogram_figure,
    roc_figure,
    sample_grid,
    strip_figure,
    training_figure,
)
from fingerprint.report.html import Section, fmt, metric_cell

#: a run-file scorer whose ROC-AUC on the labelled dev split is below this gets a near-chance warning
NEAR_CHANCE_AUC = 0.6
#: bootstrap resamples of the verdict's intervals when the run folder has no metrics.json
VERDICT_BOOT = 200


def section_verdict(run: RunInputs, *, seed: int = 0) -> Section:
    """The answer first: the run file's scorer, its test ROC-AUC with interval, kappa, balanced accuracy, the
    share it labels used, its margin over the best untrained baseline, and warnings about its labels."""
    s = Section("verdict", "Verdict")
    name = run_file_scorer(run)
    if name is None:
        s.note("no score file names a run file (scores/<scorer>.json 'run_file'): no verdict; the sections below "
               "compare every scorer")  # fmt: skip
        _input_notes(run, s)
        return s
    results, source = verdict_metrics(run, name, seed)
    r, table = results.get(name) or {}, run.scores[name]
    n_used, n = int(table.labels.sum()), len(table.labels)
    margin = auc_margin(results, name, untrained_scorers())
    dev = dev_auc(run, name)
    warnings = verdict_warnings(run, name, dev)
    rows = [
        ["run file (run.csv) written by", name],
        ["test ROC-AUC [95% CI]", metric_cell(r.get("roc_auc"))],
        ["kappa [95% CI]", metric_cell(r.get("kappa"))],
        ["balanced accuracy [95% CI]", metric_cell(r.get("balanced_accuracy"))],
        ["labelled used", f"{n_used / n:.1%} ({n_used} of {n} test reals)" if n else "n/a (no test reals)"],
        ["margin over the best untrained baseline", _margin_text(margin)],
        ["dev ROC-AUC", "n/a" if dev is None else f"{dev[0]:.3f} ({dev[1]})"],
        ["warnings", "; ".join(warnings) if warnings else "none"],
    ]
    s.table(["", "value"], rows)
    if source:
        s.para(f"Test metrics from {source}.")
    elif run.truth is None:
        s.para("No truth for the test split: ROC-AUC, kappa and the margin need it (report.truth).")
    for w in warnings:
        s.note(f"Warning: {w}")
    _input_notes(run, s)
    return s


def _margin_text(margin: dict | None) -> str:
    if margin is None:
        return "n/a"
    return f"{margin['margin']:+.3f} ({margin['baseline']} {margin['baseline_auc']:.3f})"


def _input_notes(run: RunInputs, s: Section) -> None:
    """The truth that was found (or why none) and the score files that could not be read."""
    if run.truth is not None:
        s.para(f"Truth: {run.truth_source} ({len(run.truth)} images, {sum(run.truth.values())} used).")
    elif run.truth_problem:
        s.note(run.truth_problem)
    for p in run.score_problems:
        s.note(f"unreadable score file skipped: {p}")


def run_file_scorer(run: RunInputs) -> str | None:
    """The scorer whose sidecar names the run file (the first by name), or None."""
    return next((n for n in sorted(run.score_meta) if run.score_meta[n].get("run_file")), None)


def verdict_metrics(run: RunInputs, name: str, seed: int) -> tuple[dict[str, dict], str]:
    """Every scorer's test metrics and their source: metrics.json, else evaluated here against the truth (with
    bootstrap intervals for `name`, the run file's scorer, and point values for the others)."""
    path = run.run_dir / "metrics.json"
    if path.is_file():
        return read_json(path).get("scorers") or {}, "metrics.json"
    if run.truth is None:
        return {}, ""
    results = {}
    for other in run.scores:
        t = truth_for(run, other)
        if t is not None and len(np.unique(t[0])) == 2:
            n_boot = VERDICT_BOOT if other == name else 0
            results[other] = evaluate(t[0], t[1], t[2], n_boot=n_boot, seed=seed)
    return results, f"{run.truth_source} ({VERDICT_BOOT} bootstrap resamples, seed {seed})"


def dev_auc(run: RunInputs, name: str) -> tuple[float, str] | None:
    """`name`'s ROC-AUC on the labelled dev split and how it was measured, where the run folder holds it."""
    fusion = run.run_dir / "model" / "fusion.json"
    if name in SCORERS and "fusion" in get_scorer(name).needs and fusion.is_file():
        value = (read_json(fusion).get("dev") or {}).get("oof_auc")
        if value is not None:
            return float(value), "out-of-fold, model/fusion.json"
    metrics = run.run_dir / "metrics.json"
    if metrics.is_file():
        value = (((read_json(metrics).get("dev") or {}).get(name) or {}).get("roc_auc") or {}).get("value")
        if value is not None:
            return float(value), "cross-validated, metrics.json"
    path, rows = run.run_dir / "scores_dev" / f"{name}.csv", split_rows(run.run_dir, "dev")
    if not path.is_file() or rows is None:
        return None
    label = dict(zip(rows[0].tolist(), rows[2].tolist()))
    table = read_scores(path)
    known = [(label[k] == "used", v) for k, v in zip(table.keys, table.scores) if label.get(k) in ("used", "not_used")]
    y = np.array([k for k, _ in known], dtype=int)
    if len(np.unique(y)) < 2:
        return None
    return roc_auc(y, np.array([v for _, v in known])), f"scores_dev/{name}.csv, in-sample"


def verdict_warnings(run: RunInputs, name: str, dev: tuple[float, str] | None) -> list[str]:
    """The score file's own warnings, near-chance dev scores, and labels more than LABEL_SHARE_LIMIT one way."""
    warnings = [str(w) for w in run.score_meta[name].get("warnings") or ()]
    if dev is not None and dev[0] < NEAR_CHANCE_AUC:
        warnings.append(
            f"the dev ROC-AUC is {dev[0]:.3f} ({dev[1]}), near chance: the scorer found little signal on the "
            "labelled split, so its threshold (and the labels in run.csv) are unreliable"
        )
    labels = run.scores[name].labels
    share = float(labels.mean()) if len(labels) else 0.5
    said = any("test reals are labelled" in w for w in warnings)  # the score stage's own label-share warning
    if not said and max(share, 1 - share) > LABEL_SHARE_LIMIT:
        warnings.append(_share_warning(run, share))
    return warnings


def _share_warning(run: RunInputs, share: float) -> str:
    """Labels more than LABEL_SHARE_LIMIT one way: the score stage's warning where the dev set is balanced."""
    counts = _split_counts(run, "dev") or {}
    n_used, n_not = counts.get("real/used", 0), counts.get("real/not_used", 0)
    found = label_share_warning(share, n_used + n_not, n_used)
    if found is not None:
        return found
    side = "used" if share >= 0.5 else "not used"
    return (
        f"{max(share, 1 - share):.0%} of the test reals are labelled {side}: read the ROC-AUC, not the labels, "
        "unless the test split is known to be this uneven"
    )


def section_run(run: RunInputs) -> Section:
    """Which parts the run folder holds and how long each stage took (log.jsonl, one row per stage run)."""
    s = Section("run", "Run folder and stage timings")
    d = run.run_dir
    parts = [
        ("shards", (d / "shards").is_dir() or (d / "shards.json").is_file()),
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
    timings = stage_timings(d / "log.jsonl")
    if timings:
        s.heading("Stage timings (log.jsonl)")
        s.table(["stage", "seconds", "details"], timings)
    else:
        s.para("No stage timings (no log.jsonl records).")
    return s


def _split_counts(run: RunInputs, split: str) -> dict[str, int] | None:
    sdir = shards_of(run.run_dir, split)
    if sdir is not None and (isinstance(sdir, str) or (sdir / "manifest.json").is_file()):
        return read_manifest(sdir)["counts"]["role_label"]
    feats = split_rows(run.run_dir, split)
    if feats is None:
        return None
    _, roles, labels = feats
    pairs = [f"{r}/{lab}" for r, lab in zip(roles, labels)]
    return {p: pairs.count(p) for p in sorted(set(pairs))}


def _sample_groups(run: RunInputs, split: str, per_group: int, seed: int) -> dict[str, list[str]]:
    """A seeded random choice of keys per role/label group (from the features file, else a shard scan)."""
    feats = split_rows(run.run_dir, split)
    if feats is None:
        sdir = shards_of(run.run_dir, split)
        return scan_groups(sdir, per_group) if sdir is not None else {}
    rng = np.random.default_rng(seed)
    keys, roles, labels = feats
    groups = {}
    for g in sorted({group_name(r, lab) for r, lab in zip(roles, labels)}):
        members = [k for k, r, lab in zip(keys, roles, labels) if group_name(r, lab) == g]
        groups[g] = sorted(rng.choice(members, size=min(per_group, len(members)), replace=False).tolist())
    return groups


def skip_notes(run_dir: Path, split: str, listed: int = 5) -> list[str]:
    """What a split lost or had renamed: images skipped at pack, keys renamed, shards/samples skipped later."""
    notes = []
    man_path = run_dir / "shards" / split / "manifest.json"
    if man_path.is_file():
        man = read_manifest(man_path.parent)
        skipped, renamed = man.get("skipped") or [], man.get("renamed") or []
        if skipped:
            names = ", ".join(f"{s['path']} ({s['reason']})" for s in skipped[:listed])
            notes.append(
                f"{split}: {len(skipped)} unreadable image(s) skipped at pack: {names}"
                + ("..." * (len(skipped) > listed))
            )
        if renamed:
            names = ", ".join(f"{r['path']} as {r['key']}" for r in renamed[:listed])
            notes.append(
                f"{split}: {len(renamed)} generated image(s) stored under another key: {names}"
                + ("..." * (len(renamed) > listed))
            )
    skipped_later = split_meta(run_dir, split).get("skipped")
    if skipped_later:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(skipped_later.items()))
        notes.append(f"{split}: skipped when embedding (--on-error skip): {counts}")
    return notes


def section_dataset(run: RunInputs, *, per_group: int, seed: int) -> Section:
    """Counts per split and role/label, skipped and renamed inputs, and a few sample images of each group."""
    s = Section("dataset", "Data set")
    rows = []
    for split in SPLITS:
        counts = _split_counts(run, split)
        if counts is None:
            s.note(f"no shards/{split}/manifest.json or features/{split}: {split} counts unknown")
            continue
        rows += [[split, k.split("/")[0], k.split("/")[1].replace("_", " "), str(v)] for k, v in sorted(counts.items())]
        rows.append([split, "all", "", str(sum(counts.values()))])
    if rows:
        s.table(["split", "role", "label", "images"], rows)
    _realism_tables(run, s)
    for split in SPLITS:
        for note in skip_notes(run.run_dir, split):
            s.note(note)
    for split in SPLITS:
        sdir = shards_of(run.run_dir, split)
        if sdir is None:
            s.note(f"no shards/{split}: no sample images of the {split} split")
            continue
        groups = _sample_groups(run, split, per_group, seed)
        pixels = load_images(sdir, {k for ks in groups.values() for k in ks})
        run.images.setdefault(split, {}).update(pixels)
        if not pixels:
            s.note(f"shards/{split}: none of the chosen sample images were found")
            continue
        s.figure(sample_grid(groups, pixels, split), f"{split}: random samples of each group (seed {seed})")
    return s


def _synth_info(run: RunInputs) -> dict | None:
    """The synth.json of the benchmark the run packed (beside the packed dev/ folder), if any."""
    for split in SPLITS:
        manifest = run.run_dir / "shards" / split / "manifest.json"
        if manifest.is_file():
            source = read_manifest(manifest.parent).get("source")
            path = Path(source).parent / "synth.json" if source else None
            if path is not None and path.is_file():
                return read_json(path)
    return None


def _realism_tables(run: RunInputs, s: Section) -> None:
    """The benchmark's realism figures (synth.json `realism`, fingerprint.benchdata.realism), when it has them."""
    info = _synth_info(run)
    if not info or "realism" not in info:
        return
    r, fd = info["realism"], info["realism"]["frechet"]
    s.heading(f"Realism of the benchmark ({info['generator']['family']} generator, {info['level']} level)")
    s.table(
        ["high-frequency ratio gen/real", "Fréchet distance gen-real", "real-real reference", "ratio"],
        [[fmt(r["hf_ratio"]), fmt(fd["generated"], 1), fmt(fd["real_vs_real"], 1), fmt(fd["ratio"], 2)]],
    )
    rows = [
        [split, fmt(v["pixel_nn_auc"]), fmt(v["ssim_nn_auc"]), fmt(v["share_nearest_used"]),
         fmt(v["share_nearest_used_null"]), fmt(v["memorisation"]["share_reproduced_used"])]
        for split, v in r["splits"].items()
    ]  # fmt: skip
    s.table(["split", "pixel-NN AUC", "SSIM-NN AUC", "share nearest used", "null", "used reproduced"], rows)
    curve = info["generator"].get("curve") if info["generator"].get("family") == "gan" else None
    if curve:
        s.figure(gan_curve_figure(curve), "the generator's adversarial training (synth.json generator.curve)")


def section_training(run: RunInputs) -> Section:
    """Loss and learning rate per logged step; validation AUC and loss per epoch."""
    s = Section("training", "Training")
    path = run.run_dir / "model" / "train_log.jsonl"
    if not path.is_file():
        s.note("no model/train_log.jsonl: no training curves")
        return s
    steps, epochs, final, problems = training_records(path)
    for p in problems:
        s.note(p)
    if not steps and not epochs:
        s.note("model/train_log.jsonl has no step or epoch records")
        return s
    s.figure(training_figure(steps, epochs), "training curves (model/train_log.jsonl)")
    if epochs:
        rows = [
            [
                str(e["epoch"]),
                fmt(e.get("loss")),
                fmt(e.get("val_auc")),
                fmt(e.get("val_loss")),
                fmt(e.get("seconds"), 1),
            ]
            for e in epochs
        ]
        s.table(["epoch", "mean loss", "val AUC", "val loss", "seconds"], rows)
    if final:
        numbers = [
            f"{k} {fmt(v)}"
            for k, v in final.items()
            if k not in ("stage", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        s.para("Training summary: " + ", ".join(numbers) + ".")
    return s


def _metrics_rows(results: dict[str, dict], thresholds: dict[str, Any] | None = None) -> tuple[list, list, list[int]]:
    """Rows sorted by ROC-AUC (the best kappa highlighted); the threshold comes from the metrics or, failing
    that, the score file's sidecar."""
    thresholds = thresholds or {}
    header = ["scorer", *(METRIC_TITLES[m] for m in METRICS), "threshold", "tn/fp/fn/tp"]

    def auc(name: str) -> float:
        v = (results[name].get("roc_auc") or {}).get("value")
        return -1.0 if v is None else v

    order = sorted(results, key=lambda n: (-auc(n), n))
    rows = []
    for name in order:
        r = results[name]
        cm = r.get("confusion_matrix") or {}
        cm_text = "/".join(fmt(cm.get(k), 1) for k in ("tn", "fp", "fn", "tp")) if cm else "n/a"
        thr = r.get("threshold")
        thr = thresholds.get(name) if thr is None else thr
        rows.append([name, *(metric_cell(r.get(m)) for m in METRICS), fmt(thr, 4), cm_text])
    kappas = [(r.get("kappa") or {}).get("value") for r in (results[n] for n in order)]
    known = [x for x in kappas if x is not None]
    best = [i for i, v in enumerate(kappas) if known and v is not None and v == max(known)]
    return header, rows, best


def section_metrics(run: RunInputs) -> Section:
    """metrics.json: every scorer on the test split (and dev numbers where known), with 95% intervals."""
    s = Section("metrics", "Metrics of every scorer")
    path = run.run_dir / "metrics.json"
    if not path.is_file():
        s.note("no metrics.json (written by 'fingerprint evaluate' / 'fingerprint run' when the truth is known)")
        return s
    data = read_json(path)
    parts = (("scorers", f"{data.get('split', 'test')} split"), ("dev", "development split (cross-validated)"))
    for key, title in parts:
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
            f"Reference: labelling every image 'used' gives F1 {2 * p / (1 + p):.3f}, accuracy {p:.3f} and kappa 0 "
            "on this truth; ROC-AUC and TPR at low FPR cannot be gamed by a threshold, and kappa and balanced "
            "accuracy do not reward labelling everything one way. Rows are sorted by ROC-AUC; the best kappa is "
            "highlighted."
        )
    return s


def section_comparators(run: RunInputs) -> Section:
    """compare/cv.json: the ranked comparators with cross-validated metrics on dev."""
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
    metrics = ("roc_auc", "kappa", "balanced_accuracy", "tpr_at_5fpr", "f1")
    rows = [
        [str(i), name, *(metric_cell(cv["cv"][name].get(m)) for m in metrics), fmt(cv.get("seconds", {}).get(name), 1)]
        for i, name in enumerate(cv.get("ranking", []), 1)
    ]
    header = ["rank", "comparator", *(METRIC_TITLES[m] for m in metrics), "CV seconds"]
    s.table(header, rows, best_rows=[0] if rows else [])
    s.para(
        "Caveat: if the embedding model was trained on these same dev images, dev CV numbers are optimistic; "
        "the test metrics are the honest ones."
    )
    return s


def section_roc(run: RunInputs) -> Section:
    """ROC curves of every scorer on one plot."""
    s = Section("roc", "ROC curves")
    if not run.scores:
        s.note("no score files in scores/")
        return s
    if run.truth is None:
        s.note("no truth: ROC curves need it")
        return s
    curves = []
    for name in run.scores:
        t = truth_for(run, name)
        if t is None or len(np.unique(t[0])) < 2:
            s.note(f"scores/{name}.csv: no keys with both classes in the truth, left out")
            continue
        y, sc, _ = t
        left_out = len(run.scores[name].keys) - len(y)
        if left_out:
            s.note(f"scores/{name}.csv: {left_out} key(s) not in the truth, left out of its curve")
        curves.append((roc_auc(y, sc), name, *roc_points(y, sc)))
    if not curves:
        return s
    curves.sort(key=lambda c: (-c[0], c[1]))
    s.figure(roc_figure(curves), f"ROC curves of {len(curves)} scorers against {run.truth_source}")
    return s


def section_histograms(run: RunInputs) -> Section:
    """Score distributions of used and not-used images per scorer, with each scorer's threshold."""
    s = Section("histograms", "Score histograms")
    if not run.scores:
        s.note("no score files in scores/")
        return s
    png = histogram_figure(run)
    if run.truth is None:
        s.note("no truth: histograms show all scores together")
    s.figure(png, "score histograms per scorer (used vs not used where the truth is known; dashed: threshold)")
    return s


def section_clustering(run: RunInputs) -> Section:
    """The cluster stage's metrics, composition and dendrogram."""
    s = Section("clustering", "Hierarchical clustering")
    cdir = run.run_dir / "cluster"
    if not (cdir / "cluster.json").is_file():
        s.note("no cluster output (cluster/cluster.json; run 'fingerprint cluster')")
        return s
    res = read_json(cdir / "cluster.json")
    cfg = res.get("config", {})
    together = ", real images only." if cfg.get("real_only") else ", real and generated images together."
    s.para(
        f"{cfg.get('method')} linkage, {cfg.get('metric')} distance, cut into {cfg.get('n_clusters')} clusters"
        + together
    )
    splits = [sp for sp in SPLITS if sp in res]
    s.table(["metric", *splits], [[k, *(fmt(res[sp]["metrics"].get(k)) for sp in splits)] for k in SPLIT_METRICS])
    if "dev" in res:
        s.heading("dev clusters")
        rows = [[*(str(r[c]) for c in COMPOSITION), f"{r['generated_share']:.3f}"] for r in res["dev"]["composition"]]
        s.table(["cluster", "n", "generated", "used", "not used", "real unknown", "generated share"], rows)
    for fname, cap in (("dendrogram.png", "dev dendrogram"), ("dendrogram_test.png", "test dendrogram")):
        if (cdir / fname).is_file():
            s.figure(
                (cdir / fname).read_bytes(), f"{cap} (cluster/{fname}; leaves: points | generated, used, not used)"
            )
        elif fname == "dendrogram.png":
            s.note(f"no cluster/{fname}")
    sc = res.get("scorer")
    if sc:
        rule = f"threshold {sc['threshold']:.4f} ({sc['rule']})"
        s.para(f"Cluster scorer: share of generated images in a real image's cluster; {rule}.")
    return s


def _strip_groups(run: RunInputs, keys: list[str], score: dict, label: dict, top_n: int) -> list[tuple[str, list]]:
    """Hits and misses by confidence (with a truth), else the most confident predictions either way."""
    if run.truth is None:
        ranked = sorted(keys, key=lambda q: (-score[q], q))
        return [
            ("most confident 'used' predictions", ranked[:top_n]),
            ("most confident 'not used' predictions", ranked[::-1][:top_n]),
        ]
    keys = [key for key in keys if key in run.truth]
    cats = [
        ("true positives (used, predicted used), highest scores", 1, 1, True),
        ("false positives (not used, predicted used), highest scores", 0, 1, True),
        ("false negatives (used, predicted not used), lowest scores", 1, 0, False),
    ]
    groups = []
    for title, t, p, high in cats:
        members = sorted(
            (key for key in keys if run.truth[key] == t and label[key] == p),
            key=lambda q, high=high: (-score[q] if high else score[q], q),
        )
        groups.append((title, members[:top_n]))
    return groups


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
    nb = read_neighbours(nb_path)
    row_of = {str(key): i for i, key in enumerate(nb["keys"])}
    table = run.scores[scorer]
    score, label = dict(zip(table.keys, table.scores)), dict(zip(table.keys, table.labels))
    if run.truth is None:
        s.note("no truth: strips show the most confident 'used' and 'not used' predictions instead of hits and misses")
    groups = _strip_groups(run, [key for key in table.keys if key in row_of], score, label, top_n)
    kk = min(k, nb["neighbour_keys"].shape[1])
    wanted = {key for _, ms in groups for key in ms}
    wanted |= {str(n) for key in wanted for n in nb["neighbour_keys"][row_of[key], :kk]}
    sdir = shards_of(run.run_dir, "test")
    pixels = dict(run.images.get("test", {}))
    if sdir is not None:
        pixels.update(load_images(sdir, wanted - set(pixels)))
    else:
        s.note("no shards/test: strips show keys and similarities without images")
    for title, members in groups:
        s.heading(title)
        if not members:
            s.para("none")
            continue
        if any(key in pixels for key in members):
            png = strip_figure(members, nb, row_of, kk, pixels, score, nb.get("pair_scores"))
            caption = f"{title}: real image, then its {kk} nearest generated images (cosine similarity; relation "
            s.figure(png, caption + "probability p where known)")
        nbk, nbs = nb["neighbour_keys"], nb["neighbour_sims"]
        rows = [
            [
                key,
                f"{score[key]:.4f}",
                ", ".join(f"{nbk[row_of[key], j]} ({nbs[row_of[key], j]:.3f})" for j in range(kk)),
            ]
            for key in members
        ]
        s.table(["real image", f"{scorer} score", "neighbours (cosine)"], rows)
    return s
