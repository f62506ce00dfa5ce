"""Collections scored together: packing folders, ids, what a model trained on, one scorer call against one pool."""

import json

import numpy as np
import pytest

from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.evaluation.scorefiles import read_scores
from fingerprint.membership.score import ScoreConfig, run_score
from fingerprint.tasks.imagesets import (
    check_unique_keys,
    content_ids,
    image_files,
    is_shard_folder,
    members,
    pack_collection,
    score_together,
    shard_records,
    stratified_holdout,
    training_hashes,
)


def test_pack_collection_packs_folders_and_passes_shards_through(tiny_audit_build, tmp_path):
    folder = tiny_audit_build / "audit" / "candidate"
    shards = pack_collection(folder, tmp_path / "cand", role="real", label="unknown", image_size=64)
    assert is_shard_folder(shards) and not is_shard_folder(folder)
    recs = shard_records(shards)
    assert sorted(r["key"] for r in recs) == sorted(p.stem for p in folder.glob("*.png"))
    assert {(r["role"], r["label"]) for r in recs} == {("real", "unknown")} and all(content_ids(r) for r in recs)
    assert pack_collection(shards, tmp_path / "again", role="real", label="unknown") == shards
    assert not (tmp_path / "again").exists() and not list(tmp_path.glob(".*staging"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FingerprintError, match="no image files"):
        pack_collection(tmp_path / "empty", tmp_path / "x", role="real", label="unknown")


def test_ids_must_be_unique_across_collections(tiny_audit_build, tmp_path):
    a = pack_collection(tiny_audit_build / "audit" / "candidate", tmp_path / "a", role="real", label="unknown")
    gen = pack_collection(tiny_audit_build / "test" / "generated_1", tmp_path / "g", role="generated", label="unknown")
    with pytest.raises(FingerprintError, match="is in both the candidate and the reference collection"):
        check_unique_keys({"candidate": members(a), "reference": members(a)}, gen)
    check_unique_keys({"candidate": members(a)}, gen)


def test_training_hashes_need_the_training_shards(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"train": {"config": {"shards": str(tmp_path / "gone")}}}))
    with pytest.raises(FingerprintError, match="cannot be read"):
        training_hashes(tmp_path)


def test_stratified_holdout_is_seeded_and_per_label():
    keys = [f"u{i}" for i in range(10)] + [f"n{i}" for i in range(6)]
    labels = ["used"] * 10 + ["not_used"] * 6
    held = stratified_holdout(keys, labels, 0.5, seed=1)
    assert len([k for k in held if k[0] == "u"]) == 5 and len([k for k in held if k[0] == "n"]) == 3
    assert held == stratified_holdout(keys, labels, 0.5, seed=1) != stratified_holdout(keys, labels, 0.5, seed=2)
    assert stratified_holdout(keys, labels, 0.0, seed=1) == set()


def test_score_together_is_the_score_stage_on_every_group_at_once(tiny_audit_build, tmp_path):
    """dcr scores of candidate and reference, scored in one call, equal `fingerprint score` on the test split."""
    b = tiny_audit_build
    test = pack(b / "test", tmp_path / "test", image_size=64)
    assert test["count"] == 80 + 60
    run_score(ScoreConfig(scorer="dcr", shards=tmp_path / "test", out=tmp_path / "dcr.csv", threshold=0.5))
    table = read_scores(tmp_path / "dcr.csv")
    expected = dict(zip(table.keys, table.scores))
    groups = {
        name: members(pack_collection(b / "audit" / name, tmp_path / name, role="real", label="unknown", image_size=64))
        for name in ("candidate", "reference")
    }  # fmt: skip
    gen = pack_collection(
        b / "test" / "generated_1", tmp_path / "gen", role="generated", label="unknown", image_size=64
    )
    together = score_together("dcr", groups, gen, tmp_path / "work", params={"pixel_size": 64})
    assert together.groups == ["candidate"] * 20 + ["reference"] * 40
    assert together.conditions["one_scoring_call"] and together.conditions["pixel_size"] == 64
    # equal up to float32 rounding (FAISS's L2 in float32 depends on which queries share a batch)
    np.testing.assert_allclose(together.scores, [expected[k] for k in together.keys], rtol=1e-5, atol=0)


def test_collections_follow_links_and_count_broken_ones(tmp_path):
    """A collection assembled from links: a linked folder is followed, a broken link is a counted, listed skip."""
    from PIL import Image

    elsewhere, coll = tmp_path / "elsewhere", tmp_path / "coll"
    elsewhere.mkdir()
    coll.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(elsewhere / f"x{i}.png")
    (coll / "part").symlink_to(elsewhere, target_is_directory=True)
    (coll / "gone.png").symlink_to(tmp_path / "missing.png")
    assert [p.relative_to(coll).as_posix() for p in image_files(coll)] == [
        "gone.png", "part/x0.png", "part/x1.png", "part/x2.png"]  # fmt: skip
    out = pack_collection(coll, tmp_path / "out", role="real", label="unknown", image_size=16)
    man = json.loads((out / "manifest.json").read_text())
    assert man["count"] == 3 and man["n_skipped"] == 1 and "broken link" in man["skipped"][0]["reason"]
