"""Training files: complete checkpoints only, the newest one for resume, a weights digest, the model folder."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import sha256_file, write_json
from fingerprint.training import checkpoints
from fingerprint.training.train import TrainConfig


def test_find_checkpoint_takes_the_newest_complete_one(tmp_path):
    root = tmp_path / "checkpoints"
    for n, complete in ((0, True), (1, True), (2, False), (10, True)):
        (root / f"checkpoint_{n}").mkdir(parents=True)
        if complete:
            write_json(root / f"checkpoint_{n}" / checkpoints.STATE_FILE, {"epoch": n})
    assert checkpoints.find_checkpoint(tmp_path, "latest") == root / "checkpoint_10"
    assert checkpoints.find_checkpoint(tmp_path, str(root / "checkpoint_1")) == root / "checkpoint_1"
    with pytest.raises(FingerprintError, match="not a complete training checkpoint"):
        checkpoints.find_checkpoint(tmp_path, str(root / "checkpoint_2"))
    with pytest.raises(FingerprintError, match="no complete checkpoint"):
        checkpoints.find_checkpoint(tmp_path / "elsewhere", "latest")


def test_state_digest_follows_the_weights():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    assert checkpoints.state_digest(a) == checkpoints.state_digest(a)
    assert checkpoints.state_digest(a) != checkpoints.state_digest(b)
    b.load_state_dict(a.state_dict())
    assert checkpoints.state_digest(a) == checkpoints.state_digest(b)


def test_prepare_out_dir_refuses_a_model_unless_forced(tmp_path):
    acc = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    out = tmp_path / "m"
    (out / "checkpoints").mkdir(parents=True)
    (out / "model.json").write_text("{}")
    with pytest.raises(FingerprintError, match="use train.force to replace them"):
        checkpoints.prepare_out_dir(TrainConfig(shards=Path("s"), out=out), acc)
    checkpoints.prepare_out_dir(TrainConfig(shards=Path("s"), out=out, resume="latest"), acc)  # kept for resume
    assert (out / "model.json").exists()
    checkpoints.prepare_out_dir(TrainConfig(shards=Path("s"), out=out, force=True), acc)
    assert not (out / "model.json").exists() and not (out / "checkpoints").exists() and out.is_dir()


def _checkpoint(root: Path) -> Path:
    """A checkpoint folder as save_checkpoint leaves it: files, an RNG state, train_state.json with their sha256."""
    import random

    import numpy as np

    ckpt = root / "checkpoints" / "checkpoint_0"
    ckpt.mkdir(parents=True)
    (ckpt / "optimizer.bin").write_bytes(b"optimizer")
    rng = {"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
           "torch_manual_seed": torch.get_rng_state()}  # fmt: skip
    torch.save(rng, ckpt / "random_states_0.pkl")
    files = {p.name: sha256_file(p) for p in ckpt.iterdir()}
    write_json(ckpt / checkpoints.STATE_FILE, {"epoch": 1, "files": files, "world_size": 1})
    return ckpt


def test_verify_checkpoint_refuses_altered_missing_or_unreadable_files(tmp_path):
    ckpt = _checkpoint(tmp_path / "a")
    assert checkpoints.verify_checkpoint(ckpt, 0, 1)["epoch"] == 1
    with pytest.raises(FingerprintError, match="written by 1 process"):
        checkpoints.verify_checkpoint(ckpt, 0, 2)
    (ckpt / "optimizer.bin").write_bytes(b"0ptimizer")
    with pytest.raises(FingerprintError, match="optimizer.bin: sha256 differs"):
        checkpoints.verify_checkpoint(ckpt, 0, 1)
    ckpt = _checkpoint(tmp_path / "b")
    (ckpt / "random_states_0.pkl").unlink()
    with pytest.raises(FingerprintError, match="random_states_0.pkl: missing from the checkpoint"):
        checkpoints.verify_checkpoint(ckpt, 0, 1)
    ckpt = _checkpoint(tmp_path / "c")
    (ckpt / "random_states_0.pkl").write_bytes(b"junk")  # and the checksum rewritten to match
    state = json.loads((ckpt / checkpoints.STATE_FILE).read_text())
    state["files"]["random_states_0.pkl"] = sha256_file(ckpt / "random_states_0.pkl")
    write_json(ckpt / checkpoints.STATE_FILE, state)
    with pytest.raises(FingerprintError, match="random_states_0.pkl: unreadable RNG state"):
        checkpoints.verify_checkpoint(ckpt, 0, 1)
    write_json(ckpt / checkpoints.STATE_FILE, {"epoch": 1})
    with pytest.raises(FingerprintError, match="no file checksums"):
        checkpoints.verify_checkpoint(ckpt, 0, 1)


def test_a_failed_run_without_a_checkpoint_leaves_nothing(tmp_path):
    out = tmp_path / "m"
    (out / "best").mkdir(parents=True)
    (out / checkpoints.LOG_FILE).write_text("{}\n")
    (out / "checkpoints" / "checkpoint_0").mkdir(parents=True)  # incomplete: no train_state.json
    checkpoints.discard_unresumable(out)
    assert list(out.iterdir()) == []
    _checkpoint(out)
    (out / "best").mkdir()
    checkpoints.discard_unresumable(out)
    assert (out / "best").is_dir()  # a complete checkpoint: everything kept for resume


def test_resumable_checkpoint_only_for_the_same_training(tmp_path):
    cfg = TrainConfig(shards=Path("s"), out=tmp_path / "m", epochs=3)
    assert checkpoints.resumable_checkpoint(cfg) is None
    ckpt = _checkpoint(tmp_path / "m")
    state = json.loads((ckpt / checkpoints.STATE_FILE).read_text())
    write_json(ckpt / checkpoints.STATE_FILE, state | {"config": checkpoints.run_config(cfg)})
    assert checkpoints.resumable_checkpoint(cfg) == ckpt
    assert checkpoints.resumable_checkpoint(TrainConfig(shards=Path("s"), out=tmp_path / "m", epochs=3, force=True))
    assert checkpoints.resumable_checkpoint(TrainConfig(shards=Path("s"), out=tmp_path / "m", epochs=4)) is None
