"""Episodic training: artifacts and logs, exact resume, NaN stop, config errors, other modes, launches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_episodes import pack_dev
from test_shards import make_layout

import fingerprint.training.loop as loop_mod
from fingerprint.cli import train as train_cli
from fingerprint.core.distributed import seed_everything
from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.embedding.model_io import build_model, load_model
from fingerprint.training.train import TrainConfig, run_train
from launch import two_machines

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tiny_cfg(shards_dir: Path, out: Path, **kw) -> TrainConfig:
    """32 px, 4 queries x K=4, 3 episodes per epoch, 2 epochs, one thread (deterministic).

    Everything trains (backbone, embedding, BatchNorm recalibrated at each bank refresh, augmented
    queries): the most stateful path, for the resume and NaN tests.
    """
    base = dict(
        image_size=32,
        queries=4,
        k=4,
        k_random=1,
        epochs=2,
        batch_size=32,
        bn_images=16,
        threads=1,
        refresh_every=2,
        patience=0,
        val_fraction=0.25,
        keep_checkpoints=1,
        lr=2e-3,
        freeze="none",
        train_embed=True,
        bn="recalibrate",
        augment=True,
    )
    return TrainConfig(shards=shards_dir, out=out, **{**base, **kw})


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """24 generated near-copies of 8 used images, 8 not-used, 32x32, in 10 shards."""
    return pack_dev(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def trained(dev, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    return out, run_train(tiny_cfg(dev, out))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_train_writes_model_calibration_logs_and_checkpoints(trained):
    out, summary = trained
    assert summary["epochs"] == 2 and summary["steps"] == 6 and summary["world_size"] == 1
    model, meta = load_model(out)
    assert meta["config"]["image_size"] == 32 and model.cfg.image_size == 32 and summary["mixed_precision"] == "no"
    cal = meta["calibration"]
    assert cal["rule"] == "kappa" and cal["scale"] == "robust" and cal["space"] == "probability" and cal["k"] == 4
    assert sorted(cal["labels"]) == [0, 0, 1, 1] and len(cal["keys"]) == len(cal["scores"]) == 4
    assert 0.0 <= cal["threshold"] <= 1.0 and cal["epoch"] == summary["best_epoch"]
    assert meta["train"]["config"]["queries"] == 4 and len(meta["train"]["history"]) == 2
    # best/ holds the best epoch; checkpoints rotate to keep_checkpoints=1 and each is marked complete
    assert load_model(out / "best")[1]["epoch"] == summary["best_epoch"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint_1"]
    state = json.loads((out / "checkpoints" / "checkpoint_1" / "train_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 6
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["stage"] == "train" for r in recs)
    steps = [r for r in recs if "step" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and all({"epoch", "loss", "lr"} <= set(r) for r in steps)
    epochs = [r for r in recs if "val_auc" in r and "step" not in r and "seconds" in r and "epochs" not in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_loss" in r for r in epochs)
    assert "episodes_per_s" in recs[-1] and recs[-1]["seconds"] > 0


def test_existing_model_is_refused_without_force(trained, dev):
    out, _ = trained
    with pytest.raises(FingerprintError, match="train.force"):
        run_train(tiny_cfg(dev, out))


def test_resume_ends_with_the_uninterrupted_weights(trained, dev, tmp_path, monkeypatch):
    ref_out, ref = trained
    out = tmp_path / "model"
    calls = {"n": 0}
    real_loss = loop_mod.episode_loss

    def interrupt_in_epoch_2(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, second episode
            raise KeyboardInterrupt
        return real_loss(*a, **kw)

    monkeypatch.setattr(loop_mod, "episode_loss", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_cfg(dev, out))
    assert not (out / "model.json").exists()
    assert json.loads((out / "checkpoints" / "checkpoint_0" / "train_state.json").read_text())["epoch"] == 1
    partial = out / "checkpoints" / "checkpoint_1"  # what a run killed while saving its next checkpoint leaves
    partial.mkdir()
    (partial / "optimizer.bin").write_bytes(b"half")
    monkeypatch.setattr(loop_mod, "episode_loss", real_loss)
    resumed = run_train(tiny_cfg(dev, out, resume="latest", keep_checkpoints=2))  # 2: rotation keeps the partial one
    assert resumed["weights_sha256"] == ref["weights_sha256"]
    a = weights(out / "checkpoints" / "checkpoint_1" / "model.safetensors")
    b = weights(ref_out / "checkpoints" / "checkpoint_1" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_auc"] == ref["val_auc"] and resumed["threshold"] == ref["threshold"]


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(dev, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    calls = {"n": 0}
    real_loss = loop_mod.episode_loss

    def nan_in_epoch_2(*a, **kw):
        calls["n"] += 1
        loss = real_loss(*a, **kw)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(loop_mod, "episode_loss", nan_in_epoch_2)
    flags = [
        "--image-size",
        "32",
        "--queries",
        "4",
        "--k",
        "4",
        "--k-random",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--patience",
        "0",
        "--val-fraction",
        "0.25",
        "--keep-checkpoints",
        "1",
    ]
    rc = train_cli.main(["--shards", str(dev), "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if "error:" in ln][0]
    assert "epoch 2 step 1: loss is nan" in line and "checkpoint_0" in line
    assert not (out / "model.json").exists() and not (out / "checkpoints" / "checkpoint_1").exists()
    # the epoch-1 checkpoint is complete and holds the epoch-1 weights (also saved as best/ then)
    assert json.loads((out / "checkpoints" / "checkpoint_0" / "train_state.json").read_text())["epoch"] == 1
    kept = weights(out / "checkpoints" / "checkpoint_0" / "model.safetensors")
    best = weights(out / "best" / "model.safetensors")
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)
    assert all(torch.isfinite(t).all() for t in kept.values() if t.is_floating_point())


def test_bad_settings_are_clear_errors(dev, tmp_path):
    with pytest.raises(FingerprintError, match=r"K=64 is larger than the generated pool \(24 images\)"):
        run_train(tiny_cfg(dev, tmp_path / "a", k=64))
    assert not (tmp_path / "a").exists()  # a failed train leaves no (empty) output folder
    with pytest.raises(FingerprintError, match="queries must be even"):
        run_train(tiny_cfg(dev, tmp_path / "b", queries=5))
    with pytest.raises(FingerprintError, match="need a shared backbone"):
        run_train(tiny_cfg(dev, tmp_path / "c", shared=False, support="bank"))
    with pytest.raises(FingerprintError, match="no complete checkpoint"):
        run_train(tiny_cfg(dev, tmp_path / "d", resume="latest"))
    with pytest.raises(FingerprintError, match="shard folder not found"):
        run_train(tiny_cfg(tmp_path / "missing", tmp_path / "e"))
    make_layout(tmp_path / "test_src", "test")  # unlabelled real images only
    pack(tmp_path / "test_src", tmp_path / "test_shards", image_size=16)
    with pytest.raises(FingerprintError, match="no labelled real images"):
        run_train(tiny_cfg(tmp_path / "test_shards", tmp_path / "f"))


def test_seed_style_pairs_with_separate_backbones(dev, tmp_path):
    """The seed's setup: two backbones, seed head, supports re-encoded with gradients, per-pair labels."""
    s = run_train(
        tiny_cfg(
            dev,
            tmp_path / "m",
            shared=False,
            relation="seed",
            pool="mean",
            seed_stem=True,
            episodes="pairs",
            epochs=1,
            freeze="none",
            k=2,
            k_random=0,
        )
    )
    model, meta = load_model(tmp_path / "m")
    assert s["steps"] == 3 and len(model.backbones) == 2 and meta["config"]["relation"] == "seed"


