"""Embedding throughput of the default backbone at 256x256 against the machine's measured limit.

- limit: FLOP/s of a large torch matmul (fp32; on CUDA also bf16), measured here;
- work: the model's FLOPs per image, counted with torch.utils.flop_counter;
- achieved: images/s of `model(x)` (embedding mode: unit-norm embedding + feature
  map) x FLOPs/image, as a fraction of the matmul FLOP/s;
- fp32 vs bf16 autocast, channels_last vs contiguous (and torch.compile with
  --compile). On CPU the bf16 comparison uses a tiny batch (bf16 autocast can be
  tens of times slower than fp32 on CPUs without bf16 units) and the fp32 side
  of that ratio uses the same tiny batch;
- feed: can the shard stream keep up? images/s of fingerprint.data.stream alone
  (same images, packed) against the model's images/s, and the end-to-end
  fingerprint.embedding.embed.embed_shards (read + encode) as a fraction of model-only.
Writes benchmarks/results/embed.json (gpu_embed.json with --device cuda).

    python benchmarks/bench_embed.py [--quick|--tiny] [--device cuda] [--compile]
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

import torch
from common import (
    BenchArgs,
    check_device,
    finish,
    headline,
    load_average,
    matmul_fn,
    ratio,
    set_threads,
    standalone_main,
    sync,
    time_interleaved,
    time_it,
    usable_cores,
    write_dev_folder,
)

log = logging.getLogger(__name__)

NAME = "embed"
IMAGE_SIZE = 256


def count_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs (2 x multiply-adds) of one image's embedding-mode forward, counted on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).float().cpu().eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        probe(torch.zeros(1, 1, image_size, image_size))
    return int(counter.get_total_flops())


def forward_step(model, x: torch.Tensor, *, device: str, dtype: torch.dtype | None):
    """One inference-mode model(x), optionally under autocast(dtype)."""

    def step():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)

    return step


def _channels_last(model):
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def feed_check(
    model,
    device: str,
    *,
    n_images: int,
    batch: int,
    workers: tuple[int, ...],
    e2e_workers: tuple[int, ...],
    model_ips: float,
    seed: int,
    autocast_dtype: torch.dtype | None,
) -> dict:
    """Stream-only and end-to-end (embed_shards) images/s on packed CT-like images vs model-only images/s."""
    from fingerprint.data.pack import pack
    from fingerprint.data.stream import StreamConfig, make_loader
    from fingerprint.embedding.embed import embed_shards

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_dev_folder(
            tmp / "dev", n_generated=n_images - 2, n_used=1, n_not_used=1, size=IMAGE_SIZE, seed=seed, unique=256
        )
        n_shards = max(2 * max(workers), 4)
        pack(tmp / "dev", tmp / "shards", image_size=IMAGE_SIZE, max_count=-(-n_images // n_shards))
        prep_s = time.perf_counter() - t0

        def read(w: int) -> int:
            n = 0
            for b in make_loader(tmp / "shards", StreamConfig(batch_size=batch, num_workers=w)):
                b["image"].to(device, non_blocking=True)
                n += len(b["key"])
            sync(device)
            return n

        stream = []
        for w in workers:
            read(w)  # warm the page cache
            t = time_it(lambda w=w: read(w), repeats=2, warmup=0, device=device)
            ips = n_images / t.best
            stream.append(
                {
                    "workers": w,
                    **t.as_dict(),
                    "images_per_s": round(ips, 1),
                    "stream_vs_model": ratio(ips, model_ips, 2),
                }
            )
        accelerator = None
        if autocast_dtype is not None:
            from accelerate import Accelerator

            accelerator = Accelerator(mixed_precision="bf16", cpu=device == "cpu")
        e2e = []
        for w in e2e_workers:
            stats: dict = {}
            embed_shards(model, tmp / "shards", batch_size=batch, num_workers=w, accelerator=accelerator, stats=stats)
            if stats["images"] != n_images:
                raise RuntimeError(f"embed_shards read {stats['images']} images, expected {n_images}")
            e2e.append(
                {
                    "workers": w,
                    "images_per_s": stats["images_per_s"],
                    "fraction_of_model_only": ratio(stats["images_per_s"], model_ips, 3),
                }
            )
    return {
        "n_images": n_images,
        "batch": batch,
        "shards": n_shards,
        "prepare_s": round(prep_s, 2),
        "model_images_per_s": round(model_ips, 2),
        "autocast": str(autocast_dtype) if autocast_dtype else None,
        "stream": stream,
        "embed_shards": e2e,
        "note": "stream-only rates are upper bounds where loader workers and the model share the same CPU cores",
    }


def run(args: BenchArgs) -> dict:
    """Measure the limit, the model's FLOPs and its images/s in each variant; return and write the report."""
    from fingerprint.embedding.model_io import build_model
    from fingerprint.embedding.models import ModelConfig, describe

    check_device(args.device)
    started, load_before = time.perf_counter(), load_average()
    device = args.device
    cuda = device == "cuda"
    threads = set_threads()
    torch.manual_seed(args.seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
    size = args.pick(64, IMAGE_SIZE, IMAGE_SIZE)
    cfg = ModelConfig(image_size=size)
    model = build_model(cfg).eval().to(device)
    flops = count_flops(model, size)
    repeats = args.pick(1, 3, 4)
    batch = args.pick(4, 256, 256) if cuda else args.pick(4, 16, 32)
    bf16_batch = batch if cuda else 2
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(batch, 1, size, size, generator=gen).to(device)

    model_cl = _channels_last(model)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    xb = x[:bf16_batch]
    xb_cl = xb.contiguous(memory_format=torch.channels_last)
    bf16 = torch.bfloat16
    variants = {
        "fp32": (model, x, None),
        "fp32_channels_last": (model_cl, x_cl, None),
        **({} if cuda else {"fp32_bf16_batch": (model, xb, None)}),
        "bf16": (model, xb, bf16),
        "bf16_channels_last": (model_cl, xb_cl, bf16),
    }
    compile_s = None
    if args.compile:
        compiled = torch.compile(model_cl)
        t0 = time.perf_counter()
        forward_step(compiled, xb_cl, device=device, dtype=bf16)()
        sync(device)
        compile_s = round(time.perf_counter() - t0, 2)
        variants["bf16_channels_last_compiled"] = (compiled, xb_cl, bf16)
    # the limit is timed in turns with the model, so load from other processes hits both alike
    n_mm = args.pick(1024, 8192, 8192) if cuda else args.pick(512, 2048, 2048)
    matmuls = {dt: matmul_fn(device, n=n_mm, dtype=dt) for dt in ("float32", "bfloat16")}
    fns = {f"matmul_{dt}": fn for dt, (fn, _) in matmuls.items()}
    fns.update({name: forward_step(m, inp, device=device, dtype=dt) for name, (m, inp, dt) in variants.items()})
    timed = time_interleaved(fns, repeats=repeats, warmup=1, device=device)
    limits = {
        dt: {
            "n": n_mm,
            "dtype": dt,
            **timed[f"matmul_{dt}"].as_dict(),
            "flops_per_s": count / timed[f"matmul_{dt}"].best,
        }
        for dt, (_, count) in matmuls.items()
    }
    peak32 = limits["float32"]
    log.info(
        "embed: %s, %.2f GFLOP/image, matmul %.1f GFLOP/s fp32, %.1f bf16",
        describe(model),
        flops / 1e9,
        peak32["flops_per_s"] / 1e9,
        limits["bfloat16"]["flops_per_s"] / 1e9,
    )
    rates = {
        name: {
            "batch": len(variants[name][1]),
            **timed[name].as_dict(),
            "images_per_s": round(len(variants[name][1]) / timed[name].best, 3),
        }
        for name in variants
    }
    for name, r in rates.items():
        key = "bfloat16" if name.startswith("bf16") else "float32"
        r["fraction_of_matmul"] = round(r["images_per_s"] * flops / limits[key]["flops_per_s"], 4)
        r["limit_dtype"] = key
        log.info(
            "embed: %-28s %8.2f images/s (batch %d), %.1f%% of matmul %s",
            name,
            r["images_per_s"],
            r["batch"],
            100 * r["fraction_of_matmul"],
            key,
        )

    fp32_ref = rates["fp32"] if cuda else rates["fp32_bf16_batch"]
    best_name = max(rates, key=lambda k: rates[k]["images_per_s"] if not k.startswith("fp32_bf16") else 0)
    ratios = {
        "channels_last_vs_contiguous_fp32": ratio(
            rates["fp32_channels_last"]["images_per_s"], rates["fp32"]["images_per_s"]
        ),
        "bf16_vs_fp32": ratio(rates["bf16"]["images_per_s"], fp32_ref["images_per_s"]),
        "bf16_channels_last_vs_fp32": ratio(rates["bf16_channels_last"]["images_per_s"], fp32_ref["images_per_s"]),
    }
    if "bf16_channels_last_compiled" in rates:
        ratios["compiled_vs_eager_bf16_channels_last"] = ratio(
            rates["bf16_channels_last_compiled"]["images_per_s"], rates["bf16_channels_last"]["images_per_s"]
        )

    # embed_shards runs channels_last under the accelerator's bf16 autocast on CUDA, plain fp32 on CPU
    feed_variant = "bf16_channels_last" if cuda else "fp32"
    feed_ips = rates[feed_variant]["images_per_s"]
    feed_model = model_cl if cuda else model
    cores = usable_cores()
    if cuda:
        workers = args.pick((0, 2), (4, 8), tuple(w for w in (4, 8, 12) if w <= cores) or (cores,))
        e2e_workers, n_feed = workers, args.pick(64, 2048, 4096)
    else:
        # end-to-end on CPU costs n_feed / (model images/s) per worker count: keep it to two counts
        workers, e2e_workers, n_feed = args.pick((0, 1), (0, 1, 2), (0, 1, 2)), (0, 1), args.pick(32, 128, 256)
    feed = feed_check(
        feed_model,
        device,
        n_images=n_feed,
        batch=batch,
        workers=workers,
        e2e_workers=e2e_workers,
        model_ips=feed_ips,
        seed=args.seed,
        autocast_dtype=torch.bfloat16 if cuda else None,
    )
    best_stream = max(s["images_per_s"] for s in feed["stream"])
    best_ips = rates[best_name]["images_per_s"]
    feed["model_variant"] = feed_variant
    feed["best_variant"] = {
        "name": best_name,
        "images_per_s": best_ips,
        "stream_vs_best": ratio(best_stream, best_ips, 2),
    }
    best_e2e = max(e["images_per_s"] for e in feed["embed_shards"])
    frac = rates["fp32"]["fraction_of_matmul"]
    frac_best = max(r["fraction_of_matmul"] for k, r in rates.items() if not k.startswith("fp32_bf16"))
    report = {
        "what": f"images/s of the default backbone ({describe(model)}) in embedding mode, vs measured matmul FLOP/s",
        "threads": threads,
        "image_size": size,
        "flops_per_image": flops,
        "gflops_per_image": round(flops / 1e9, 3),
        "limits": limits,
        "rates": rates,
        "ratios": ratios,
        "compile_s": compile_s,
        "feed": feed,
        "notes": [
            "fraction_of_matmul = images/s x FLOPs/image / FLOP/s of a large torch matmul of the same dtype, timed in "
            "turns with the model in this run (best repeat of each); above 100% means the matmul did not reach the "
            "hardware's limit either (e.g. a load burst from other processes)",
            *(
                []
                if cuda
                else [
                    f"bf16 measured on a batch of {bf16_batch} (bf16 autocast can be far slower than fp32 on "
                    "CPUs without bf16 units); bf16_vs_fp32 compares it with fp32 on the same batch"
                ]
            ),
        ],
        "headline": [
            headline(
                f"embed: fp32 {rates['fp32']['images_per_s']:.1f} images/s as a fraction of matmul FLOP/s",
                f"{frac:.0%}",
                target=">= 50%",
                met=frac >= 0.5,
                note=f"best variant {frac_best:.0%}; {flops / 1e9:.2f} GFLOP/image, matmul "
                f"{peak32['flops_per_s'] / 1e9:.0f} GFLOP/s",
            ),
            headline("embed: channels_last vs contiguous (fp32)", ratios["channels_last_vs_contiguous_fp32"]),
            headline(
                "embed: bf16 vs fp32 autocast",
                ratios["bf16_vs_fp32"],
                target="> 1 on GPU",
                met=(ratios["bf16_vs_fp32"] or 0) > 1 if cuda else None,
                note="GPU run" if cuda else f"CPU, batch {bf16_batch}: the GPU target is not measurable here",
            ),
            headline(
                "feed: best shard-stream images/s / model images/s",
                ratio(best_stream, feed_ips, 2),
                target=">= 1 (stream keeps up)",
                met=best_stream >= feed_ips,
                note=f"model: {feed_variant}; end-to-end embed_shards reaches {best_e2e / feed_ips:.0%} of "
                f"model-only; fastest variant {best_name} {best_ips:.0f} images/s",
            ),
        ],
    }
    if "compiled_vs_eager_bf16_channels_last" in ratios:
        report["headline"].append(
            headline(
                "embed: torch.compile vs eager (bf16, channels_last)",
                ratios["compiled_vs_eager_bf16_channels_last"],
                note=f"compile took {compile_s} s",
            )
        )
    return finish(NAME, args, report, load_before=load_before, started=started)


def table(report: dict) -> list[str]:
    """Markdown rows for the README."""
    lines = ["| variant | batch | images/s | fraction of matmul FLOP/s |", "|---|---:|---:|---:|"]
    for name, r in report["rates"].items():
        lines.append(
            f"| {name} | {r['batch']} | {r['images_per_s']:.2f} | {r['fraction_of_matmul']:.1%} ({r['limit_dtype']}) |"
        )
    f = report["feed"]
    lines += [
        "",
        f"Feed check ({f['n_images']} packed images, batch {f['batch']}; model-only "
        f"{f['model_images_per_s']} images/s):",
        "",
        "| workers | stream images/s | stream / model | embed_shards images/s | embed_shards / model-only |",
        "|---:|---:|---:|---:|---:|",
    ]
    e2e = {e["workers"]: e for e in f["embed_shards"]}
    for s in f["stream"]:
        e = e2e.get(s["workers"], {})
        lines.append(
            f"| {s['workers']} | {s['images_per_s']} | {s['stream_vs_model']} | "
            f"{e.get('images_per_s', '-')} | {e.get('fraction_of_model_only', '-')} |"
        )
    return lines


def main(argv=None) -> int:
    return standalone_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
