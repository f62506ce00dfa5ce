"""A "bending generator" membership set from a benchmark build's real images: generated = warped used images.

Each generated image copies one used image (of either split; Zipf weights over a seeded ranking, exponent
0.7, so some are copied often and most rarely), bends it by a smooth random free-form field (6 x 6 control
grid, N(0, amp) displacements smoothed once; `fingerprint.imaging.register.warp`), rotates it by N(0, 0.05) rad and
scales it by N(1, 0.03), blurs it (sigma 0.8 px) and adds N(0, 0.02) noise. The real images, their roles
and test_truth.csv are copied from the source build, so the only change is the generator. With `amp` 0.15
the plain pixel-NN test ROC-AUC is about 0.68: the bends hide the copies from pixel distance, which a
membership scorer must see through (docs/quality.md).

    python benchmarks/bend_set.py SOURCE_BUILD OUT [--amp 0.15] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fingerprint.benchdata.generators.vae import zipf_weights  # noqa: E402
from fingerprint.core.files import atomic_path  # noqa: E402
from fingerprint.evaluation.metrics import read_truth  # noqa: E402
from fingerprint.imaging.register import blur, warp  # noqa: E402

REAL_FOLDERS = ("dev/used", "dev/not_used", "test/real_unknown_1")


def used_images(src: Path) -> torch.Tensor:
    """The used images of both splits (dev/used, then the test reals labelled 1), (n, 1, s, s) in [0, 1]."""
    truth = read_truth(src / "test_truth.csv")
    paths = sorted((src / "dev/used").glob("*.png"))
    paths += [p for p in sorted((src / "test/real_unknown_1").glob("*.png")) if truth[p.stem]]
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])).float().div(255)[:, None]


def bend(x: torch.Tensor, n: int, amp: float, rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """n uint8 images, each a bent, rotated, scaled, blurred and noised copy of a Zipf-drawn row of x."""
    idx = rng.choice(len(x), n, p=weights)
    ctrl = torch.from_numpy(rng.normal(0, amp, (n, 2, 6, 6)).astype(np.float32))
    ctrl = F.avg_pool2d(F.pad(ctrl, (1, 1, 1, 1), mode="replicate"), 3, 1)
    ang = torch.from_numpy(rng.normal(0, 0.05, n).astype(np.float32))
    sc = torch.from_numpy(rng.normal(1, 0.03, n).astype(np.float32))
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sc * ang.cos(), -sc * ang.sin(), zero], 1),
                         torch.stack([sc * ang.sin(), sc * ang.cos(), zero], 1)], 1)  # fmt: skip
    noise = torch.from_numpy(rng.normal(0, 0.02, (n, 1, *x.shape[-2:])).astype(np.float32))
    out = []
    for i in range(0, n, 100):
        xi = x[idx[i : i + 100]]
        xi = F.grid_sample(
            xi, F.affine_grid(theta[i : i + 100], list(xi.shape), align_corners=True), align_corners=True
        )
        out.append((blur(warp(xi, ctrl[i : i + 100]), 0.8) + noise[i : i + 100]).clamp(0, 1))
    return (torch.cat(out)[:, 0] * 255).round().byte().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a benchmark build (2023 layout with test_truth.csv)")
    ap.add_argument("out", type=Path, help="the new data folder (must not exist)")
    ap.add_argument("--amp", type=float, default=0.15, help="sd of the control displacements (default 0.15)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.out.exists():
        sys.exit(f"{a.out}: already exists")
    rng = np.random.default_rng(a.seed)
    x = used_images(a.source)
    weights = zipf_weights(len(x), 0.7, rng)
    with atomic_path(a.out) as tmp:
        for folder in REAL_FOLDERS:
            shutil.copytree(a.source / folder, tmp / folder)
        shutil.copy(a.source / "test_truth.csv", tmp / "test_truth.csv")
        for folder, n, digits in (("dev/generated", 500, 4), ("test/generated_1", 2000, 5)):
            (tmp / folder).mkdir(parents=True)
            for k, im in enumerate(bend(x, n, a.amp, rng, weights)):
                Image.fromarray(im).save(tmp / folder / f"generated_{k + 1:0{digits}d}.png")
    print(f"{a.out}: {len(x)} used images bent into 500 + 2000 generated (amp {a.amp}, seed {a.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