@pytest.mark.slow
def test_bf16_under_accelerate_launch_with_module_entry(dev, tmp_path):
    """`accelerate launch -m fingerprint train` works, and bf16 autocast runs on CPU (tiny input)."""
    out = tmp_path / "m"
    cmd = [
        str(VENV_BIN / "accelerate"),
        "launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "bf16",
        "--dynamo_backend",
        "no",
        "-m",
        "fingerprint",
        "train",
        "--shards",
        str(dev),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--queries",
        "4",
        "--k",
        "2",
        "--k-random",
        "0",
        "--epochs",
        "1",
        "--bn-images",
        "8",
        "--threads",
        "1",
        "--val-fraction",
        "0.25",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["mixed_precision"] == "bf16"  # the launcher's setting
    assert summary["val_auc"] is not None and load_model(out)[1]["calibration"]["k"] == 2


#: DDP over every layer, bank gathered each step: the flags of the launched training runs
LAUNCHED = ["--image-size", "32", "--queries", "2", "--k", "2", "--k-random", "1", "--epochs", "2", "--bn-images", "8",
            "--threads", "1", "--val-fraction", "0.25", "--refresh-every", "1", "--freeze", "none", "--train-embed",
            "--bn", "recalibrate"]  # fmt: skip


def _ranks(report: Path) -> list[dict]:
    return [json.loads((report / f"rank{i}.json").read_text()) for i in range(2)]


@pytest.fixture(scope="module")
def one_machine(dev, tmp_path_factory):
    """launch/cpu.yaml: two gloo processes on one machine."""
    tmp = tmp_path_factory.mktemp("launch")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # the config alone must suffice
    script = [str(ROOT / "tests" / "_dist_train.py"), str(dev), str(tmp / "m"), str(tmp / "report"), *LAUNCHED]
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "cpu.yaml"), *script]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_two_process_cpu_launch(one_machine):
    """launch/cpu.yaml gives 2 gloo processes: disjoint query shards, identical final weights."""
    ranks = _ranks(one_machine / "report")
    assert [x["world_size"] for x in ranks] == [2, 2] and "MULTI_CPU" in ranks[0]["distributed_type"]
    for epoch in ("0", "1"):
        k0, k1 = set(ranks[0]["keys"][epoch]), set(ranks[1]["keys"][epoch])
        assert k0 and k1 and not k0 & k1  # each rank streams its own shards
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["summary"]["steps"] == ranks[1]["summary"]["steps"] == 6  # 12 train queries / (2 x 2) per epoch
    meta = json.loads((one_machine / "m" / "model.json").read_text())
    assert meta["train"]["world_size"] == 2 and meta["calibration"] is not None


