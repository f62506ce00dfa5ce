"""Summarise a shard folder (counts per role and label, image size, encoding); --verify re-checks every checksum."""

from __future__ import annotations

import json
import sys

from fingerprint.cli.options import command
from fingerprint.data.shards import InspectConfig, run_inspect

NAME = "inspect"


def _print(summary: dict) -> None:
    c = summary["counts"]
    print(
        f"{summary['folder']}: {summary['count']} images in {summary['shards']} shards "
        f"({summary['bytes'] / 1e6:.1f} MB), {summary['encoding']}, "
        f"{summary['image_size']}x{summary['image_size']}, layout {summary['layout']}"
    )
    print("  roles:  " + ", ".join(f"{k} {v}" for k, v in c["role"].items()))
    print("  labels: " + ", ".join(f"{k} {v}" for k, v in c["label"].items()))
    print("  groups: " + ", ".join(f"{k} {v}" for k, v in c["role_label"].items()))
    print(f"  converted at pack: {summary['converted']}, skipped at pack: {summary['skipped_at_pack']}")
    result = summary.get("verify")
    if result is not None:
        if result["ok"]:
            print(f"  verify: OK, {result['checked']} samples checked")
        else:
            print(f"  verify: FAILED, {len(result['problems'])} problem(s):")
            for line in result["problems"]:
                print(f"    {line}")


def run(cfg: InspectConfig) -> int:
    summary = run_inspect(cfg)
    if cfg.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary)
    result = summary.get("verify")
    if result is not None and not result["ok"]:
        more = len(result["problems"]) - 1
        print(
            f"fingerprint inspect: error: {result['problems'][0]}" + (f" (+{more} more)" if more else ""),
            file=sys.stderr,
        )
        return 1
    return 0


main = command(NAME, InspectConfig, run, __doc__)
