"""Is the relation network worth a place in the fusion? Its dev scores made out of fold, then the fusion refitted.

The relation network is trained on the dev labels, so its in-sample dev scores cannot enter a fusion
fitted on the same labels. Here it is retrained once per stratified fold of the dev reals (the fold's
reals left out of the training shards), each fold's reals are scored by the model that never saw them,
and the test reals by the run's own model (trained on all of dev), as in stacking. The relation score
then joins the fused scorer's candidate groups (`fuse.extra`); the test ROC-AUC and kappa of the refit
are compared with the run's fused scorer. Costs `folds` trainings (5 x the train stage).

    nice python benchmarks/quality_relation_oof.py RUN_DIR DATA_DIR --out OUT.json [--folds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from quality_table import evaluate_fusion  # noqa: E402

from fingerprint.core.files import write_json  # noqa: E402
from fingerprint.core.logs import setup_logging  # noqa: E402
from fingerprint.data.pack import PackConfig, run_pack  # noqa: E402
from fingerprint.embedding.embed import EmbedConfig, run_embed  # noqa: E402
from fingerprint.evaluation.metrics import read_truth, roc_auc  # noqa: E402
from fingerprint.evaluation.scorefiles import read_scores  # noqa: E402
from fingerprint.membership.fuse import FuseConfig, load_fusion, run_fuse  # noqa: E402
from fingerprint.membership.profile import load_profile, save_profile  # noqa: E402
from fingerprint.membership.score import ScoreConfig, run_score  # noqa: E402
from fingerprint.training.train import TrainConfig, run_train  # noqa: E402


def link(src: Path, dst: Path) -> None:
    """A hard link (a copy across file systems): pack resolves symlinks, which would leave the fold's folder."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fold_scores(run_dir: Path, data: Path, work: Path, keys: list[str], y: np.ndarray, folds: int, seed: int) -> dict:
    """{dev key: relation score from the model trained without its fold}."""
    out: dict[str, float] = {}
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    for k, (_, held) in enumerate(split):
        held_keys = {keys[i] for i in held}
        src = work / f"fold{k}" / "dev"
        for sub in ("used", "not_used", "generated"):
            (src / sub).mkdir(parents=True, exist_ok=True)
            for f in sorted((data / "dev" / sub).glob("*.png")):
                if f.stem not in held_keys and not (src / sub / f.name).exists():
                    link(f, src / sub / f.name)
        shards, model = work / f"fold{k}" / "shards", work / f"fold{k}" / "model"
        if not (shards / "manifest.json").exists():
            run_pack(PackConfig(src=src, out=shards, seed=seed))
        if not (model / "model.json").exists():
            run_train(TrainConfig(shards=shards, out=model, seed=seed, force=True))
        feats = work / f"fold{k}" / "dev.npz"
        if not feats.exists():
            run_embed(EmbedConfig(model=model, shards=run_dir / "shards" / "dev", out=feats, fmaps=True, seed=seed))
        scores = work / f"fold{k}" / "relation.csv"
        score = ScoreConfig(scorer="relation", features=feats, model=model, out=scores, k=8, threshold=0.5,
                            scale="raw", store_calibration=False, force=True, seed=seed)  # fmt: skip
        run_score(score)
        table = read_scores(scores)
        out |= {key: s for key, s in zip(table.keys, table.scores) if key in held_keys}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run folder (fingerprint run)")
    ap.add_argument("data", type=Path, help="its data folder (dev/ in the 2023 layout, test_truth.csv)")
    ap.add_argument("--out", type=Path, required=True, help="JSON result")
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    run_dir, work = a.run_dir, a.run_dir / "ablations" / "relation_oof"
    fusion = load_fusion(run_dir / "model" / "fusion.json")
    seed = int(fusion["config"]["seed"])
    dev, dev_cols = load_profile(run_dir / "profile" / "dev.npz")
    test, test_cols = load_profile(run_dir / "profile" / "test.npz")
    y = np.array([v == "used" for v in dev.labels], dtype=int)
    oof = fold_scores(run_dir, a.data, work, dev.keys.tolist(), y, a.folds, seed)
    full = dict(zip(*read_scores(run_dir / "scores" / "relation.csv")[:2]))
    save_profile(work / "dev.npz", dev.keys.tolist(), dev.labels.tolist(),
                 {**dev_cols, "relation": np.array([oof[k] for k in dev.keys])}, dev.meta)  # fmt: skip
    save_profile(work / "test.npz", test.keys.tolist(), test.labels.tolist(),
                 {**test_cols, "relation": np.array([full[k] for k in test.keys])}, test.meta)  # fmt: skip
    truth = read_truth(a.data / "test_truth.csv")
    rows = {}
    for name, extra in (("fused", ()), ("fused_plus_relation", ("relation",))):
        out = work / f"{name}.json"
        run_fuse(FuseConfig(dev=work / "dev.npz", out=out, seed=seed, extra=extra, force=True))
        rows[name] = evaluate_fusion(out, work / "test.npz", truth, 500, seed)
    rows["relation_oof_dev_auc"] = roc_auc(y, np.array([oof[k] for k in dev.keys]))
    rows["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(a.out, rows)
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
