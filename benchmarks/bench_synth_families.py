"""Build time and realism per generator family: `fingerprint synth --generator vae`, `sharp` and `gan`.

Each build runs in its own `nice`d process (`python -m fingerprint synth`), so
its wall time and CPU time (the child's rusage) are its own; synth.json gives
the per-stage timings and the realism figures (`fingerprint.benchdata.realism`).
Per level, the summary compares the families: the sharp/vae and gan/vae
ratios of wall and CPU seconds, of the high-frequency ratio and of the Fréchet
ratio, and which builds exceed the 5-minute budget. Timings on a shared
machine are noisy: the load average before and after each build is recorded.
A run of some families replaces only their builds (same family, level, seed)
in an existing results file and keeps the others.

    python benchmarks/bench_synth_families.py --levels tiny medium [--families gan] [--seeds 0 1] [--image-size 128]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR, command_line, load_average, machine_info, ratio

from fingerprint.core.files import read_json, write_json

BUDGET_S = 300.0
FAMILIES = ("vae", "sharp", "gan")


def one_build(out: Path, family: str, level: str, seed: int, extra: list[str]) -> dict:
    """Run one build in a child process; its wall and CPU seconds, stage timings and realism summary."""
    cmd = [sys.executable, "-m", "fingerprint", "synth", str(out), "--level", level, "--seed", str(seed),
           "--generator", family, "--no-progress", *extra]  # fmt: skip
    load0, before = load_average(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["nice", *cmd], check=True, capture_output=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    info = read_json(out / "synth.json")
    r = info["realism"]
    return {
        "family": family, "level": level, "seed": seed, "extra_flags": extra,
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "stage_s": info["timings"], "threads": info["environment"]["threads"],
        "load_before": load0, "load_after": load_average(),
        "hf_ratio": r["hf_ratio"], "frechet": r["frechet"], "cpu": machine_info("cpu")["cpu"],
        "calibration": {k: v for k, v in (info["generator"].get("calibration") or {}).items()
                        if k in ("target", "range", "modes", "memorised_share", "auc_novel_only")} or None,
        "leakage": {s: {k: v[k] for k in ("pixel_nn_auc", "ssim_nn_auc", "share_nearest_used",
                                          "share_nearest_used_null")} | {
                        "share_reproduced_used": v["memorisation"]["share_reproduced_used"]}
                    for s, v in r["splits"].items()},
    }  # fmt: skip


def summarize(builds: list[dict]) -> dict:
    """Per level: mean figures per family and the sharp/vae ratios."""
    out = {}
    for level in dict.fromkeys(b["level"] for b in builds):
        per = {}
        for fam in FAMILIES:
            bs = [b for b in builds if b["level"] == level and b["family"] == fam]
            if bs:
                per[fam] = {k: round(sum(b[k] for b in bs) / len(bs), 4) for k in ("wall_s", "cpu_s", "hf_ratio")}
                per[fam]["frechet_ratio"] = round(sum(b["frechet"]["ratio"] for b in bs) / len(bs), 3)
                per[fam]["over_budget"] = sum(b["wall_s"] > BUDGET_S for b in bs)
        cpus = {fam: {b.get("cpu") for b in builds if b["level"] == level and b["family"] == fam} for fam in per}
        for fam in ("sharp", "gan"):
            if fam in per and "vae" in per and len(cpus[fam] | cpus["vae"]) == 1:  # ratios on one machine only
                s, v = per[fam], per["vae"]
                per[f"{fam}_over_vae"] = {
                    k: ratio(s[k], v[k]) for k in ("wall_s", "cpu_s", "hf_ratio", "frechet_ratio")
                }
        out[level] = per
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", nargs="+", default=["tiny", "medium"])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--image-size", type=int, default=None, help="override the level's image size (e.g. 128)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "synth_families.json")
    p.add_argument("--keep", type=Path, default=None, help="write the builds under this folder and keep them")
    ns = p.parse_args(argv)
    extra = [] if ns.image_size is None else ["--image-size", str(ns.image_size)]
    builds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = ns.keep or tmp
        for level in ns.levels:
            for seed in ns.seeds:
                for fam in ns.families:
                    b = one_build(Path(tmp) / f"{fam}-{level}-{seed}", fam, level, seed, extra)
                    print(f"{fam:6s} {level:7s} seed {seed}: {b['wall_s']:.0f} s wall, {b['cpu_s']:.0f} s CPU, "
                          f"HF {b['hf_ratio']:.3f}, FD ratio {b['frechet']['ratio']:.2f}", flush=True)  # fmt: skip
                    builds.append(b)
    key = lambda b: (b["family"], b["level"], b["seed"], tuple(b["extra_flags"]))  # noqa: E731
    fresh = {key(b) for b in builds}
    if ns.out.is_file():  # keep the other families' (and levels') builds of an earlier run, naming its CPU
        old = read_json(ns.out)
        kept = [{"cpu": old["machine"]["cpu"], **b} for b in old.get("builds", []) if key(b) not in fresh]
        builds = kept + builds
    result = {"benchmark": "synth_families", "command": command_line(), "machine": machine_info("cpu"),
              "budget_s": BUDGET_S, "summary": summarize(builds), "builds": builds}  # fmt: skip
    write_json(ns.out, result)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
