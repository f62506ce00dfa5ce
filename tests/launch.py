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


def free_port() -> int:
    """A TCP port nobody listens on right now (for a rendezvous on 127.0.0.1)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_machines(args: list[str], *, cwd=None, timeout: float = 400) -> list:
    """Run `accelerate launch ... args` as two "machines" on this host (machine rank 0 and 1, one process each,
    rendezvous at 127.0.0.1:<free port>, gloo on the CPU); returns both CompletedProcess-like results."""
    import subprocess

    port = str(free_port())
    procs = []
    for rank in (0, 1):
        cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "2",
               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               "--mixed_precision", "no", "--dynamo_backend", "no", *args]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=cpu_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results
