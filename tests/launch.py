"""The real multi-process launch of the distributed tests: two gloo processes on the CPU.

`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` starts two processes on a
machine without GPUs (plain `--cpu --num_processes 2` silently starts one); the tests assert the
world size they get.
"""

import os
import sys
from pathlib import Path

ACCELERATE = Path(sys.executable).with_name("accelerate")
TWO_CPU_PROCESSES = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def cpu_env() -> dict[str, str]:
    """The environment of a CPU launch: gloo processes, one OpenMP thread each."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