@pytest.mark.slow
def test_two_machines_train_like_one_machine_with_two_processes(dev, one_machine, tmp_path):
    """Two "machines" on this host (--num_machines 2, --machine_rank 0/1, rendezvous at 127.0.0.1): world size 2,
    each rank reads the query shards it would on one machine, and the final weights are the same."""
    args = [str(ROOT / "tests" / "_dist_train.py"), str(dev), str(tmp_path / "m"), str(tmp_path / "report"), *LAUNCHED]
    for r in two_machines(args, cwd=ROOT):
        assert r.returncode == 0, r.stderr[-3000:]
    ranks, ref = _ranks(tmp_path / "report"), _ranks(one_machine / "report")
    assert [x["world_size"] for x in ranks] == [2, 2] and "MULTI_CPU" in ranks[0]["distributed_type"]
    assert [x["keys"] for x in ranks] == [x["keys"] for x in ref]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == ref[0]["weights_sha256"]


def test_default_trains_the_relation_head_on_a_static_bank(dev, tmp_path, monkeypatch):
    """Defaults: random frozen backbone and embedding, bank computed once, relation head learned."""
    calls = {"n": 0}
    real_refresh = loop_mod.refresh_bank

    def counting(*a, **kw):
        calls["n"] += 1
        return real_refresh(*a, **kw)

    monkeypatch.setattr(loop_mod, "refresh_bank", counting)
    cfg = TrainConfig(
        shards=dev, out=tmp_path / "m", image_size=32, queries=4, k=4, epochs=2, threads=1, val_fraction=0.25
    )
    run_train(cfg)
    assert calls["n"] == 1
    model, _ = load_model(tmp_path / "m")
    seed_everything(cfg.seed)
    init = build_model(cfg.model_config()).state_dict()
    final = model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in init.items() if k.startswith(("backbones.", "embed_head.")))
    assert not torch.equal(final["relation.pair.weight"], init["relation.pair.weight"])
