"""The `fingerprint` command: one subcommand per stage, each a thin module over the library.

`fingerprint <command> [flags]`. A subcommand module holds its config class
(from the library), a `run(cfg)` that calls the library's entry function and
prints a summary, and `main(argv)` (callable from Python and tests); its
flags are generated from the config (`fingerprint.cli.options`). Nothing
outside this package imports it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from fingerprint import __version__

#: subcommand -> (module, one-line help), in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("fingerprint.cli.synth", "build a membership benchmark: CT-like images + a generator trained on them"),
    "pack": ("fingerprint.cli.pack", "pack image folders into WebDataset shards"),
    "inspect": ("fingerprint.cli.inspect", "summarise shards; --verify re-checks every checksum"),
    "adapt": ("fingerprint.cli.adapt", "learn a metric from the unlabelled pool (pseudo-pairs, KISSME, cross-fitted)"),
    "pretrain": ("fingerprint.cli.pretrain", "SSCD-style self-supervised backbone pretraining (optional)"),
    "train": ("fingerprint.cli.train", "episodic relation-network training with Accelerate"),
    "embed": ("fingerprint.cli.embed", "export keyed unit-norm embeddings (and feature maps) from shards"),
    "index": ("fingerprint.cli.index", "build a FAISS index over generated embeddings"),
    "profile": ("fingerprint.cli.profile", "calibrated similarity profile of every real image (dev and test)"),
    "fuse": ("fingerprint.cli.fuse", "fit the trained fused scorer on the dev labels"),
    "score": ("fingerprint.cli.score", "membership scores, labels and run files"),
    "compare": ("fingerprint.cli.compare", "scikit-learn comparators over exported features"),
    "cluster": ("fingerprint.cli.cluster", "hierarchical clustering of embeddings and a cluster scorer"),
    "evaluate": ("fingerprint.cli.evaluate", "metrics with bootstrap intervals for score files"),
    "validate": ("fingerprint.cli.validate", "check a run file against the official rules"),
    "report": ("fingerprint.cli.report", "self-contained HTML + Markdown report of a run folder"),
    "run": ("fingerprint.cli.run", "the whole pipeline on a folder with dev/ and test/"),
    "audit": ("fingerprint.cli.audit", "dataset-level test: was a candidate collection used to train the generator?"),
    "attribute": ("fingerprint.cli.attribute", "which real subset did each generated image come from (or none)?"),
    "demo": ("fingerprint.cli.demo", "synth (cached) + run on the built-in benchmark data (--task audit|attribute)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: fingerprint <command> [flags]   (fingerprint {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run 'fingerprint <command> --help' for a command's flags; 'fingerprint --debug <command> ...'",
        "prints the traceback of an error (as does --debug after the command, or FINGERPRINT_DEBUG=1).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `fingerprint <command> ...` to the command's module (imported only when used)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fingerprint: error: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest + ["--debug"] if debug else rest)
