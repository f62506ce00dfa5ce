"""Score files, relation scoring over retrieved neighbours, calibration and the score command."""

import json

import numpy as np
import pytest
import torch

from fingerprint import score as sc
from fingerprint.cli import score as score_cli
from fingerprint.embed import Features
from fingerprint.index import build_index, save_index
from fingerprint.models import ModelConfig, build_model, load_model, save_model
from fingerprint.runfile import validate
from fingerprint.utils import FingerprintError

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


def test_score_file_roundtrip_and_errors(tmp_path):
    p = sc.write_scores(tmp_path / "s.csv", ["a", "b"], [0.1, 1 / 3], [0, 1], meta={"threshold": 0.2})
    t = sc.read_scores(p)
    keys, scores, labels = t
    assert keys == ["a", "b"] and scores[1] == 1 / 3 and labels.tolist() == [0, 1]
    assert sc.read_score_meta(p) == {"threshold": 0.2}
    assert p.read_text().splitlines()[0] == "key,score,label"
    for text, msg in [
        ("key,score\n", "header"),
        ("key,score,label\na,x,1\n", "line 2: score"),
        ("key,score,label\na,0.1,2\n", "line 2: label"),
        ("key,score,label\na,1,1\na,2,0\n", "line 3: key"),
        ("key,score,label\na,nan,1\n", "not finite"),
        ("key,score,label\n", "no rows"),
    ]:
        p.write_text(text)
        with pytest.raises(FingerprintError, match=msg):
            sc.read_scores(p)
    with pytest.raises(FingerprintError, match="labels must be 0 or 1"):
        sc.write_scores(tmp_path / "t.csv", ["a"], [0.5], [2])
    assert not (tmp_path / "t.csv").exists()


def test_relation_scores_equal_bruteforce(model):
    f = features_of(model)
    real, gen = f.select(role="real"), f.select(role="generated")
    k = 5
    res = sc.relation_scores(model, real, gen, k=k, batch_size=4)
    assert res.keys == real.keys.tolist()
    sims = real.embeddings @ gen.embeddings.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    assert (res.neighbour_keys == gen.keys[rows]).all()
    with torch.no_grad():
        q = torch.from_numpy(real.fmaps.astype(np.float32))
        s = torch.from_numpy(gen.fmaps.astype(np.float32)[rows])
        logits = model.relate(q, s)
        want = torch.sigmoid(model.pool(logits)).numpy()
    np.testing.assert_allclose(res.score, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.pair_scores, torch.sigmoid(logits).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.components["nn_sim"], sims.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(res.components["mean_topk_sim"], np.sort(sims, axis=1)[:, -k:].mean(axis=1), atol=1e-5)
    assert (res.score > 0).all() and (res.score < 1).all()


def test_saved_index_in_another_order_and_approximate_fill(model, tmp_path):
    f = features_of(model, n_gen=80)
    real, gen = f.select(role="real"), f.select(role="generated")
    ref = sc.relation_scores(model, real, gen, k=4)
    perm = np.random.default_rng(0).permutation(len(gen))
    save_index(build_index(gen.embeddings[perm]), tmp_path / "g.faiss", gen.keys[perm].tolist())
    from fingerprint.index import load_index

    idx, keys = load_index(tmp_path / "g.faiss")
    res = sc.relation_scores(model, real, gen, idx, k=4, index_keys=keys)
    assert (res.neighbour_keys == ref.neighbour_keys).all()
    np.testing.assert_allclose(res.score, ref.score, rtol=1e-6)
    with pytest.raises(FingerprintError, match="not among the generated"):
        sc.relation_scores(model, real, gen, idx, k=4, index_keys=[k + "x" for k in keys])


def test_approximate_index_gaps_are_filled_exactly():
    # two tight clusters of 40; IVF2 probing 1 list finds only 40 of the 50 asked for
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    gen = np.concatenate([c + 0.01 * rng.standard_normal((40, 8)) for c in centres]).astype(np.float32)
    real = centres + 0.01 * rng.standard_normal((2, 8)).astype(np.float32)
    ivf = build_index(gen, "IVF2,Flat", nprobe=1)
    from fingerprint.index import exact_search, search

    assert (search(ivf, real, 50)[1] < 0).any()
    sims, rows = sc.neighbours(real, gen, ivf, k=50)
    want_sims, want_rows = exact_search(gen, real, 50)
    assert (rows == want_rows).all()
    np.testing.assert_allclose(sims, want_sims)


def test_relation_needs_fmaps(model):
    f = features_of(model)
    real = f.select(role="real")
    real.fmaps = None
    with pytest.raises(FingerprintError, match="--fmaps"):
        sc.relation_scores(model, real, f.select(role="generated"))


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
    assert meta["calibration"]["threshold"] == side["threshold"] and meta["calibration"]["rule"] == "youden"
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
