"""Stage-complete records: complete only as recorded; a changed output, config, input or chain means redo."""

from __future__ import annotations

import os

from fingerprint.core.records import StageRecords, listing_digest


def test_complete_only_while_everything_matches(tmp_path):
    out = tmp_path / "a.txt"
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "s0.tar").write_bytes(b"x" * 10)
    out.write_text("hello")
    records = StageRecords(tmp_path)
    rec = records.write("stage", ["--k", "1"], "chain", [out, folder], "inputs", seconds=1.0)
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "inputs")["digest"] == rec["digest"]
    assert records.complete("stage", ["--k", "2"], "chain", [out, folder], "inputs") is None  # options changed
    assert records.complete("stage", ["--k", "1"], "other", [out, folder], "inputs") is None  # a stage before redone
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "other") is None  # inputs changed
    # the same bytes rewritten (a later stage rewrites model files): still complete, by sha256
    out.write_text("hello")
    os.utime(out, ns=(1, 1))
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "inputs") is not None
    out.write_text("hellO")  # same size, other bytes
    os.utime(out, ns=(2, 2))
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "inputs") is None
    out.write_text("hello")
    (folder / "s1.tar").write_bytes(b"y")  # a file more in an output folder
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "inputs") is None
    (folder / "s1.tar").unlink()
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "inputs") is not None
    records.invalidate("stage")
    assert records.read("stage") is None
    assert records.complete("stage", ["--k", "1"], "chain", [out, folder], "inputs") is None


def test_input_listing_changes_with_the_inputs(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"1")
    before = listing_digest([tmp_path / "in"])
    assert listing_digest([tmp_path / "in"]) == before
    (tmp_path / "in" / "a.png").rename(tmp_path / "in" / "b.png")
    assert listing_digest([tmp_path / "in"]) != before
