"""The score stage: registered scorers' inputs, the threshold policy, outputs, and the score command."""

import json

import numpy as np
import pytest
import torch

from fingerprint.cli import score as score_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import Features
from fingerprint.embedding.model_io import build_model, load_model, save_model
from fingerprint.embedding.models import ModelConfig
from fingerprint.evaluation import scorefiles as sc
from fingerprint.evaluation.runfile import validate
from fingerprint.membership.score import ScoreConfig, run_score

SIZE = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(image_size=SIZE, embed_dim=16)).eval()


def features_of(model, n_real=6, n_gen=20, seed=0, sha=None) -> Features:
    """Real images used_/not_used_ (half each) and generated images; the first generated copy the used ones."""
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n_real, 1, SIZE, SIZE, generator=g)
    gen = torch.rand(n_gen, 1, SIZE, SIZE, generator=g)
    half = n_real // 2
    gen[:half] = (real[:half] + 0.01 * torch.randn(half, 1, SIZE, SIZE, generator=g)).clamp(0, 1)
    with torch.no_grad():
        re, rf = model.encode(real, "real")
        ge, gf = model.encode(gen, "generated")
    keys = [f"used_{i:04d}" for i in range(half)] + [f"not_used_{i:04d}" for i in range(n_real - half)]
    keys += [f"generated_{i:04d}" for i in range(n_gen)]
    return Features(
        keys,
        ["real"] * n_real + ["generated"] * n_gen,
        ["used"] * half + ["not_used"] * (n_real - half) + ["unknown"] * n_gen,
        torch.cat([re, ge]).numpy(),
        torch.cat([rf, gf]).numpy(),
        {"model_sha256": sha} if sha else {},
    )


def _model_dir(model, tmp_path):
    save_model(model, tmp_path / "model", extra={"train": {"note": "kept"}})
    return tmp_path / "model", json.loads((tmp_path / "model" / "model.json").read_text())["sha256"]


def test_score_command_relation(model, tmp_path):
    mdir, sha = _model_dir(model, tmp_path)
    dev = features_of(model, seed=1, sha=sha)
    dev.save(tmp_path / "dev.npz")
    test = features_of(model, seed=2, sha=sha)
    test.save(tmp_path / "test.npz")
    real_keys = sorted(test.select(role="real").keys.tolist())
    (tmp_path / "ids.txt").write_text("\n".join(real_keys) + "\n")
    out = tmp_path / "scores" / "relation.csv"
    argv = [
        "--features",
        str(tmp_path / "test.npz"),
        "--model",
        str(mdir),
        "--out",
        str(out),
        "--k",
        "4",
        "--run-file",
        str(tmp_path / "run.csv"),
        "--ids",
        str(tmp_path / "ids.txt"),
    ]
    assert score_cli.main([*argv, "--calibrate-on", str(tmp_path / "dev.npz"), "--rule", "youden"]) == 0
    table = sc.read_scores(out)
    assert sorted(table.keys) == real_keys
    assert validate(tmp_path / "run.csv", real_keys) == []
    side = sc.read_score_meta(out)
    _, meta = load_model(mdir)
    assert meta["calibration"]["threshold"] == side["threshold_on_scale"] and meta["calibration"]["rule"] == "youden"
    assert side["threshold_scale"] == meta["calibration"]["scale"] == "robust"
    assert meta["train"] == {"note": "kept"}
    assert (table.labels == (table.scores >= side["threshold"])).all()
    with np.load(tmp_path / "scores" / "neighbours.npz", allow_pickle=False) as z:
        assert z["neighbour_keys"].shape == (len(real_keys), 4) and z["keys"].tolist() == table.keys
        assert z["pair_scores"].dtype == np.float32 and "nn_sim" in z.files
    # the stored calibration is used when none is given
    assert score_cli.main([*argv, "--force"]) == 0
    again = sc.read_score_meta(out)
    assert again["threshold"] == side["threshold"] and "stored" in again["threshold_from"]
    np.testing.assert_array_equal(sc.read_scores(out).scores, table.scores)


