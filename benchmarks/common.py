"""Shared benchmark plumbing: machine description, load average, timers, data, JSON results.

Every benchmark reports ratios of two ways of doing the same work measured in
the same run (or a fraction of a limit measured in that run): absolute times
on a shared machine are noise, and the load average recorded with each
result says how shared it was.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from fingerprint.core.errors import FingerprintError  # noqa: E402
from fingerprint.core.files import write_json  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
SIZES = ("tiny", "quick", "full")
DEVICES = ("cpu", "cuda")


@dataclass
class BenchArgs:
    """What every benchmark takes: size preset, device, seed, where the JSON goes."""

    size: str = "full"  # tiny (seconds, for tests) | quick (minutes) | full
    device: str = "cpu"
    seed: int = 0
    out: Path | None = None
    compile: bool = False  # also measure torch.compile where the benchmark supports it

    def pick(self, tiny: Any, quick: Any, full: Any) -> Any:
        """The value for this size preset."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.size]


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """--quick/--tiny/--device/--seed/--compile, shared by run.py and each bench module."""
    p.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes in all")
    p.add_argument(
        "--tiny", action="store_true", help="toy sizes that finish in seconds (smoke tests; wins over --quick)"
    )
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where the models run (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and models (default: 0)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models (slow to compile on CPU)")


def bench_args(ns: argparse.Namespace, out: Path | None = None) -> BenchArgs:
    size = "tiny" if ns.tiny else "quick" if ns.quick else "full"
    return BenchArgs(size=size, device=ns.device, seed=ns.seed, out=out, compile=ns.compile)


def check_device(device: str) -> None:
    """A one-line error when CUDA is asked for and absent."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise FingerprintError("--device cuda: no CUDA device is visible to torch")


# -- machine ------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    """The vector/matrix ISA flags that decide fp32/bf16 speed (x86 Linux only)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def usable_cores() -> int:
    """Cores this process may run on (affinity), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def source_commit() -> str | None:
    """The repository's commit (with "-dirty" when tracked files differ from it), or None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        diff = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                              text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if diff.stdout.strip() else "")


def command_line() -> str:
    """This process's command line, as typed from the repository root."""
    return " ".join(["python", *sys.argv])


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, memory, library versions and (for cuda) the GPU."""
    import faiss
    import torch
    import torchvision

    from fingerprint import __version__

    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "fingerprint": __version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "commit": source_commit(),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def set_threads(n: int | None = None) -> int:
    """Use every usable core for torch and FAISS (an accelerate-launched parent may have set 1)."""
    from fingerprint.core.distributed import set_threads as _set

    n = n or usable_cores()
    _set(n)
    return n


# -- timing -------------------------------------------------------------------------------------


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


@dataclass
class Timing:
    """Seconds of each repeat; `best` is what ratios use (least disturbed by other load)."""

    samples: list[float]

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    def as_dict(self) -> dict[str, Any]:
        return {"best_s": round(self.best, 6), "median_s": round(self.median, 6), "repeats": len(self.samples)}


def time_it(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, device: str = "cpu") -> Timing:
    """Run fn `warmup` times untimed, then `repeats` times timed (GPU work synchronised)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - t0)
    return Timing(samples)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 3, warmup: int = 1, device: str = "cpu"
) -> dict[str, Timing]:
    """Time several ways of the same work in turns (A B A B ...), so load changes hit them alike."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {name: Timing(s) for name, s in samples.items()}


@contextlib.contextmanager
def stopwatch(into: dict, key: str, device: str = "cpu") -> Iterator[None]:
    """Add the block's wall seconds to into[key] (GPU work synchronised)."""
    sync(device)
    t0 = time.perf_counter()
    yield
    sync(device)
    into[key] = into.get(key, 0.0) + time.perf_counter() - t0


def ratio(numerator: float, denominator: float, digits: int = 3) -> float | None:
    """numerator / denominator rounded, None when undefined."""
    if not denominator or not math.isfinite(numerator) or not math.isfinite(denominator):
        return None
    return round(numerator / denominator, digits)


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^slope."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    if len(lx) < 2:
        raise ValueError("need at least two points to fit an exponent")
    return float(np.polyfit(lx, ly, 1)[0])


