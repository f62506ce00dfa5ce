"""Training's files: the model folder, rotated checkpoints that resume exactly, and the final model.

Checkpoints (`accelerator.save_state`, rotated to `keep_checkpoints`) are
written at the end of each epoch together with `train_state.json` (counters,
early-stopping state, as JSON, not pickle), which also marks the checkpoint
complete; `find_checkpoint(out, "latest")` returns the newest complete one.
`finish` writes the best validation epoch as the final model, with the
threshold calibrated on its (held-out) validation scores.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fingerprint.metrics import calibrate_threshold, on_scale
from fingerprint.model_io import load_model, save_model
from fingerprint.utils import FingerprintError, write_json

if TYPE_CHECKING:
    from fingerprint.train import TrainConfig, TrainState

STATE_FILE = "train_state.json"
LOG_FILE = "train_log.jsonl"


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


def save_checkpoint(accelerator: Any, state: TrainState) -> Path:
    """accelerate save_state (rotated) + train_state.json, which marks the checkpoint complete."""
    state.checkpoint = accelerator.project_configuration.iteration
    where = Path(accelerator.project_dir) / "checkpoints" / f"checkpoint_{state.checkpoint}"
    accelerator.save_state()
    if accelerator.is_main_process:
        write_json(where / STATE_FILE, state.to_json())
    accelerator.wait_for_everyone()
    return where


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
