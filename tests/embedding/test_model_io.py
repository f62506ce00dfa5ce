"""Model files: local torchvision weights (conv1 summed to one channel), save/load with a sha256 check."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from test_models import SMALL, tiny

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.model_io import build_model, load_model, save_model, store_calibration
from fingerprint.embedding.models import ModelConfig


def test_weights_file_is_loaded_with_conv1_summed(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = build_model(ModelConfig(**SMALL, shared=False), weights=str(path))
    for bb in m.backbones.values():
        torch.testing.assert_close(bb.conv1.weight, ref.conv1.weight.sum(dim=1, keepdim=True))
        torch.testing.assert_close(bb.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_weights_file_missing_or_unfit(tmp_path):
    with pytest.raises(FingerprintError, match="weights file not found") as e:
        build_model(ModelConfig(**SMALL), weights=str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(e.value) and "\n" not in str(e.value)
    r34 = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(FingerprintError, match="do not fit resnet18.*unexpected keys"):
        build_model(ModelConfig(**SMALL), weights=str(r34))
    wide = torchvision.models.resnet18(weights=None).state_dict()
    wide["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save({"state_dict": wide}, tmp_path / "wide.pth")
    with pytest.raises(FingerprintError, match=r"1 shape mismatches \(e.g. layer1.0.conv1.weight"):
        build_model(ModelConfig(**SMALL), weights=str(tmp_path / "wide.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FingerprintError, match="cannot read weights"):
        build_model(ModelConfig(**SMALL), weights=str(junk))


def test_save_and_load_roundtrip_with_hash(tmp_path):
    m = tiny(pool="attention", embed_dim=8)
    save_model(m, tmp_path / "m", extra={"calibration": {"threshold": 0.4, "rule": "max_f1"}})
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["config"]["pool"] == "attention" and len(meta["sha256"]) == 64
    loaded, meta2 = load_model(tmp_path / "m")
    assert meta2["calibration"]["threshold"] == 0.4 and not loaded.training
    x, s = torch.rand(2, 1, 32, 32), torch.rand(2, 2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, s)["logit"], m(x, s)["logit"])
    with pytest.raises(ValueError, match="reserved"):
        save_model(m, tmp_path / "m2", extra={"sha256": "x"})
    # a changed weights file is refused
    w = tmp_path / "m" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(FingerprintError, match="does not match model.json"):
        load_model(tmp_path / "m")
    with pytest.raises(FingerprintError, match="not found"):
        load_model(tmp_path / "elsewhere")


def test_store_calibration_keeps_weights_and_other_fields(tmp_path):
    model = tiny()
    save_model(model, tmp_path / "m", extra={"train": {"note": "kept"}})
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    _, meta = load_model(tmp_path / "m")
    store_calibration(tmp_path / "m", model, meta, {"threshold": 0.25, "rule": "max_f1"})
    _, after = load_model(tmp_path / "m")
    assert after["calibration"]["threshold"] == 0.25 and after["train"] == {"note": "kept"}
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
