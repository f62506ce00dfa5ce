"""launch/: the SLURM recipe turns the scheduler's environment into `accelerate launch` machine ranks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: stand-ins for the scheduler's commands: srun runs its command once per node with SLURM_NODEID set
FAKES = {
    "scontrol": "echo node-a; echo node-b\n",
    "srun": 'n=1; for a in "$@"; do case $a in --nodes=*) n=${a#--nodes=};; esac; done\n'
    'while [ "${1#-}" != "$1" ]; do shift; done\n'
    'for i in $(seq 0 $((n - 1))); do SLURM_NODEID=$i "$@"; done\n',
    "accelerate": 'echo "accelerate $*" >> "$CALLS"\n',
    "fingerprint": 'echo "fingerprint $*" >> "$CALLS"\n',
}


def _run(tmp_path: Path, *args: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "1234",
           "SLURM_SUBMIT_DIR": str(ROOT)}  # fmt: skip
    r = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), *args], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return calls.read_text().splitlines()


def test_sbatch_runs_accelerate_on_every_node_with_its_machine_rank(tmp_path):
    lines = _run(tmp_path, "embed", "--model", "/shared/m", "--shards", "https://h/test/", "--out", "/shared/f")
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"--num_machines 2 --machine_rank {rank} --main_process_ip node-a --main_process_port 29734" in line
        assert "--num_processes 16" in line and "launch/multi-node.yaml" in line
        assert line.endswith("-m fingerprint embed --model /shared/m --shards https://h/test/ --out /shared/f")
    assert _run(tmp_path, "train", "--shards", "s3://b/dev", "--out", "/shared/m")[1].endswith(
        "-m fingerprint train --shards s3://b/dev --out /shared/m"
    )
    assert _run(tmp_path, "score", "--features", "/shared/f", "--out", "/shared/s.csv") == [
        "fingerprint score --features /shared/f --out /shared/s.csv"
    ]


def test_multi_node_config_is_the_one_the_recipe_overrides():
    cfg = yaml.safe_load((ROOT / "launch" / "multi-node.yaml").read_text())
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_machines"] >= 2 and cfg["rdzv_backend"] == "static"
