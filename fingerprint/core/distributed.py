"""Process runtime: one way to build an Accelerator (training, embedding, the benchmark generator), threads, seeds.

`accelerate launch --multi_gpu` on a machine without GPUs starts several
processes that Accelerate would otherwise run as independent single-process
jobs; `make_accelerator` therefore asks for gloo on the CPU whenever more
than one process was launched and CUDA is missing, and refuses a world that
differs from what was launched (stack-pitfalls: `--cpu --num_processes 2`
starts one process).
"""

from __future__ import annotations

import os
import random

import faiss
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from fingerprint.core.errors import FingerprintError


def launched_world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(
    mixed_precision: str | None = None,
    *,
    cpu: bool = False,
    grad_accum: int = 1,
    project_dir: str | os.PathLike | None = None,
    keep_checkpoints: int | None = None,
    find_unused_parameters: bool = False,
    reuse_state: bool = False,
) -> Accelerator:
    """An Accelerator for this launch.

    `mixed_precision` None takes the launcher's setting (else fp32). With
    `project_dir`, `accelerator.save_state()` writes rotated checkpoints
    (`keep_checkpoints` kept) under it. `reuse_state` returns a plain
    `Accelerator()` when this process already holds Accelerate state (a
    stage run inside another, e.g. the benchmark generator inside a test).
    """
    launched = launched_world_size()
    if reuse_state and AcceleratorState._shared_state:
        return Accelerator()
    kwargs: dict = {
        "cpu": cpu or (launched > 1 and not torch.cuda.is_available()),
        "mixed_precision": mixed_precision,
        "gradient_accumulation_steps": grad_accum,
    }
    if project_dir is not None:
        kwargs["project_config"] = checkpoint_config(project_dir, keep_checkpoints)
    if find_unused_parameters:
        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as e:
        raise FingerprintError(f"cannot set up Accelerate ({e})") from None
    check_world(accelerator)
    return accelerator


def checkpoint_config(project_dir: str | os.PathLike, keep: int | None) -> ProjectConfiguration:
    """Accelerate's project config for rotated, automatically numbered checkpoints under `project_dir`."""
    return ProjectConfiguration(project_dir=str(project_dir), automatic_checkpoint_naming=True, total_limit=keep)


def check_world(accelerator: Accelerator) -> None:
    """Refuse a world that differs from the number of processes launched."""
    launched = launched_world_size()
    if accelerator.num_processes != launched:
        raise FingerprintError(
            f"{launched} processes were launched but Accelerate formed a world of {accelerator.num_processes} "
            "(set ACCELERATE_USE_CPU=1 on machines without GPUs)"
        )


def set_process_threads(threads: int | None, accelerator: Accelerator) -> int:
    """torch/FAISS threads per process: `threads`, else the machine's cores shared by its local processes."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    n = threads or max(1, (os.cpu_count() or 1) // max(1, local))
    set_threads(n)
    return n


def set_threads(n: int | None) -> None:
    """Set torch and FAISS CPU threads explicitly (accelerate launch sets OMP_NUM_THREADS=1); None: all cores."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
