"""Generator families of the benchmark builder: each trains on the "used" images and then draws synthetic ones.

A family registers its config dataclass and its training function with
`@register_family(name, ConfigClass, help=...)`; the training function takes
uint8 images (n, s, s), its config, a seed, an optional Accelerator and a
progress flag, and returns a trained generator (anything with
`draw(n, rng) -> uint8 images (n, s, s)`) and its training history; the
family's `summarize(history)` is what synth.json records about it (by
default the history itself); its `levels` (level -> config overrides), when
given, replace the vae-tuned generator presets of `synth.LEVELS`. `fingerprint synth --generator NAME` picks one.
Families register themselves on import; `FAMILY_MODULES` lists the modules
to import.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from accelerate import Accelerator

from fingerprint.core.distributed import make_accelerator
from fingerprint.core.errors import FingerprintError

#: the modules that register the built-in families
FAMILY_MODULES = (
    "fingerprint.benchdata.generators.vae",
    "fingerprint.benchdata.generators.sharp",
    "fingerprint.benchdata.generators.ddpm",
    "fingerprint.benchdata.generators.gan",
)


class TrainedGenerator(Protocol):
    """What a trained generator offers the benchmark builder."""

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` uint8 images (n, s, s), drawing randomness from `rng` only."""


@dataclass(frozen=True)
class GeneratorFamily:
    """A registered generator family."""

    name: str
    config: type  # its config dataclass; the defaults are the family's
    train: Callable[..., tuple[TrainedGenerator, dict[str, Any]]]
    help: str
    summarize: Callable[[dict[str, Any]], dict[str, Any]] = dict  # history -> synth.json "generator" record
    levels: dict[str, dict[str, Any]] | None = None  # level -> config overrides (None: synth.LEVELS' generator)
    max_threads: int = 1  # default torch threads: this many, at most the cores of each process (see default_threads)


FAMILIES: dict[str, GeneratorFamily] = {}


def register_family(
    name: str,
    config: type,
    *,
    help: str,
    summarize: Callable | None = None,
    levels: dict | None = None,
    max_threads: int = 1,
) -> Callable:
    """Decorator: register `train(images, cfg, *, seed, accelerator, progress)` as generator family `name`."""

    def wrap(train: Callable) -> Callable:
        FAMILIES[name] = GeneratorFamily(name, config, train, help, summarize or dict, levels, max_threads)
        return train

    return wrap


def families() -> dict[str, GeneratorFamily]:
    """Every registered family (importing the built-in ones first)."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    return FAMILIES


def get_family(name: str) -> GeneratorFamily:
    """The family `name`; a FingerprintError listing the others."""
    known = families()
    if name not in known:
        raise FingerprintError(f"unknown generator family {name!r} (choose from {', '.join(known)})")
    return known[name]


def default_threads(family: GeneratorFamily) -> int:
    """The family's default torch threads: `max_threads`, at most this machine's cores per launched process
    (WORLD_SIZE). Fixed per machine and launch, so a build repeats exactly there (the thread count changes
    floating-point sums); one thread for the small fully connected `vae` (threads only add overhead there)."""
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return max(1, min(family.max_threads, per_process))


def family_accelerator(cfg: Any) -> Accelerator:
    """The Accelerator a family trains with: the config's `mixed_precision` and `cpu` (CPU when there is no GPU),
    reusing this process's Accelerate state when it has one."""
    cpu = getattr(cfg, "cpu", False) or not torch.cuda.is_available()
    return make_accelerator(getattr(cfg, "mixed_precision", "no"), cpu=cpu, reuse_state=True)
