"""What defines a benchmark build: `SynthParams`, the difficulty presets `LEVELS`, and `resolve_params`.

A build's parameters are the level's preset, then the caller's overrides
(`SynthParams` and generator-config field names), checked together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fingerprint.benchdata.generators import default_threads, get_family
from fingerprint.benchdata.generators.vae import GeneratorConfig
from fingerprint.core.config import fail
from fingerprint.core.errors import FingerprintError


@dataclass
class SynthParams:
    """Everything that defines a benchmark build; `LEVELS` presets override some of it."""

    SECTION = "synth"  # errors name the `fingerprint synth` option

    level: str = "medium"
    seed: int = 0
    image_size: int = 256
    dev_generated: int = 500
    dev_used: int = 80
    dev_not_used: int = 80
    test_generated: int = 2000
    test_used: int = 100
    test_not_used: int = 100
    real_dir: str | None = None  # None: procedural phantoms
    slices_per_patient: int = 1  # phantoms only: > 1 puts neighbouring slices of one patient in the pool
    tb_fraction: float = 0.5  # phantoms only
    noise: float = 1.0  # phantoms only: scanner-noise scale
    max_correlation: float = 0.99  # synthetic samples above this pixel correlation with a real image are redrawn
    threads: int | None = None  # torch CPU threads; None: the family's default (generators.default_threads)
    family: str = "vae"  # generator family (fingerprint.benchdata.generators)
    generator: Any = field(default_factory=GeneratorConfig)  # the family's config

    @property
    def n_real(self) -> int:
        return self.dev_used + self.dev_not_used + self.test_used + self.test_not_used


#: Level presets: overrides of `SynthParams` (the `generator` entry overrides `GeneratorConfig`).
LEVELS: dict[str, dict[str, Any]] = {
    # seconds on one core: small images and counts, a short fit; for tests and smoke runs
    "tiny": {
        "image_size": 64,
        "dev_generated": 40,
        "dev_used": 12,
        "dev_not_used": 12,
        "test_generated": 60,
        "test_used": 10,
        "test_not_used": 10,
        "generator": {
            "resolution": 32,
            "latent_dim": 16,
            "hidden": 128,
            "epochs": 60,
            "batch_size": 16,
            "components": 11,
            "temperature": 0.5,
            "upsampler_steps": 20,
            "upsampler_width": 8,
            "upsampler_patch": 32,
        },
    },
    # long training, a latent mixture with a mode per two training images: samples sit near training images
    "easy": {"generator": {"epochs": 200, "components": 90, "temperature": 1.0}},
    # moderate training, 12 latent modes
    "medium": {"generator": {"epochs": 90, "components": 12, "temperature": 1.0}},
    # short training (the decoder has not fitted single images yet), 8 latent modes
    "hard": {"generator": {"epochs": 65, "components": 8, "temperature": 1.0}},
}


_SYNTH_FIELDS = {f.name for f in fields(SynthParams)} - {"generator"}


def resolve_params(
    level: str = "medium", *, seed: int = 0, real_dir: str | os.PathLike | None = None, **overrides: Any
) -> SynthParams:
    """The parameters of a build: `SynthParams` defaults <- level preset <- overrides (flat names).

    An override is any `SynthParams` or `GeneratorConfig` field name; None means "not given".
    """
    if level not in LEVELS:
        raise FingerprintError(f"unknown level {level!r} (choose from {', '.join(LEVELS)})")
    preset = dict(LEVELS[level])
    family = get_family(overrides.get("family") or "vae")
    gen_fields = {f.name for f in fields(family.config)}
    # a level's generator preset (the family's own when it has them) applies to the fields the family has
    gen_preset = preset.pop("generator", {})
    gen_preset = gen_preset if family.levels is None else family.levels.get(level, {})
    gen_over = {k: v for k, v in gen_preset.items() if k in gen_fields}
    top = {**preset, "level": level, "seed": int(seed), "real_dir": None if real_dir is None else str(real_dir)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _SYNTH_FIELDS:
            top[key] = value
        elif key in gen_fields:
            gen_over[key] = value
        else:
            raise FingerprintError(f"unknown benchmark parameter {key!r}")
    params = replace(SynthParams(), **top, generator=family.config(**gen_over))
    if params.threads is None:
        params.threads = default_threads(family)
    _check(params)
    return params


def _check(p: SynthParams) -> None:
    """Errors name the `fingerprint synth` options (`synth.<field>`)."""
    for name in ("dev_generated", "dev_used", "dev_not_used", "test_generated", "test_used", "test_not_used"):
        if getattr(p, name) < 1:
            raise fail(SynthParams, name, f"must be >= 1, got {getattr(p, name)}")
    if p.image_size < 16:
        raise fail(SynthParams, "image_size", f"must be >= 16, got {p.image_size}")
    r = getattr(p.generator, "resolution", 1)
    if p.image_size % r or r > p.image_size:
        raise fail(SynthParams, "image_size", f"{p.image_size} must be a multiple of the generator resolution {r}")
    if p.slices_per_patient < 1:
        raise fail(SynthParams, "slices_per_patient", f"must be >= 1, got {p.slices_per_patient}")
    if p.real_dir is not None and p.slices_per_patient != 1:
        raise fail(SynthParams, "slices_per_patient", "applies to the phantom source only, not to synth.real_dir")
    if p.threads < 1:
        raise fail(SynthParams, "threads", f"must be >= 1, got {p.threads}")
    if not 0.0 < p.max_correlation <= 1.0:
        raise fail(SynthParams, "max_correlation", f"must be in (0, 1], got {p.max_correlation}")
    if p.real_dir is not None and not Path(p.real_dir).is_dir():
        raise FingerprintError(f"{p.real_dir}: real-image folder not found")
