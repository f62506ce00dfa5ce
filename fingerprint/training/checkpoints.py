"""Training's files: the model folder, rotated checkpoints that resume exactly, and the final model.

Checkpoints (`accelerator.save_state`, rotated to `keep_checkpoints`) are
written at the end of each epoch together with `train_state.json` (counters,
early-stopping state, the sha256 of every file of the checkpoint and the
training config, as JSON, not pickle), which also marks the checkpoint
complete; `find_checkpoint(out, "latest")` returns the newest complete one.
Before resuming, `verify_checkpoint` checks every file against its sha256
and that this process's RNG state loads: Accelerate itself logs an unreadable
`random_states_<rank>.pkl` at INFO and carries on, which would make the
resumed run silently another run. `finish` writes the best validation epoch
as the final model, with the threshold calibrated on its (held-out)
validation scores.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.constants import RNG_STATE_NAME
from accelerate.utils.other import load as accelerate_load
from torch import nn

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json, sha256_file, write_json
from fingerprint.embedding.model_io import load_model, save_model
from fingerprint.evaluation.metrics import calibrate_threshold, on_scale
from fingerprint.training.train_config import TrainConfig, TrainState

STATE_FILE = "train_state.json"
LOG_FILE = "train_log.jsonl"
#: TrainConfig fields that do not change what a training run computes
_NOT_THE_RUN = ("resume", "force", "keep_checkpoints", "log_every")


def prepare_out_dir(cfg: TrainConfig, accelerator: Any) -> None:
    """Refuse an existing model unless forced or resumed; clear the old one when starting afresh."""
    out_dir = Path(cfg.out)
    taken = (out_dir / "model.json").exists() or (out_dir / "checkpoints").exists()
    if cfg.resume is None and taken and not cfg.force:  # checked on every rank, so all of them stop
        raise FingerprintError(
            f"{out_dir}: holds a trained model or checkpoints (use train.force to replace them, "
            "or train.resume latest to continue)"
        )
    if cfg.resume is None and accelerator.is_main_process:
        for name in ("checkpoints", "best"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("model.json", "model.safetensors", LOG_FILE):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def discard_unresumable(out_dir: Path) -> None:
    """After a failed run: if no complete checkpoint exists, remove its partial files (best/, logs, checkpoints/)."""
    out_dir = Path(out_dir)
    try:
        find_checkpoint(out_dir, "latest")
        return
    except FingerprintError:
        pass
    for name in ("checkpoints", "best"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / LOG_FILE).unlink(missing_ok=True)


def find_checkpoint(out_dir: Path, resume: str) -> Path:
    """The checkpoint to resume from: `resume` itself, or the newest complete one under out_dir/checkpoints."""
    if resume != "latest":
        p = Path(resume)
        if not (p / STATE_FILE).is_file():
            raise FingerprintError(f"{p}: not a complete training checkpoint (no {STATE_FILE})")
        return p
    root = Path(out_dir) / "checkpoints"
    found = []
    for p in root.glob("checkpoint_*") if root.is_dir() else []:
        if (p / STATE_FILE).is_file() and p.name.split("_")[-1].isdigit():
            found.append((int(p.name.split("_")[-1]), p))
    if not found:
        raise FingerprintError(f"{root}: no complete checkpoint to resume from")
    return max(found)[1]


def resumable_checkpoint(cfg: TrainConfig) -> Path | None:
    """The newest complete checkpoint in `cfg.out` if it was written by this same training config, else None."""
    try:
        ckpt = find_checkpoint(cfg.out, "latest")
        state = read_json(ckpt / STATE_FILE)
    except FingerprintError:
        return None
    return ckpt if isinstance(state, dict) and state.get("config") == run_config(cfg) else None


def state_digest(model: nn.Module) -> str:
    """sha256 over the model's state (names, dtypes, values): equal on every rank after a synchronised run."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.detach().float().cpu().numpy().tobytes()
        )
    return h.hexdigest()


