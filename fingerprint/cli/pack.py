"""Pack image folders (ImageCLEF dev/test layouts, the seed's naming, or a CSV/JSONL manifest) into shards."""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.data.pack import PackConfig, run_pack

NAME = "pack"


def run(cfg: PackConfig) -> int:
    man = run_pack(cfg)
    groups = ", ".join(f"{k}: {v}" for k, v in man["counts"]["role_label"].items())
    print(
        f"{cfg.out}: {man['count']} images in {len(man['shards'])} shards ({groups}); "
        f"{man['converted']} converted, {man['n_skipped']} skipped; {man['seconds']:.1f} s"
    )
    depths, rule = man["intensity"]["depths"], man["intensity"]
    wide = ", ".join(f"{n} at {d} bits" for d, n in depths.items() if d != "8")
    if wide:
        how = f"window {rule['window'][0]:g},{rule['window'][1]:g}" if rule["rule"] == "window" else rule["rule"]
        print(f"  wider than 8 bits: {wide}; mapped by the {how} rule, stored at {rule['stored_bits']} bits")
    return 0


main = command(NAME, PackConfig, run, __doc__)
