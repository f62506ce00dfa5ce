"""Build a membership benchmark: CT-like (or your own) real images, a generator trained on the used ones, its samples.

Writes OUT in the ImageCLEFmedical GANs 2023 layout (dev/generated, dev/used,
dev/not_used, test/generated_1, test/real_unknown_1) with test_truth.csv beside
test/, plus synth.json (parameters, training curve, timings, measured difficulty).
Options left out take the level preset's value.
"""

from __future__ import annotations

from fingerprint.benchdata.synth import SynthConfig, run_synth
from fingerprint.cli.options import command
from fingerprint.core.logs import is_main_process

NAME = "synth"


def run(cfg: SynthConfig) -> int:
    info = run_synth(cfg)
    if not is_main_process():
        return 0
    auc = info["difficulty"]["pixel_nn_auc"]
    c = info["counts"]
    if "subsets" in info:
        sub = info["subsets"]
        print(
            f"{cfg.out}: {len(sub['names'])} subsets of {sub['size']} real images, each with its own generator; "
            f"{sub['generated_per_subset']} generated per generator (+{sub['outside_generated']} from outside), "
            f"{sub['null_size']} null reals; pixel-NN attribution accuracy "
            f"{info['difficulty']['pixel_nn_attribution_accuracy']:.3f}; {info['timings']['total']:.0f} s"
        )
        return 0
    if "audit" in info:
        a = info["audit"]
        print(
            f"{cfg.out}/audit: {a['case']} case, candidate {a['n_candidate']} ({a['n_used']} used), reference "
            f"{a['n_reference']}"
        )
    print(
        f"{cfg.out}: {c['dev']['generated']} + {c['test']['generated']} generated, "
        f"{c['dev']['used']}/{c['dev']['not_used']} dev used/not used, {c['test']['real_unknown']} test real; "
        f"pixel-NN AUC dev {auc['dev']:.3f}, test {auc['test']:.3f}; {info['timings']['total']:.0f} s"
    )
    return 0


main = command(NAME, SynthConfig, run, __doc__)
