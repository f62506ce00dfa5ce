"""Model files: building a model (with local torchvision weights), saving and loading it with its description.

A model folder holds `model.safetensors` (no pickle) and `model.json`
(format, architecture config, sha256 of the weights, training summary and
threshold calibration). `load_model` refuses weights whose sha256 no longer
matches, so a swapped file is never used silently. Pretrained weights are
never downloaded: `build_model(cfg, weights=PATH)` reads a local torchvision
ResNet state dict and sums conv1 over RGB for the 1-channel input.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, save_tensors, sha256_file, write_json
from fingerprint.embedding.models import Backbone, FingerprintModel, ModelConfig, count_parameters

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT = "fingerprint-model/1"
#: model.json keys written by save_model itself
RESERVED = {"format", "config", "sha256", "n_params", "weights_file"}


def build_model(cfg: ModelConfig, weights: str | None = None) -> FingerprintModel:
    """Build a randomly initialised model; `weights` is a local torchvision ResNet state-dict file.

    conv1 is adapted from 3 channels to 1 by summing over the RGB axis; the
    classifier (`fc.*`) is dropped. Nothing is ever downloaded.
    """
    model = FingerprintModel(cfg)
    if weights is not None:
        state = _read_backbone_weights(Path(weights), cfg.backbone)
        for bb in model.backbones.values():
            _load_backbone_state(bb, state, Path(weights), cfg.backbone)
        log.info("loaded %s backbone weights from %s", cfg.backbone, weights)
    return model


def _read_backbone_weights(path: Path, backbone: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise FingerprintError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FingerprintError(
            f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FingerprintError(f"{path}: not a state dict of tensors (expected torchvision {backbone} weights)")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    w = state.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[1] == 3:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)
    return state


def _load_backbone_state(bb: Backbone, state: dict[str, Tensor], path: Path, backbone: str) -> None:
    own = bb.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if bad:
            parts.append(f"{len(bad)} shape mismatches (e.g. {bad[0]})")
        raise FingerprintError(f"{path}: weights do not fit {backbone}: {'; '.join(parts)}")
    bb.load_state_dict({k: state[k].to(own[k].dtype) for k in own})


def save_model(model: nn.Module, out_dir: str | Path, *, extra: dict) -> None:
    """Write out_dir/model.safetensors and out_dir/model.json (config, extra, sha256), atomically.

    `extra`'s keys are stored at the top level of model.json (e.g. "calibration",
    "train"), next to "format", "config", "sha256" and "n_params".
    """
    model = getattr(model, "module", model)
    if not isinstance(model, FingerprintModel):
        raise TypeError(f"save_model wants a FingerprintModel, got {type(model).__name__}")
    clash = RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} are reserved in model.json")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        try:
            save_tensors(state, tmp, metadata={"format": FORMAT})
        except Exception as e:  # safetensors reports a failed write (full disk, ...) as SafetensorError
            raise FingerprintError(f"{out_dir / MODEL_FILE}: cannot write the weights ({str(e)[:200]})") from e
    meta = {
        "format": FORMAT,
        "config": asdict(model.cfg),
        "weights_file": MODEL_FILE,
        "sha256": sha256_file(out_dir / MODEL_FILE),
        "n_params": count_parameters(model),
        **extra,
    }
    write_json(out_dir / META_FILE, meta)


def load_model(model_dir: str | Path) -> tuple[FingerprintModel, dict]:
    """Load a saved model (eval mode, CPU) and its model.json; FingerprintError if missing, altered or unfit."""
    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise FingerprintError(f"{meta_path}: not found (is {model_dir} a trained model folder?)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise FingerprintError(f"{meta_path}: not a fingerprint model description (format {FORMAT})")
    weights = model_dir / meta.get("weights_file", MODEL_FILE)
    if not weights.is_file():
        raise FingerprintError(f"{weights}: weights file not found")
    digest = sha256_file(weights)
    if digest != meta.get("sha256"):
        raise FingerprintError(
            f"{weights}: sha256 {digest[:12]}... does not match model.json ({str(meta.get('sha256'))[:12]}...)"
        )
    model = FingerprintModel(ModelConfig.from_dict(meta["config"]))
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as e:
        raise FingerprintError(f"{weights}: does not fit its config ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    return model, meta


def store_calibration(model_dir: str | Path, model, meta: dict, calibration: dict) -> dict:
    """Save `calibration` as model.json's "calibration" through models.save_model (weights unchanged)."""
    extra = {k: v for k, v in meta.items() if k not in RESERVED}
    extra["calibration"] = calibration
    save_model(model, model_dir, extra=extra)
    return {**meta, "calibration": calibration}
