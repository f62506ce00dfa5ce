"""Folder locks: one writer per output folder, the holder named, stale locks taken over, no empty folder left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fingerprint.core.errors import FingerprintError
from fingerprint.core.locks import LOCK_FILE, folder_lock, locks_folder, read_holder

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from fingerprint.core.locks import folder_lock
with folder_lock(sys.argv[1], "fingerprint test-holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_gets_an_error_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FingerprintError) as e:
            with folder_lock(folder, "fingerprint run"):
                pass
        msg = str(e.value)
        assert f"in use by pid {holder.pid} on host" in msg and "fingerprint test-holder" in msg
        assert str(folder / LOCK_FILE) in msg
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the kernel dropped its lock; the file naming it is left and taken over
    assert read_holder(folder)["pid"] == holder.pid
    with folder_lock(folder, "fingerprint run"):
        assert read_holder(folder)["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()  # released: removed


def test_reentrant_in_one_process_and_released(tmp_path):
    with folder_lock(tmp_path / "r", "outer") as f:
        with folder_lock(tmp_path / "r", "inner"):
            assert json.loads((f / LOCK_FILE).read_text())["command"] == "outer"
        assert (f / LOCK_FILE).exists()
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_a_failed_command_leaves_no_folder_it_created(tmp_path):
    @locks_folder(lambda cfg: cfg, "fingerprint test")
    def fails(cfg):
        raise FingerprintError("boom")

    with pytest.raises(FingerprintError, match="boom"):
        fails(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(FingerprintError):
        fails(tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()  # it existed before: kept

    @locks_folder(lambda cfg: cfg, "fingerprint test")
    def writes_then_fails(cfg):
        (cfg / "log.txt").write_text("x")
        raise FingerprintError("boom")

    with pytest.raises(FingerprintError):
        writes_then_fails(tmp_path / "c")
    assert (tmp_path / "c" / "log.txt").exists()  # not empty: kept


def test_no_lock_for_a_missing_folder_not_to_be_created(tmp_path):
    @locks_folder(lambda cfg: cfg, "fingerprint report", create=False)
    def report(cfg):
        return cfg.exists()

    assert report(tmp_path / "missing") is False and not (tmp_path / "missing").exists()
