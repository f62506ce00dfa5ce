"""Membership benchmarks in the ImageCLEFmedical GANs 2023 layout, with a generator really trained on the used images.

`build_benchmark(out_dir, level=..., seed=...)`:

1. takes real images (`fingerprint.benchdata.realimages`): procedural CT-like
   slices (`fingerprint.benchdata.phantom`, one patient per image or several
   neighbouring slices per patient), or any folder of images (`real_dir`,
   converted to 8-bit gray at `image_size`);
2. splits them at random into dev used / dev not used / test used / test not used;
3. trains a generator of the chosen family (`fingerprint.benchdata.generators`,
   default `vae`) on the union of the dev and test used images only;
4. samples the dev and test synthetic images from it, rejecting (and
   resampling) any sample whose pixel correlation with any real image
   exceeds `max_correlation`, so no synthetic image is a near-copy;
5. writes the challenge layout (below) in a temporary folder, measures the
   difficulty on the files written (`fingerprint.benchdata.difficulty`), and
   renames the folder into place.

```
OUT/dev/generated/generated_0001.png ...   OUT/dev/used/used_0001.png ...
OUT/dev/not_used/not_used_0001.png ...
OUT/test/generated_1/generated_00001.png ...
OUT/test/real_unknown_1/real_unknown_0001.png ...  (used and not used, shuffled)
OUT/test_truth.csv     figure_id,label (1 = used), beside test/, never inside it
OUT/real_sources.csv   figure_id,folder,source (phantom patient/slice or source file)
OUT/synth.json         every parameter, the seed, training curves, timings, difficulty
```

Difficulty levels (`LEVELS`) differ only in how closely the generator fits
its training set; their measured pixel-NN AUCs are in docs/benchmark-data.md.
`run_synth(SynthConfig)` (`fingerprint.benchdata.synth`) is the `fingerprint synth` stage.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint.benchdata.generators import family_accelerator, get_family
from fingerprint.benchdata.layout import sample_and_write
from fingerprint.benchdata.params import SynthParams, resolve_params
from fingerprint.benchdata.realimages import RealImages, folder_images, phantom_images
from fingerprint.core.distributed import set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json
from fingerprint.core.logs import is_main_process

log = logging.getLogger(__name__)


def build_benchmark(
    out_dir: str | os.PathLike,
    *,
    level: str = "medium",
    seed: int = 0,
    real_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    accelerator=None,
    bit_depth: int = 8,
    **overrides: Any,
) -> dict:
    """Build a membership benchmark in `out_dir`; return the content of its synth.json.

    `overrides` are `SynthParams` / `GeneratorConfig` field names (e.g.
    `dev_generated=100`, `epochs=50`, `slices_per_patient=3`, `family="vae"`).
    `out_dir` must not exist unless `force`; it is built under a temporary name
    and renamed when complete. Under a multi-process Accelerate launch every
    rank trains and rank 0 samples and writes.
    """
    out_dir = Path(out_dir)
    params = resolve_params(level, seed=seed, real_dir=real_dir, **overrides)
    if out_dir.exists() and not force:
        raise FingerprintError(f"{out_dir}: already exists (use synth.force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FingerprintError(f"{out_dir}: exists and is not a folder")
    prev_threads = torch.get_num_threads()
    set_threads(params.threads)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        accelerator = accelerator or family_accelerator(params.generator)
        main = accelerator.is_main_process and is_main_process()
        t0 = time.perf_counter()
        real = folder_images(params) if params.real_dir else phantom_images(params, progress and main)
        timings["real_images"] = time.perf_counter() - t0
        split = _split(params, real)
        used_idx = np.concatenate([split["dev_used"], split["test_used"]])
        log.info("training the generator on %d used images (%s level, seed %d)", len(used_idx), level, params.seed)
        t0 = time.perf_counter()
        train = get_family(params.family).train
        gen, history = train(
            real.images[used_idx], params.generator, seed=params.seed, accelerator=accelerator, progress=progress
        )
        timings["training"] = time.perf_counter() - t0
        if hasattr(gen, "calibrate"):  # memorisation set to the level's leakage target (generators.calibrate)
            t0 = time.perf_counter()
            test = np.concatenate([split["test_used"], split["test_not_used"]])
            labels = np.r_[np.ones(len(split["test_used"]), int), np.zeros(len(split["test_not_used"]), int)]
            history["calibration"] = gen.calibrate(
                real.images[test], labels, level=params.level, n=params.test_generated, seed=params.seed
            )
            timings["calibration"] = time.perf_counter() - t0
        if main:
            sample_and_write(out_dir, params, real, split, gen, history, timings, t_all, bit_depth)
        accelerator.wait_for_everyone()
    finally:
        torch.set_num_threads(prev_threads)
    return read_json(out_dir / "synth.json")


def _split(p: SynthParams, real: RealImages) -> dict[str, np.ndarray]:
    """Random assignment of the real pool to the four roles (seeded)."""
    perm = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x5917]).permutation(len(real.images))
    out, k = {}, 0
    for name in ("dev_used", "dev_not_used", "test_used", "test_not_used"):
        n = getattr(p, name)
        out[name] = perm[k : k + n]
        k += n
    return out