def test_score_command_errors(model, tmp_path, capsys):
    mdir, sha = _model_dir(model, tmp_path)
    f = features_of(model)
    f.meta["model_sha256"] = "0" * 64
    f.save(tmp_path / "f.npz")
    out = str(tmp_path / "s.csv")
    assert score_cli.main(["--features", str(tmp_path / "f.npz"), "--model", str(mdir), "--out", out]) == 2
    assert "another model" in capsys.readouterr().err
    assert score_cli.main(["--scorer", "emb_nn", "--features", str(tmp_path / "f.npz"), "--out", out]) == 2
    assert "--calibrate-on" in capsys.readouterr().err
    assert score_cli.main(["--scorer", "dcr", "--out", out]) == 2
    assert "needs --shards" in capsys.readouterr().err
    # labelled dev set needed for calibration
    test = features_of(model)
    test.labels[test.roles == "real"] = "unknown"
    test.save(tmp_path / "t.npz")
    argv = [
        "--scorer",
        "emb_nn",
        "--features",
        str(tmp_path / "t.npz"),
        "--calibrate-on",
        str(tmp_path / "t.npz"),
        "--out",
        out,
    ]
    assert score_cli.main(argv) == 2
    assert "used/not_used" in capsys.readouterr().err
    assert (
        score_cli.main(
            ["--scorer", "emb_topk", "--features", str(tmp_path / "t.npz"), "--threshold", "0.5", "--out", out]
        )
        == 0
    )
    assert sorted(sc.read_scores(out).keys) == sorted(test.select(role="real").keys.tolist())


def test_threshold_policy_and_outputs(model, tmp_path):
    """Given > calibrated on dev > stored with the model > the scorer's default; neighbours for relation only."""
    mdir, sha = _model_dir(model, tmp_path)
    features_of(model, seed=1, sha=sha).save(tmp_path / "dev.npz")
    features_of(model, seed=2, sha=sha).save(tmp_path / "test.npz")
    common = {"features": tmp_path / "test.npz", "model": mdir, "k": 3, "force": True}
    out = tmp_path / "s" / "relation.csv"
    rec = run_score(ScoreConfig(out=out, **common))
    assert rec["threshold"] == 0.5 and rec["threshold_from"].startswith("0.5")  # no calibration anywhere yet
    given = 0.1 + 0.2  # a float passes exactly
    assert run_score(ScoreConfig(out=out, threshold=given, scale="raw", **common))["threshold"] == given
    assert sc.read_score_meta(out)["threshold"] == given
    rec = run_score(ScoreConfig(out=out, calibrate_on=tmp_path / "dev.npz", **common))
    assert rec["threshold_from"] == f"calibrated on {tmp_path / 'dev.npz'}"
    assert load_model(mdir)[1]["calibration"]["threshold"] == rec["threshold"]  # stored with the model
    stored = run_score(ScoreConfig(out=out, **common))
    assert stored["threshold"] == rec["threshold"] and "stored" in stored["threshold_from"]
    assert (tmp_path / "s" / "neighbours.npz").is_file()
    emb = tmp_path / "e" / "emb_topk.csv"
    run_score(ScoreConfig(scorer="emb_topk", out=emb, features=tmp_path / "test.npz", threshold=0.0, k=2))
    assert not (tmp_path / "e" / "neighbours.npz").exists() and sc.read_score_meta(emb)["k"] == 2
    with pytest.raises(FingerprintError, match=r"score.scorer emb_nn needs score.calibrate_on DEV or score.threshold"):
        run_score(ScoreConfig(scorer="emb_nn", out=tmp_path / "n.csv", features=tmp_path / "test.npz"))
    with pytest.raises(FingerprintError, match=r"score.scorer dcr needs score.shards"):
        ScoreConfig(scorer="dcr", out=tmp_path / "d.csv")


