"""Process runtime: one Accelerator builder that refuses a wrong world, threads and seeds."""

import random

import numpy as np
import pytest
import torch

from fingerprint.core import distributed
from fingerprint.core.errors import FingerprintError


def test_make_accelerator_single_process(tmp_path):
    acc = distributed.make_accelerator("no", grad_accum=2, project_dir=tmp_path, keep_checkpoints=3)
    assert acc.num_processes == 1 and acc.mixed_precision == "no" and acc.gradient_accumulation_steps == 2
    assert acc.project_configuration.total_limit == 3 and acc.project_configuration.automatic_checkpoint_naming
    assert distributed.make_accelerator(reuse_state=True).num_processes == 1  # reuses the process's state


def test_a_world_unlike_the_launch_is_refused(monkeypatch):
    acc = distributed.make_accelerator("no")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FingerprintError, match="2 processes were launched but Accelerate formed a world of 1"):
        distributed.check_world(acc)


def test_threads_and_seeds(monkeypatch):
    acc = distributed.make_accelerator("no")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert distributed.set_process_threads(1, acc) == 1 and torch.get_num_threads() == 1
    distributed.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    distributed.seed_everything(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
