"""The strip of real vs generated images per family in docs/benchmark-data.md, with a zoomed lung crop.

    python benchmarks/strip_families.py docs/images/families.png BUILD_DIR...

Row 1: real images (dev/used of the first DIR). Then for each DIR (a build of one
family): six generated images (dev/generated, seeded pick), and the same six
zoomed x2 on the right lung. Labels are drawn on the left margin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _load(folder: Path, k: int, seed: int) -> list[np.ndarray]:
    files = sorted(folder.glob("*.png"))
    pick = np.random.default_rng(seed).choice(len(files), size=k, replace=False)
    return [np.asarray(Image.open(files[i]).convert("L")) for i in sorted(pick)]


def _row(imgs: list[np.ndarray], zoom: bool) -> np.ndarray:
    if zoom:
        s = imgs[0].shape[0]
        y0, x0, w = s * 5 // 16, s // 8, s // 2  # the image's left half = the patient's right lung
        imgs = [np.asarray(Image.fromarray(im[y0 : y0 + w, x0 : x0 + w]).resize((s, s), Image.NEAREST)) for im in imgs]
    sep = np.full((imgs[0].shape[0], 4), 255, np.uint8)
    return np.concatenate([x for im in imgs for x in (im, sep)][:-1], 1)


def main(out: str, dirs: list[str], k: int = 6, seed: int = 0) -> None:
    rows, labels = [], []
    first = Path(dirs[0])
    real = _load(first / "dev" / "used", k, seed)
    rows += [_row(real, False), _row(real, True)]
    labels += ["real (used)", "real, lung x2"]
    for d in dirs:
        d = Path(d)
        info = json.loads((d / "synth.json").read_text())
        fam = info.get("generator", {}).get("family", "vae")
        r = info.get("realism", {})
        gen = _load(d / "dev" / "generated", k, seed)
        rows += [_row(gen, False), _row(gen, True)]
        tag = f"{fam} {info['level']} s{info['seed']}"
        if r:
            tag += f"\nHF {r['hf_ratio']:.2f} FD x{r['frechet']['ratio']:.1f}"
        labels += [tag, f"{fam}, lung x2"]
    margin = 150
    h = sum(r.shape[0] + 4 for r in rows)
    w = rows[0].shape[1] + margin
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for r, lab in zip(rows, labels):
        canvas.paste(Image.fromarray(r), (margin, y))
        draw.multiline_text((6, y + 8), lab, fill=0)
        y += r.shape[0] + 4
    canvas.save(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
