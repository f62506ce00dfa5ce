"""Report: a self-contained HTML + Markdown from a tiny hand-built run folder; the verdict first; degrades to notes;
reproducible; renders in headless Chromium."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import BrowserUnavailable, find_browser, inspect_page
from PIL import Image

from fingerprint.analysis import cluster, compare
from fingerprint.cli import report as cli_report
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import write_json
from fingerprint.data.pack import pack
from fingerprint.embedding.features import Features
from fingerprint.evaluation.metrics import evaluate
from fingerprint.evaluation.scorefiles import read_scores, write_scores
from fingerprint.report import sections as report_sections
from fingerprint.report.build import ReportConfig, build_report

SIZE = 32
K = 3
#: the sections of a full run folder's report, in order: the answer, the details, the inventory
ORDER = ["verdict", "roc", "neighbours", "metrics", "histograms", "comparators", "clustering", "training", "dataset",
         "run"]  # fmt: skip
TITLES = ["Verdict", "ROC curves", "Nearest generated neighbours", "Metrics of every scorer", "Score histograms",
          "Comparators (cross-validated on dev)", "Hierarchical clustering", "Training", "Data set",
          "Run folder and stage timings"]  # fmt: skip


class Page(HTMLParser):
    """Collects tags, attributes and text of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.notes = 0
        self.text: list[str] = []
        self.sections: list[str] = []
        self.first_table_in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for name in ("href", "src"):
            if name in a and tag != "img":
                self.links.append(a[name])
        if a.get("class") == "note":
            self.notes += 1
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "table" and self.first_table_in is None:
            self.first_table_in = self.sections[-1] if self.sections else ""

    def handle_data(self, data):
        self.text.append(data)


def _images(root: Path, folder: str, stems: list[str], pixels: list[np.ndarray]) -> None:
    (root / folder).mkdir(parents=True)
    for stem, px in zip(stems, pixels):
        Image.fromarray(px, mode="L").save(root / folder / f"{stem}.png")


