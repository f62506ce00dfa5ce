"""Summarise a shard folder (counts per role and label, image size, encoding, shards); --verify re-checks every checksum."""

from __future__ import annotations

import json
import sys

from fingerprint import shards
from fingerprint.cli.base import run_command

NAME = "inspect"


def add_arguments(p):
    p.add_argument("shards", help="folder written by 'fingerprint pack'")
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-read every sample and check shard sha256, pixel_sha256 and (for stored source PNGs) sha256",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--seed", type=int, default=0, help="unused by inspect (every command takes --seed)")


def run(args) -> int:
    summary = shards.summarize(args.shards)
    result = None
    if args.verify:
        result = shards.verify(args.shards)
        summary["verify"] = {"ok": result["ok"], "checked": result["checked"], "problems": result["problems"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
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
        if result is not None:
            if result["ok"]:
                print(f"  verify: OK, {result['checked']} samples checked")
            else:
                print(f"  verify: FAILED, {len(result['problems'])} problem(s):")
                for line in result["problems"]:
                    print(f"    {line}")
    if result is not None and not result["ok"]:
        more = len(result["problems"]) - 1
        print(
            f"fingerprint inspect: error: {result['problems'][0]}" + (f" (+{more} more)" if more else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
