"""Tests of SurgicalDepthLib.loading: the device and precision that ``load_model`` resolves once (CUDA mocked: these
are pure decisions, checked without a GPU)."""
from __future__ import annotations

import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib.loading import auto_precision, resolve_device, resolve_precision


def _fake_gpus(monkeypatch, capabilities: dict[int, tuple[int, int]], current: int = 0) -> None:
    """CUDA GPUs of the given compute capabilities (index -> (major, minor)); every one "supports" bf16 the way
    ``torch.cuda.is_bf16_supported()`` says, emulation included."""
    def capability(device=None):
        index = None if device is None else torch.device(device).index  # None: the current device
        return capabilities[current if index is None else index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_auto_precision_is_bf16_only_where_the_chosen_gpu_computes_it_natively(monkeypatch):
    """Catches: ``precision="auto"`` chose bf16 wherever ``torch.cuda.is_bf16_supported()`` is True, which includes
    bf16 emulated on pre-Ampere GPUs (T4, V100, RTX 20xx: slower and less precise than fp16), and asked the current
    CUDA device instead of the chosen ``cuda:N`` (an Ampere cuda:0 decided for a Turing cuda:1)."""
    _fake_gpus(monkeypatch, {0: (8, 6), 1: (7, 5)})
    assert resolve_precision("auto", torch.device("cuda:1")) == "fp16"  # Turing beside an Ampere current device
    assert resolve_precision("auto", torch.device("cuda:0")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"  # "cuda": the current device
    assert resolve_precision("bf16", torch.device("cuda:1")) == "bf16"  # asked for: as given
    _fake_gpus(monkeypatch, {0: (7, 0)})  # V100 alone
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    # the pure rule: bf16 from compute capability 8 (Ampere) on, fp16 below and on MPS, fp32 on the CPU
    assert [auto_precision("cuda", (m, 0)) for m in (6, 7, 8, 9, 10)] == ["fp16", "fp16", "bf16", "bf16", "bf16"]
    assert (auto_precision("mps"), auto_precision("cpu")) == ("fp16", "fp32")
    with pytest.raises(ValueError, match="precision='fp8' is not one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_a_torch_device_is_checked_like_its_string(monkeypatch):
    """Catches: ``device=torch.device("cuda")`` (an object, not the string) skipped the availability check, so a
    machine without CUDA failed later, inside PyTorch, instead of with the error that names the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in (torch.device("cuda"), torch.device("cuda", 1)):
        with pytest.raises(ValueError, match="requested but CUDA is not available"):
            resolve_device(device)
    with pytest.raises(ValueError, match="requested but CUDA is not available"):
        sd.load_model("random:surgical-depth-tiny", device=torch.device("cuda"))
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device='meta' is not one of"):
        resolve_device(torch.device("meta"))
