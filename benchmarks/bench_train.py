"""Training throughput: episodes/s of `fingerprint train`, fp32 vs bf16 and 1 vs 2 processes.

Every run is the real command on the same small packed CT-like dev set, in a
fresh process, and its episodes/s is the one `fingerprint train` reports
(episodes on all processes / seconds spent in the training loops, bank
refreshes included, validation and start-up excluded):

- 1 process, fp32: `python -m fingerprint train ...`;
- 2 processes, fp32: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m fingerprint train ...`
  (the way that really starts two gloo processes on a CPU machine; the run
  must report world size 2);
- 1 process, bf16 autocast (on CPU a tiny configuration: bf16 can be far
  slower there; the fp32 side of that ratio is the same configuration);
- on CUDA: fp32, bf16 and bf16 + channels_last in one process (one GPU).
Writes benchmarks/results/train.json (gpu_train.json with --device cuda).

    python benchmarks/bench_train.py [--quick|--tiny] [--device cuda]
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    BenchArgs,
    check_device,
    finish,
    headline,
    load_average,
    ratio,
    standalone_main,
    write_dev_folder,
)

from fingerprint.core.errors import FingerprintError

log = logging.getLogger(__name__)

NAME = "train"


def free_port() -> int:
    """A free TCP port for the rendezvous, so concurrent launches do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(folder: Path, *, n_generated: int, n_real: int, size: int, seed: int) -> Path:
    """A packed dev set with enough shards for 2 processes."""
    from fingerprint.data.pack import pack

    write_dev_folder(
        folder / "dev",
        n_generated=n_generated,
        n_used=n_real // 2,
        n_not_used=n_real - n_real // 2,
        size=size,
        seed=seed,
        unique=256,
    )
    total = n_generated + n_real
    pack(folder / "dev", folder / "shards", image_size=size, max_count=max(4, -(-total // 8)), seed=seed)
    return folder / "shards"


def train_command(shards: Path, out: Path, cfg: dict, *, processes: int, device: str) -> tuple[list[str], dict]:
    """The command line and environment of one training run."""
    flags = []
    for name, value in cfg.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    args = ["-m", "fingerprint", "train", "--shards", str(shards), "--out", str(out), "--force", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ACCELERATE_USE_CPU", None)
    if processes == 1:
        return [sys.executable, *args], env
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        raise FingerprintError(f"{accelerate}: the accelerate launcher is not installed beside this Python")
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        cfg.get("mixed_precision", "no"),
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *args,
    ]
    return cmd, env


def train_once(shards: Path, out: Path, cfg: dict, *, processes: int, device: str, timeout: float) -> dict:
    """Run `fingerprint train` and return the summary it prints (checked for the world size)."""
    cmd, env = train_command(shards, out, cfg, processes=processes, device=device)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"training run failed ({' '.join(cmd)}):\n{tail}")
    summary = None
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and '"episodes_per_s"' in line:
            summary = json.loads(line)
    if summary is None:
        raise RuntimeError(f"no training summary in the output of {' '.join(cmd)}:\n{proc.stdout[-2000:]}")
    if summary["world_size"] != processes:
        raise RuntimeError(f"asked for {processes} process(es), the run reports world size {summary['world_size']}")
    return {
        "processes": processes,
        "world_size": summary["world_size"],
        "episodes_per_s": summary["episodes_per_s"],
        "train_seconds_total": summary["seconds"],
        "process_wall_s": round(wall, 2),
        "epochs": summary["epochs"],
        "mixed_precision": cfg.get("mixed_precision", "no"),
        "channels_last": bool(cfg.get("channels_last")),
        "config": cfg,
    }


def run(args: BenchArgs) -> dict:
    """Pack a small dev set, run each training variant, return and write the report."""
    check_device(args.device)
    started, load_before = time.perf_counter(), load_average()
    cuda = args.device == "cuda"
    if cuda:
        base = dict(
            image_size=args.pick(64, 256, 256),
            queries=args.pick(8, 32, 32),
            k=8,
            k_random=2,
            epochs=args.pick(1, 2, 2),
            batch_size=128,
            bn_images=128,
            patience=0,
            seed=args.seed,
            num_workers=args.pick(0, 4, 4),
        )
        data = dict(n_generated=args.pick(64, 512, 512), n_real=args.pick(32, 160, 160))
    else:
        base = dict(
            image_size=args.pick(32, 64, 128),
            queries=args.pick(4, 8, 16),
            k=args.pick(2, 4, 8),
            k_random=1,
            epochs=args.pick(1, 2, 3),
            batch_size=32,
            bn_images=32,
            patience=0,
            seed=args.seed,
        )
        data = dict(n_generated=args.pick(16, 48, 96), n_real=args.pick(16, 32, 64))
    bf16_cfg = (
        dict(base)
        if cuda
        else {**base, "image_size": args.pick(32, 64, 64), "queries": args.pick(4, 4, 8), "epochs": args.pick(1, 1, 2)}
    )
    timeout = args.pick(600, 900, 1200)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        shards = prepare(tmp, size=base["image_size"], seed=args.seed, **data)

        def go(name: str, cfg: dict, processes: int = 1) -> None:
            log.info("train: %s (%d process(es))", name, processes)
            runs[name] = train_once(
                shards,
                tmp / name,
                {**cfg, "mixed_precision": cfg.get("mixed_precision", "no")},
                processes=processes,
                device=args.device,
                timeout=timeout,
            )
            log.info("train: %s: %.3f episodes/s", name, runs[name]["episodes_per_s"])

        go("fp32", base)
        if cuda:
            go("bf16", {**base, "mixed_precision": "bf16"})
            go("bf16_channels_last", {**base, "mixed_precision": "bf16", "channels_last": True})
        else:
            go("fp32_1thread", {**base, "threads": 1})
            go("fp32_2proc", base, processes=2)
            if bf16_cfg != base:
                go("fp32_bf16_config", bf16_cfg)
            go("bf16", {**bf16_cfg, "mixed_precision": "bf16"})
    eps = {name: r["episodes_per_s"] for name, r in runs.items()}
    fp32_ref = eps.get("fp32_bf16_config", eps["fp32"])
    ratios = {"bf16_vs_fp32": ratio(eps["bf16"], fp32_ref)}
    rows = [
        headline(
            "train: bf16 vs fp32 episodes/s",
            ratios["bf16_vs_fp32"],
            target="> 1 on GPU",
            met=ratios["bf16_vs_fp32"] > 1 if cuda else None,
            note="GPU run" if cuda else "CPU, small configuration: the GPU target is not measurable here",
        )
    ]
    if cuda:
        ratios["bf16_channels_last_vs_fp32"] = ratio(eps["bf16_channels_last"], eps["fp32"])
        rows.append(headline("train: bf16 + channels_last vs fp32", ratios["bf16_channels_last_vs_fp32"]))
    else:
        cores = os.cpu_count()
        ratios["two_vs_one_process"] = ratio(eps["fp32_2proc"], eps["fp32"])
        ratios["two_vs_one_process_1thread"] = ratio(eps["fp32_2proc"], eps["fp32_1thread"])
        ratios["one_thread_vs_default_threads"] = ratio(eps["fp32_1thread"], eps["fp32"])
        rows[:0] = [
            headline(
                "train: 2 processes vs 1 (default threads), episodes/s",
                ratios["two_vs_one_process"],
                note=f"world size 2 checked; 1 process runs {cores} threads, each of 2 processes 1 thread",
            ),
            headline(
                "train: 2 processes vs 1 process with 1 thread",
                ratios["two_vs_one_process_1thread"],
                note="the same work per thread: what a second process adds (2 = perfect)",
            ),
        ]
    report = {
        "what": "episodes/s of `fingerprint train` (real queries x K generated supports per episode and process)",
        "data": data,
        "config": base,
        "bf16_config": bf16_cfg,
        "runs": runs,
        "ratios": ratios,
        "notes": [
            "episodes/s = episodes on all processes / seconds in the training loops (bank refreshes included, "
            "validation and start-up excluded), as fingerprint.training.train reports it",
            *(
                []
                if cuda
                else [
                    "fp32_1thread is one process with --threads 1; fingerprint train's default is "
                    "cores / local processes threads per process"
                ]
            ),
            *(
                []
                if cuda
                else ["bf16 runs a smaller configuration on CPU; its fp32 reference is the same configuration"]
            ),
        ],
        "headline": rows,
    }
    return finish(NAME, args, report, load_before=load_before, started=started)


def table(report: dict) -> list[str]:
    """Markdown rows for the README."""
    lines = [
        "| run | processes | threads/process | precision | channels_last | image px | queries | episodes/s |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for name, r in report["runs"].items():
        c = r["config"]
        lines.append(
            f"| {name} | {r['world_size']} | {c.get('threads') or 'default'} | {r['mixed_precision']} | "
            f"{r['channels_last']} | {c['image_size']} | {c['queries']} | {r['episodes_per_s']:.3f} |"
        )
    return lines


def main(argv=None) -> int:
    return standalone_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