def run_config(cfg: TrainConfig) -> dict[str, Any]:
    """The training config as JSON values, without the fields that do not change the run (resume, force, ...)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k not in _NOT_THE_RUN}


def save_checkpoint(accelerator: Any, state: TrainState, cfg: TrainConfig | None = None) -> Path:
    """accelerate save_state (rotated) + train_state.json (with every file's sha256), which marks it complete."""
    state.checkpoint = accelerator.project_configuration.iteration
    root = Path(accelerator.project_dir) / "checkpoints"
    where = root / f"checkpoint_{state.checkpoint}"
    if accelerator.is_main_process and root.is_dir():
        # a checkpoint a killed run left half-written: Accelerate would refuse its folder, or rotate out a complete one
        for partial in [p for p in root.glob("checkpoint_*") if not (p / STATE_FILE).is_file()]:
            shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state()
    except OSError:
        raise
    except Exception as e:  # torch.save / safetensors report a full disk as RuntimeError / SafetensorError
        raise FingerprintError(f"{where}: cannot write the checkpoint ({str(e).splitlines()[0][:200]})") from e
    accelerator.wait_for_everyone()  # every rank's random_states_<rank>.pkl is written
    if accelerator.is_main_process:
        files = {p.name: sha256_file(p) for p in sorted(where.iterdir()) if p.is_file() and p.name != STATE_FILE}
        record = state.to_json() | {"files": files, "world_size": accelerator.num_processes}
        write_json(where / STATE_FILE, record | ({"config": run_config(cfg)} if cfg is not None else {}))
    accelerator.wait_for_everyone()
    return where


def verify_checkpoint(ckpt: Path, process_index: int, world_size: int) -> dict:
    """Check a checkpoint before `accelerator.load_state`: every file's sha256, and that our RNG state loads.

    Returns its train_state.json. A missing, altered or unreadable file is a
    FingerprintError naming it, so a resumed run is the same run or fails.
    """
    state = read_json(ckpt / STATE_FILE)
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict):
        raise FingerprintError(
            f"{ckpt / STATE_FILE}: no file checksums (an older or foreign checkpoint); cannot resume"
        )
    written = state.get("world_size", 1)
    if written != world_size:
        raise FingerprintError(f"{ckpt}: written by {written} process(es), this run has {world_size}; cannot resume")
    for name, digest in sorted(files.items()):
        path = ckpt / name
        if not path.is_file():
            raise FingerprintError(f"{path}: missing from the checkpoint; cannot resume")
        if sha256_file(path) != digest:
            raise FingerprintError(f"{path}: sha256 differs from {STATE_FILE} (altered or damaged); cannot resume")
    rng = ckpt / f"{RNG_STATE_NAME}_{process_index}.pkl"
    if rng.name not in files:
        raise FingerprintError(f"{rng}: no RNG state of process {process_index} in the checkpoint; cannot resume")
    try:
        states = accelerate_load(rng)  # weights_only: numpy arrays and tensors only
        missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - set(states)
    except Exception as e:
        raise FingerprintError(f"{rng}: unreadable RNG state ({str(e).splitlines()[0][:160]}); cannot resume") from e
    if missing:
        raise FingerprintError(f"{rng}: RNG state lacks {', '.join(sorted(missing))}; cannot resume")
    return state


def load_checkpoint(accelerator: Any, ckpt: Path) -> dict:
    """Verify `ckpt`, then `accelerator.load_state` it; returns its train_state.json."""
    state = verify_checkpoint(ckpt, accelerator.process_index, accelerator.num_processes)
    try:
        accelerator.load_state(str(ckpt))
    except Exception as e:  # e.g. a pickle that weights_only loading refuses
        raise FingerprintError(
            f"{ckpt}: cannot load the checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
    return state


def finish(cfg: TrainConfig, state: TrainState, world: int, stop_reason: str, main: bool) -> dict:
    """Write the final model (the best validation epoch) with its calibration; return the summary."""
    best, meta = load_model(cfg.out / "best")
    validation = meta.get("validation")
    calibration = None
    if validation:
        scores = on_scale(validation["scores"], cfg.calibration_scale)
        calibration = {
            "threshold": calibrate_threshold(validation["labels"], scores, cfg.calibration, seed=cfg.seed),
            "rule": cfg.calibration,
            "scale": cfg.calibration_scale,
            "scorer": "relation",
            "on": "held-out validation images",
            "space": "probability",  # sigmoid of the pooled logit over the k nearest generated images
            "k": cfg.k,
            "epoch": meta["epoch"],
            "val_auc": validation["val_auc"],
            "keys": validation["keys"],
            "scores": validation["scores"],
            "labels": validation["labels"],
        }
    summary = {
        "model_dir": str(cfg.out),
        "epochs": state.epoch,
        "steps": state.step,
        "optimizer_steps": state.optimizer_steps,
        "best_epoch": meta["epoch"],
        "val_auc": validation["val_auc"] if validation else None,
        "threshold": calibration["threshold"] if calibration else None,
        "stopped": stop_reason,
        "world_size": world,
    }
    if main:
        extra = {"calibration": calibration, "train": {"config": asdict(cfg), **summary, "history": state.history}}
        save_model(best, cfg.out, extra=extra)
    return summary
