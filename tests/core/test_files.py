"""Shared helpers: atomic outputs (OS errors named, stale temporaries of killed processes removed), early checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import read_only

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, check_writable, remove_stale_temporaries, write_json


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".out.tmp-{dead}"
    (stale_dir / "sub").mkdir(parents=True)
    stale_old = tmp_path / f".out.old-{dead}"
    stale_old.write_text("x")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a running process's temporary is never touched
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead}"
    other.write_text("x")
    with atomic_path(tmp_path / "out") as tmp:
        tmp.mkdir()
    assert not stale_dir.exists() and not stale_old.exists() and live.exists() and other.exists()
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / f".f.json.tmp-{dead}").write_text("x")
    assert remove_stale_temporaries(tmp_path, recursive=True) == 2  # other + deep
    assert live.exists()


def test_os_errors_while_writing_name_the_file_and_leave_nothing(tmp_path):
    target = tmp_path / "new" / "x.json"
    target.mkdir(parents=True)
    (target / "keep").write_text("a non-empty folder where the file should go")
    with pytest.raises(FingerprintError, match=rf"{target}: .*\((EISDIR|ENOTEMPTY|EEXIST)\)"):
        write_json(target, {"a": 1})
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]  # no temporary left
    with pytest.raises(FingerprintError, match="boom"):
        with atomic_path(tmp_path / "a" / "b" / "c.txt") as tmp:
            tmp.write_text("half")
            raise FingerprintError("boom")
    assert not (tmp_path / "a").exists()  # folders it created are removed again


def test_check_writable_fails_early_and_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "not" / "yet") == tmp_path / "not" / "yet"
    assert list(tmp_path.iterdir()) == []  # probes where the folder would be created, creates nothing
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        with pytest.raises(FingerprintError, match=rf"{tmp_path / 'ro' / 'x'}: cannot write here"):
            check_writable(tmp_path / "ro" / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FingerprintError, match="not a folder"):
        check_writable(tmp_path / "file" / "sub")
    assert Path(tmp_path / "ro").is_dir()


def test_text_lines_reads_bom_crlf_alike(tmp_path):
    from fingerprint.core.files import text_lines

    f = tmp_path / "t.csv"
    for raw in (b"\xef\xbb\xbfa,1\r\nb,0\r\n", b"a,1\nb,0\n", b"a,1\rb,0", b"\xef\xbb\xbfa,1\nb,0"):
        f.write_bytes(raw)
        assert text_lines(f, "truth file") == ["a,1", "b,0"]
    f.write_bytes(b"a,1\n\nb,0\n")
    assert text_lines(f) == ["a,1", "", "b,0"]
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(FingerprintError, match="t.csv: id file is not UTF-8 text"):
        text_lines(f, "id file")
    with pytest.raises(FingerprintError, match="none.csv: truth file not found"):
        text_lines(tmp_path / "none.csv", "truth file")


def test_output_folder_removes_what_a_failed_block_created(tmp_path):
    from fingerprint.core.files import output_folder

    out = tmp_path / "a" / "out"
    with pytest.raises(FingerprintError):
        with output_folder(out):
            (out / "shards" / "x").mkdir(parents=True)
            (out / "shards" / "x" / "s.tar").write_text("partial")
            raise FingerprintError("failed")
    assert not (tmp_path / "a").exists()
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("kept")
    (out / "old").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with output_folder(out):
            (out / "old" / "new.json").write_text("{}")
            (out / "new").mkdir()
            raise KeyboardInterrupt
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["mine.txt", "old"]
    with output_folder(out):
        (out / "done.json").write_text("{}")
    assert (out / "done.json").exists()
