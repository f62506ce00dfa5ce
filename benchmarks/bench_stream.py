"""Images/s reading the same CT-like images from shards (fingerprint.data.stream) vs one PNG file at a time.

Both ways use a torch DataLoader with the same worker count and batch size
and deliver the same float32 Bx1xHxW [0,1] batches; the per-file way is the
seed's (PIL-open each PNG, convert to a float tensor). Shards are measured
in both encodings, which is how shards/README.md picks the default.
Writes benchmarks/results/stream.json.

    python benchmarks/bench_stream.py [--n-images 2000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from fingerprint import __version__
from fingerprint.core.files import write_json
from fingerprint.data import shards, sources
from fingerprint.data.pack import pack
from fingerprint.data.stream import StreamConfig, make_loader

RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"
SIZE = 256
BATCH = 32


def ct_like(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """An axial-CT-like uint8 slice: body ellipse, two darker lungs, smooth texture and noise."""
    y, x = np.mgrid[:size, :size] / (size / 256.0)
    cx, cy = 128 + rng.normal(0, 6), 128 + rng.normal(0, 6)
    ax, ay = 105 + rng.normal(0, 8), 85 + rng.normal(0, 6)
    img = np.where((x - cx) ** 2 / ax**2 + (y - cy) ** 2 / ay**2 < 1, 0.55, 0.02)
    for side in (-1, 1):
        lx, lw, lh = cx + side * (40 + rng.normal(0, 4)), 28 + rng.normal(0, 3), 52 + rng.normal(0, 4)
        img = np.where((x - lx) ** 2 / lw**2 + (y - cy + 3) ** 2 / lh**2 < 1, 0.14, img)
    spine = (x - cx) ** 2 + (y - cy - ay + 22) ** 2 < 12**2
    img = np.where(spine, 0.9, img)
    texture = gaussian_filter(rng.normal(0, 0.35, (size, size)), 3.0)
    img = gaussian_filter(img + texture * (img > 0.1), 1.2) + rng.normal(0, 0.025, (size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n PNGs in an ImageCLEF dev layout (mostly generated/, some used/ and not_used/)."""
    rng = np.random.default_rng(seed)
    paths = []
    n_real = max(2, n // 8)
    for i in range(n):
        if i < n - 2 * n_real:
            p = folder / "generated" / f"generated_{i + 1:04d}.png"
        elif i < n - n_real:
            p = folder / "used" / f"used_{i + 1:04d}.png"
        else:
            p = folder / "not_used" / f"not_used_{i + 1:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ct_like(rng)).save(p)
        paths.append(p)
    return paths


class PerFile(torch.utils.data.Dataset):
    """The seed's way: open each PNG with PIL and convert it to a float tensor."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return self.paths[i].stem, torch.from_numpy(arr)[None]


def _time(batches) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for batch in batches:
        n += batch["image"].shape[0] if isinstance(batch, dict) else batch[1].shape[0]
    return time.perf_counter() - t0, n


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "fingerprint": __version__,
    }


def run(n_images: int = 2000, workers=(1, 2), out=None, repeats: int = 2) -> dict:
    """Measure, write JSON (to `out`, default benchmarks/results/stream.json) and return it."""
    out = RESULTS if out is None else Path(out)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = make_images(tmp / "dev", n_images)
        gen_s = time.perf_counter() - t0
        png_bytes = sum(p.stat().st_size for p in paths)
        pack_s = {}
        for enc in sources.ENCODINGS:
            t0 = time.perf_counter()
            pack(tmp / "dev", tmp / f"shards_{enc}", image_size=SIZE, encoding=enc)
            pack_s[enc] = time.perf_counter() - t0
        shard_bytes = {
            enc: sum(Path(u).stat().st_size for u in shards.shard_urls(tmp / f"shards_{enc}"))
            for enc in sources.ENCODINGS
        }
        for w in workers:
            methods = {
                "files": lambda w=w: torch.utils.data.DataLoader(PerFile(paths), batch_size=BATCH, num_workers=w),
                **{
                    f"shards_{enc}": (
                        lambda w=w, enc=enc: make_loader(
                            tmp / f"shards_{enc}", StreamConfig(batch_size=BATCH, num_workers=w)
                        )
                    )
                    for enc in sources.ENCODINGS
                },
            }
            for name, make in methods.items():
                _time(make())  # warm the page cache and the code paths
                best = None
                for _ in range(repeats):
                    seconds, n = _time(make())
                    if n != n_images:
                        raise RuntimeError(f"{name} read {n} images, expected {n_images}")
                    best = seconds if best is None else min(best, seconds)
                results.append(
                    {"method": name, "workers": w, "seconds": round(best, 4), "images_per_s": round(n_images / best, 1)}
                )
                print(f"{name:>12} workers={w}: {n_images / best:8.1f} images/s", flush=True)
    ips = {(r["method"], r["workers"]): r["images_per_s"] for r in results}
    ratios = {
        str(w): {f"{m}_vs_files": round(ips[(m, w)] / ips[("files", w)], 2) for m in ("shards_png", "shards_npy")}
        for w in workers
    }
    report = {
        "benchmark": "stream",
        "what": "images/s reading the same CT-like 256x256 8-bit grayscale images into float32 Bx1xHxW batches",
        "n_images": n_images,
        "image_size": SIZE,
        "batch_size": BATCH,
        "repeats": repeats,
        "timing": "best of repeats after one warm-up pass (page cache warm); includes DataLoader worker start",
        "results": results,
        "ratios": ratios,
        "bytes": {"png_files": png_bytes, **{f"shards_{k}": v for k, v in shard_bytes.items()}},
        "pack_seconds": {k: round(v, 2) for k, v in pack_s.items()},
        "generate_seconds": round(gen_s, 2),
        "default_encoding": shards.DEFAULT_ENCODING,
        "machine": machine(),
    }
    write_json(out, report)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None, help=f"JSON output (default {RESULTS})")
    args = p.parse_args(argv)
    report = run(args.n_images, tuple(args.workers), args.out, args.repeats)
    print(report["ratios"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
