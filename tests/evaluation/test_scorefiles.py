"""Score files: key,score,label rows with a JSON sidecar, one-line errors for bad input, neighbours.npz."""

import numpy as np
import pytest

from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation import scorefiles as sc
from fingerprint.evaluation.scorefiles import ScoreResult


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


def test_neighbours_file_has_every_array(tmp_path):
    res = ScoreResult(
        ["a", "b"],
        np.array([0.2, 0.9]),
        components={"nn_sim": np.array([0.5, 0.7])},
        neighbour_keys=np.array([["g1", "g2"], ["g2", "g3"]]),
        neighbour_sims=np.array([[0.5, 0.4], [0.7, 0.1]]),
        pair_scores=np.array([[0.1, 0.2], [0.8, 0.3]]),
    )
    path = res.save_neighbours(tmp_path / "neighbours.npz")
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["keys", "neighbour_keys", "neighbour_sims", "nn_sim", "pair_scores"]
        assert z["neighbour_keys"].tolist() == [["g1", "g2"], ["g2", "g3"]] and z["pair_scores"].dtype == np.float32
    with pytest.raises(FingerprintError, match="no neighbours"):
        ScoreResult(["a"], np.array([0.1])).save_neighbours(tmp_path / "x.npz")