def _as_folder(feats: Features, folder, n_parts: int = 3) -> None:
    """Write `feats` as a features folder of `n_parts` parts (as embed would, one per shard)."""
    from fingerprint.embedding.features import finish_store, write_part

    rec = {"model_sha256": feats.meta.get("model_sha256"), "image_size": SIZE, "fmaps": True}
    parts = np.array_split(np.random.default_rng(0).permutation(len(feats)), n_parts)
    for i, rows in enumerate(parts):
        write_part(folder, f"shard-{i:06d}", feats.take(rows), rec)
    finish_store(folder, [f"shard-{i:06d}" for i in range(n_parts)], {**rec, "shards": "x"})


def test_scoring_a_features_folder_reads_only_the_neighbours(model, tmp_path, monkeypatch):
    """Same scores as from one .npz; the generated rows are never loaded whole: the relation scorer reads only
    the top-k neighbours' maps from the memory-mapped parts."""
    from fingerprint.embedding.features import FeatureStore, StoreGallery
    from fingerprint.embedding.index import IndexConfig, run_index

    mdir, sha = _model_dir(model, tmp_path)
    feats = features_of(model, n_real=8, n_gen=30, seed=4, sha=sha)
    feats.save(tmp_path / "f.npz")
    _as_folder(feats, tmp_path / "f")
    for src in ("f.npz", "f"):
        run_index(IndexConfig(features=tmp_path / src, out=tmp_path / f"{src}.faiss"))
    loaded, read = [], []
    real_load, real_gather = FeatureStore.load, StoreGallery._gather
    monkeypatch.setattr(
        FeatureStore, "load", lambda self, role=None, **kw: loaded.append(role) or real_load(self, role, **kw)
    )
    monkeypatch.setattr(
        StoreGallery, "_gather", lambda self, a, rows: read.append((a, np.size(rows))) or real_gather(self, a, rows)
    )
    for name in ("relation", "emb_topk", "emb_nn"):
        got = {}
        for src in ("f.npz", "f"):
            cfg = ScoreConfig(scorer=name, features=tmp_path / src, index=tmp_path / f"{src}.faiss", model=mdir, k=4,
                              out=tmp_path / f"o_{src}" / f"{name}.csv", threshold=0.5)  # fmt: skip
            run_score(cfg)
            got[src] = sc.read_scores(cfg.out)
        assert dict(zip(got["f"].keys, got["f"].scores)) == dict(zip(got["f.npz"].keys, got["f.npz"].scores))
    assert set(loaded) == {"real"}  # never the generated rows as a whole
    assert ("fmaps", 8 * 4) in read and all(n <= 8 * 4 for _, n in read)
    with np.load(tmp_path / "o_f" / "neighbours.npz") as a, np.load(tmp_path / "o_f.npz" / "neighbours.npz") as b:
        assert dict(zip(a["keys"], a["neighbour_keys"].tolist())) == dict(zip(b["keys"], b["neighbour_keys"].tolist()))
    with pytest.raises(FingerprintError, match=r"f.npz.faiss: indexes the keys of a .npz; rebuild it from"):
        run_score(ScoreConfig(scorer="emb_nn", features=tmp_path / "f", index=tmp_path / "f.npz.faiss",
                              out=tmp_path / "x.csv", threshold=0.5))  # fmt: skip
    _as_folder(feats, tmp_path / "g", n_parts=2)  # the same rows, other parts: other ids
    run_index(IndexConfig(features=tmp_path / "g", out=tmp_path / "g.faiss"))
    with pytest.raises(FingerprintError, match=r"g.faiss: built from other features than .*/f \(rebuild it"):
        run_score(ScoreConfig(scorer="emb_nn", features=tmp_path / "f", index=tmp_path / "g.faiss",
                              out=tmp_path / "x.csv", threshold=0.5))  # fmt: skip