def _features(shards: dict[str, np.ndarray], roles: dict[str, str], labels: dict[str, str]) -> Features:
    keys = sorted(shards)
    emb = np.stack([shards[k][::4, ::4].astype(np.float32).ravel() - 128 for k in keys])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Features(np.array(keys), np.array([roles[k] for k in keys]), np.array([labels[k] for k in keys]), emb)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with every part a full run writes, built by hand at 32x32 with a handful of images."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    data, run = root / "data", root / "run"

    def img():
        return rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)

    def copy_of(px):
        return np.clip(px.astype(int) + rng.integers(-12, 13, px.shape), 0, 255).astype(np.uint8)

    pixels: dict[str, np.ndarray] = {}
    roles: dict[str, str] = {}
    labels: dict[str, str] = {}
    truth: dict[str, int] = {}
    for split, n_real in (("dev", 8), ("test", 8)):
        used = [img() for _ in range(n_real // 2)]
        nused = [img() for _ in range(n_real // 2)]
        gen = [copy_of(used[i % len(used)]) for i in range(10)]
        if split == "dev":
            u_keys = [f"used_{i:04d}" for i in range(len(used))]
            n_keys = [f"not_used_{i:04d}" for i in range(len(nused))]
            g_keys = [f"generated_{i:04d}" for i in range(len(gen))]
            _images(data / "dev", "used", u_keys, used)
            _images(data / "dev", "not_used", n_keys, nused)
            _images(data / "dev", "generated", g_keys, gen)
            labels.update({k: "used" for k in u_keys} | {k: "not_used" for k in n_keys})
        else:
            order = rng.permutation(n_real)
            reals = used + nused
            u_keys = [f"real_unknown_{order[i] + 1:04d}" for i in range(len(used))]
            n_keys = [f"real_unknown_{order[len(used) + i] + 1:04d}" for i in range(len(nused))]
            g_keys = [f"generated_{i + 1:05d}" for i in range(len(gen))]
            _images(data / "test", "real_unknown_1", u_keys + n_keys, reals)
            _images(data / "test", "generated_1", g_keys, gen)
            labels.update({k: "unknown" for k in u_keys + n_keys})
            truth.update({k: 1 for k in u_keys} | {k: 0 for k in n_keys})
        labels.update({k: "unknown" for k in g_keys})
        roles.update({k: "real" for k in u_keys + n_keys} | {k: "generated" for k in g_keys})
        pixels.update(dict(zip(u_keys + n_keys + g_keys, used + nused + gen)))
        pack(data / split, run / "shards" / split, image_size=SIZE, seed=0)

    dev_keys = [
        k for k in pixels if k.startswith(("used", "not_used")) or (k.startswith("generated_") and len(k) == 14)
    ]
    test_keys = [k for k in pixels if k not in dev_keys]
    dev = _features({k: pixels[k] for k in dev_keys}, roles, labels)
    test = _features({k: pixels[k] for k in test_keys}, roles, labels)
    dev.save(run / "features" / "dev.npz")
    test.save(run / "features" / "test.npz")

    # the score stage's outputs: a "relation" scorer with neighbours, and one baseline
    real, gen = test.select(role="real"), test.select(role="generated")
    sims = real.embeddings @ gen.embeddings.T
    nn = np.argsort(-sims, axis=1)[:, :K]
    nsims = np.take_along_axis(sims, nn, axis=1)
    pair = 1 / (1 + np.exp(-10 * (nsims - 0.5)))
    relation = pair.mean(axis=1)
    write_scores(
        run / "scores" / "relation.csv",
        real.keys.tolist(),
        relation,
        (relation >= 0.5).astype(int),
        meta={"scorer": "relation", "threshold": 0.5, "rule": "max_f1", "run_file": "run.csv"},
    )
    emb_nn = nsims[:, 0]
    write_scores(
        run / "scores" / "emb_nn.csv",
        real.keys.tolist(),
        emb_nn,
        (emb_nn >= 0.6).astype(int),
        meta={"scorer": "emb_nn", "threshold": 0.6},
    )
    np.savez(
        run / "scores" / "neighbours.npz",
        keys=real.keys,
        neighbour_keys=gen.keys[nn],
        neighbour_sims=nsims.astype(np.float32),
        pair_scores=pair.astype(np.float32),
    )
    (run / "test_truth.csv").write_text("figure_id,label\n" + "".join(f"{k},{v}\n" for k, v in sorted(truth.items())))

    (run / "model").mkdir()
    lines = [
        {"stage": "train", "step": s, "epoch": 1 + s // 5, "loss": 0.7 - 0.02 * s, "lr": 1e-3} for s in range(1, 11)
    ]
    lines += [
        {"stage": "train", "epoch": e, "loss": 0.6, "seconds": 1.0, "val_auc": 0.6 + 0.1 * e, "val_loss": 0.6}
        for e in (1, 2)
    ]
    lines += [{"stage": "train", "seconds": 2.0, "epochs": 2, "best_epoch": 2, "val_auc": 0.8}]
    (run / "model" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "log.jsonl").write_text(json.dumps({"stage": "pack", "seconds": 0.5, "images": 36}) + "\n")

    cluster.analyse(dev, test, cluster.ClusterConfig(n_clusters=3, n_boot=0, dendrogram_leaves=8), out_dir=run)
    cmp = compare.run_comparators(
        dev, test, compare.CompareConfig(comparators=("logreg",), folds=2, repeats=1, top_k=3, n_boot=0), out_dir=run
    )

    scorers = {}
    for name in ("relation", "emb_nn", "cluster", "cmp_logreg"):
        t = read_scores(run / "scores" / f"{name}.csv")
        scorers[name] = evaluate([truth[k] for k in t.keys], t.scores, t.labels, n_boot=20, seed=0)
    write_json(run / "metrics.json", {"split": "test", "scorers": scorers, "dev": cmp["cv"]})
    return run


def _page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def test_full_report_is_self_contained(run_dir, tmp_path):
    html_path, md_path = build_report(
        ReportConfig(run_dir=run_dir, out_dir=tmp_path, top_n=2, strip_k=K, samples_per_group=2)
    )
    text = html_path.read_text()
    assert "http://" not in text and "https://" not in text
    page = _page(html_path)
    assert page.tags[0] == "html" and "style" in page.tags and "script" not in page.tags
    assert len(page.imgs) >= 8  # samples x2, training, ROC, histograms, dendrograms x2, strips
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(link.startswith("#") for link in page.links)
    assert page.notes == 0, [t for t in page.text if "could not" in t or t.startswith("no ")]
    body = " ".join(page.text)
    for needed in (
        "relation",
        "emb_nn",
        "cmp_logreg",
        "cluster",
        "ROC-AUC",
        "true positives",
        "false negatives",
        "cophenetic_correlation",
        "real_unknown_",
    ):
        assert needed in body, needed
    md = md_path.read_text()
    assert md.startswith("# fingerprint report") and "| scorer | ROC-AUC |" in md and "base64" not in md
    assert "The run file" not in md  # the run file's numbers are the verdict's, not repeated under the metrics


def _md_sections(md: str) -> list[str]:
    return [line[3:] for line in md.splitlines() if line.startswith("## ")]


def test_report_opens_with_the_verdict(run_dir, tmp_path):
    """Sections answer first (verdict, ROC curves, strips), inventory last; the first table is the verdict's."""
    html_path, md_path = build_report(ReportConfig(run_dir=run_dir, out_dir=tmp_path, samples_per_group=1, top_n=1))
    page, md = _page(html_path), md_path.read_text()
    assert page.sections == ORDER and page.first_table_in == "verdict"
    assert [link[1:] for link in page.links] == ORDER  # the contents follow the same order
    assert _md_sections(md) == TITLES
    first_table = md[md.index("\n|") + 1 :].split("\n\n")[0]
    assert md.index("## Verdict") < md.index(first_table) < md.index("## ROC curves")
    metrics = json.loads((run_dir / "metrics.json").read_text())["scorers"]
    rel, base = metrics["relation"], metrics["emb_nn"]
    auc = rel["roc_auc"]
    expected = [
        "| run file (run.csv) written by | relation |",
        f"| test ROC-AUC [95% CI] | {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}] |",
        f"| kappa [95% CI] | {rel['kappa']['value']:.3f} [",
        f"| balanced accuracy [95% CI] | {rel['balanced_accuracy']['value']:.3f} [",
        f"| labelled used | {np.mean(read_scores(run_dir / 'scores' / 'relation.csv').labels):.1%} (",
        f"| margin over the best untrained baseline | {auc['value'] - base['roc_auc']['value']:+.3f} (emb_nn ",
        "| warnings | none |",
    ]
    for line in expected:
        assert line in first_table, (line, first_table)
    timings = md[md.index("### Stage timings") :]
    assert timings.count("| pack |") == 1


def test_stage_timings_once_per_stage(run_dir, tmp_path):
    """A stage run by `fingerprint run` logs its own record and the run's: the report shows one row for both."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    recs = [
        {"stage": "score", "seconds": 1.25, "n": 8, "n_predicted_used": 4},
        {"stage": "run", "step": "score-relation-test", "command": "score", "seconds": 1.5},
        {"stage": "report", "seconds": 0.75, "html_bytes": 1000},
        {"stage": "run", "step": "report", "command": "report", "seconds": 0.8},
        {"stage": "run", "seconds": 3.0},
    ]
    with open(run / "log.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    _, md_path = build_report(ReportConfig(run_dir=run, out_dir=tmp_path / "r", samples_per_group=1, top_n=1))
    rows = [line for line in md_path.read_text().split("### Stage timings")[1].splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "| pack | 0.5 | images 36 |",
        "| score-relation-test | 1.5 | n 8, n_predicted_used 4 |",
        "| report | 0.8 | html_bytes 1000 |",
        "| run (total) | 3.0 |  |",
    ]


def _verdict(md: str) -> str:
    return md[md.index("## Verdict") : md.index("## ROC curves")]


def test_verdict_shows_the_run_file_warning(run_dir, tmp_path):
    """The score stage's warning about the run file's labels is in the verdict's table and a note under it."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    side = run / "scores" / "relation.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "warnings": ["95% of the test reals are labelled used although ..."]}))
    _, md_path = build_report(ReportConfig(run_dir=run, out_dir=tmp_path / "r", samples_per_group=1, top_n=1))
    verdict = _verdict(md_path.read_text())
    assert "| warnings | 95% of the test reals are labelled used although ... |" in verdict
    assert "> Note: Warning: 95% of the test reals are labelled used" in verdict


def test_verdict_warns_on_near_chance_dev_scores_and_one_sided_labels(run_dir, tmp_path):
    """Dev scores that do not separate the labelled dev reals, and a run file labelling every test real used,
    each give a warning in the verdict."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    table = read_scores(run / "scores" / "relation.csv")
    meta = json.loads((run / "scores" / "relation.json").read_text())
    write_scores(run / "scores" / "relation.csv", table.keys, table.scores, np.ones(len(table.keys), int), meta=meta)
    with np.load(run / "features" / "dev.npz") as z:
        reals = [k for k, r in zip(z["keys"].astype(str), z["roles"].astype(str)) if r == "real"]
    flat = np.full(len(reals), 0.5)  # every dev real the same score: ROC-AUC 0.5
    write_scores(run / "scores_dev" / "relation.csv", reals, flat, np.zeros(len(reals), int), meta={})
    _, md_path = build_report(ReportConfig(run_dir=run, out_dir=tmp_path / "r", samples_per_group=1, top_n=1))
    verdict = _verdict(md_path.read_text())
    assert "| dev ROC-AUC | 0.500 (scores_dev/relation.csv, in-sample) |" in verdict
    assert "| labelled used | 100.0% (8 of 8 test reals) |" in verdict
    assert "> Note: Warning: the dev ROC-AUC is 0.500" in verdict and "near chance" in verdict
    assert "> Note: Warning: 100% of the test reals are labelled used although the labelled dev set is balanced" in (
        verdict
    )


def test_verdict_without_metrics_or_run_file(run_dir, tmp_path, monkeypatch):
    """Without metrics.json the verdict evaluates the score files against the truth; without a run-file scorer
    it says so in a note."""
    monkeypatch.setattr(report_sections, "VERDICT_BOOT", 20)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "metrics.json").unlink()
    _, md_path = build_report(ReportConfig(run_dir=run, out_dir=tmp_path / "a", samples_per_group=1, top_n=1))
    verdict = _verdict(md_path.read_text())
    assert "Test metrics from test_truth.csv (20 bootstrap resamples, seed 0)." in verdict
    assert "| test ROC-AUC [95% CI] | 1.000 [" in verdict
    side = run / "scores" / "relation.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "run_file": None}))
    _, md_path = build_report(ReportConfig(run_dir=run, out_dir=tmp_path / "b", samples_per_group=1, top_n=1))
    verdict = _verdict(md_path.read_text())
    assert "> Note: no score file names a run file" in verdict and "|" not in verdict


def test_report_in_headless_chromium(run_dir, tmp_path):
    """Rendered by a real browser: every image decodes, every contents link has its target, the console stays
    clean, and the page opens with the verdict."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium on PATH (install Debian's 'chromium' package; .ci/run does when it can)")
    html_path, _ = build_report(ReportConfig(run_dir=run_dir, out_dir=tmp_path, samples_per_group=2, top_n=2))
    try:
        seen = inspect_page(html_path, browser=browser)
    except BrowserUnavailable as e:
        pytest.skip(f"headless Chromium could not start here: {e}")
    assert len(seen.images) == len(_page(html_path).imgs) >= 8
    broken = [i["alt"] for i in seen.images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == []
    assert seen.links == ORDER and seen.unresolved == []
    assert seen.console_errors == []
    assert seen.sections == ORDER and seen.first_table == "verdict"


def test_browser_check_sees_broken_pages(tmp_path):
    """The browser check itself: a broken image, a dangling contents link and a console error are all caught."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium on PATH (install Debian's 'chromium' package; .ci/run does when it can)")
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
        '<nav><a href="#a">a</a><a href="#gone">gone</a></nav><section id="a"><p>x</p></section>'
        '<section id="b"><table><tr><td>1</td></tr></table>'
        '<img src="data:image/png;base64,iVBORw0KGgo=" alt="truncated"></section>'
        '<script>console.error("boom")</script></body></html>'
    )
    try:
        seen = inspect_page(page, browser=browser)
    except BrowserUnavailable as e:
        pytest.skip(f"headless Chromium could not start here: {e}")
    assert [i["width"] for i in seen.images] == [0] and seen.unresolved == ["gone"]
    assert any("boom" in e for e in seen.console_errors) and seen.first_table == "b"


def test_report_is_reproducible_and_refuses_to_overwrite(run_dir, tmp_path):
    a = build_report(
        ReportConfig(run_dir=run_dir, out_dir=tmp_path / "a", samples_per_group=1, top_n=1, strip_k=2, seed=3)
    )
    b = build_report(
        ReportConfig(run_dir=run_dir, out_dir=tmp_path / "b", samples_per_group=1, top_n=1, strip_k=2, seed=3)
    )
    assert a[0].read_bytes() == b[0].read_bytes() and a[1].read_bytes() == b[1].read_bytes()
    with pytest.raises(FingerprintError, match="already exists"):
        build_report(ReportConfig(run_dir=run_dir, out_dir=tmp_path / "a"))
    build_report(
        ReportConfig(
            run_dir=run_dir, out_dir=tmp_path / "a", samples_per_group=1, top_n=1, strip_k=2, seed=3, force=True
        )
    )


def test_missing_parts_become_notes(run_dir, tmp_path):
    bare = tmp_path / "bare"
    (bare / "scores").mkdir(parents=True)
    for name in ("relation.csv", "relation.json", "emb_nn.csv", "neighbours.npz"):
        (bare / "scores" / name).write_bytes((run_dir / "scores" / name).read_bytes())
    (bare / "scores" / "broken.csv").write_text("key,score\nx,1\n")
    html_path, md_path = build_report(ReportConfig(run_dir=bare))
    page = _page(html_path)
    body = " ".join(page.text)
    assert page.notes >= 6
    for note in (
        "no cluster output",
        "no truth",
        "no metrics.json",
        "no model/train_log.jsonl",
        "no compare/cv.json",
        "broken.csv",
        "without images",
    ):
        assert note in body, note
    assert "Note: no cluster output" in md_path.read_text()
    assert len(page.imgs) >= 1  # histograms of all scores still render


def test_bad_inputs_give_one_line_errors(run_dir, tmp_path, capsys):
    assert cli_report.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run folder not found" in err
    bad = tmp_path / "truth.csv"
    bad.write_text("figure_id,label\nreal_unknown_0001,2\n")
    assert cli_report.main([str(run_dir), "--truth", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    assert "label must be 0 or 1" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert (
        cli_report.main(
            [str(run_dir), "--out-dir", str(out), "--top-n", "1", "--strip-k", "2", "--samples-per-group", "1"]
        )
        == 0
    )
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert not list(out.glob(".*tmp*"))