def matmul_fn(device: str, *, n: int, dtype: str = "float32") -> tuple[Callable[[], Any], int]:
    """A large n x n torch matmul and its FLOP count: time it to get the machine's dense limit."""
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dt, generator=g)
    b = torch.randn(n, n, device=device, dtype=dt, generator=g)
    return (lambda: torch.mm(a, b)), 2 * n**3


# -- synthetic data -----------------------------------------------------------------------------


def write_dev_folder(
    folder: Path,
    *,
    n_generated: int,
    n_used: int,
    n_not_used: int,
    size: int = 256,
    seed: int = 0,
    unique: int | None = None,
) -> dict[str, list[Path]]:
    """A challenge dev-layout folder of CT-like PNGs (fingerprint.benchdata.phantom), seeded.

    generated/generated_NNNN.png, used/used_NNNN.png, not_used/not_used_NNNN.png.
    Which images are "used" does not matter for throughput, so all are drawn
    independently; `unique` renders only that many phantoms and cycles them
    (rendering is ~20 ms an image; reading and compute do not depend on content).
    """
    from PIL import Image

    from fingerprint.benchdata.anatomy import PhantomConfig
    from fingerprint.benchdata.phantom import generate

    groups = (("generated", n_generated), ("used", n_used), ("not_used", n_not_used))
    total = sum(n for _, n in groups)
    rendered = generate(min(total, unique or total), seed=seed, config=PhantomConfig(size=size)).images
    images = rendered[np.arange(total) % len(rendered)]
    paths: dict[str, list[Path]] = {}
    i = 0
    for name, n in groups:
        (folder / name).mkdir(parents=True, exist_ok=True)
        paths[name] = []
        for j in range(n):
            p = folder / name / f"{name}_{j + 1:04d}.png"
            Image.fromarray(images[i]).save(p)
            paths[name].append(p)
            i += 1
    return paths


def random_unit(n: int, d: int, rng: np.random.Generator, *, chunk: int = 1 << 16) -> np.ndarray:
    """n random unit vectors (float32 n x d), generated in chunks to bound temporaries."""
    out = np.empty((n, d), np.float32)
    for i in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - i), d), dtype=np.float32)
        out[i : i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


# -- results ------------------------------------------------------------------------------------


def portable(arg: str | Path) -> str:
    """How results record a path or command-line word: an absolute path inside the repository relative to it,
    one outside it by its last part (a result names no folder of the machine that made it); anything else as is."""
    text = str(arg)
    if not text.startswith("/"):
        return text
    path = Path(text)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def result_name(name: str, device: str) -> str:
    """`embed` on cpu -> `embed`; on cuda -> `gpu_embed` (gpu.sh's files)."""
    return f"gpu_{name}" if device == "cuda" else name


def finish(
    name: str, args: BenchArgs, report: dict[str, Any], *, load_before: list[float] | None, started: float
) -> dict[str, Any]:
    """Add the common fields (machine, load, size, seed, wall time) and write the JSON atomically."""
    full = {
        "benchmark": name,
        "command": command_line(),
        "size": args.size,
        "device": args.device,
        "seed": args.seed,
        **report,
        "wall_s": round(time.perf_counter() - started, 2),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_avg": {"before": load_before, "after": load_average()},
        "peak_rss_mb": peak_rss_mb(),
        "machine": machine_info(args.device),
    }
    out = args.out or RESULTS_DIR / f"{result_name(name, args.device)}.json"
    write_json(out, full)
    return full


def headline(
    metric: str, value: Any, *, target: str | None = None, met: bool | None = None, note: str = ""
) -> dict[str, Any]:
    """One row of the README summary table."""
    return {"metric": metric, "value": value, "target": target, "met": met, "note": note}


def standalone_main(name: str, run: Callable[[BenchArgs], dict], doc: str | None, argv=None) -> int:
    """`python benchmarks/bench_<name>.py [--quick|--tiny] [--device] [--seed] [--out F]`."""
    from fingerprint.core.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    add_common_arguments(p)
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {RESULTS_DIR}/<name>.json)")
    ns = p.parse_args(argv)
    try:
        check_device(ns.device)
        report = run(bench_args(ns, ns.out))
    except FingerprintError as e:
        print(f"bench_{name}: error: {e}", file=sys.stderr)
        return 2
    for row in report.get("headline", []):
        print(f"{row['metric']}: {row['value']}" + (f" (target {row['target']})" if row.get("target") else ""))
    return 0
