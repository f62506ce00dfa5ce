"""Training files: complete checkpoints only, the newest one for resume, a weights digest, the model folder."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fingerprint import checkpoints
from fingerprint.train import TrainConfig
from fingerprint.utils import FingerprintError, write_json


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
