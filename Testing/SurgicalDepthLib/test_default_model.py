"""The shipped default model: registered SHA256, loads offline, and is accurate where a random model is not.

Measured when it was shipped (Testing/benchmarks/eval_default_model.py, 24 held-out colon frames): AbsRel 0.085
(median scaling) for the model vs 0.306 for a random-weight model of the same architecture. The bound below,
0.20 on two held-out frames, sits between the two.
"""
from __future__ import annotations

import hashlib

import pytest

import SurgicalDepthLib as sd
from SurgicalDepthLib.loading import DEFAULT_MODEL_SHA256, default_model_path

BOUND = 0.20


@pytest.fixture(scope="module")
def frames():
    import SurgicalDepthTrainingLib as sdt

    return sdt.render_clip("colon", n_frames=2, seed=1001, height=256, width=320)  # seed unseen in training


def _abs_rel(model, frames) -> float:
    import SurgicalDepthTrainingLib as sdt

    body = sdt.evaluate_predictions(((f["name"], model.infer_image(f["image"]), f["depth"], f["valid"])
                                     for f in frames), alignment="median", pred_kind=model.output_kind,
                                    max_depth=300.0)
    return body["metrics"]["abs_rel"]


def test_sha256_registered():
    path = default_model_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DEFAULT_MODEL_SHA256
    assert path.stat().st_size <= 30 * 2 ** 20


def test_default_model_beats_random_weights(frames):
    model = sd.load_model("default", device="cpu")  # no network: package data (SurgicalDepthLib/resources), SHA256-checked
    assert model.output_kind == "disparity" and model.config.encoder == "vitt"
    assert _abs_rel(model, frames) <= BOUND
    random_model = sd.load_model("random:surgical-depth-tiny", device="cpu")
    random_model.config = model.config  # same inference size
    assert _abs_rel(random_model, frames) > BOUND


def test_modified_default_model_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "surgical-depth-default.safetensors"
    data = bytearray(default_model_path().read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    monkeypatch.setattr("SurgicalDepthLib.loading.default_model_path", lambda: copy)
    with pytest.raises(ValueError, match="is not the registered"):
        sd.load_model("default")


def test_bfloat16_on_cpu_keeps_the_accuracy(frames):
    """``precision="bf16"`` on CPU (autocast + chunked bfloat16 attention) changes the trained model's output by
    well under 1 % and its AbsRel against the exact ground truth by under 0.005."""
    import numpy as np

    fp32 = sd.load_model("default", device="cpu", precision="fp32")
    bf16 = sd.load_model("default", device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    a, b = fp32.infer_image(frames[0]["image"]), bf16.infer_image(frames[0]["image"])
    rel = np.abs(b - a) / np.maximum(np.abs(a), 1e-6)
    assert np.median(rel) < 0.01
    assert not np.array_equal(a, b)  # it really ran in bfloat16
    assert abs(_abs_rel(bf16, frames) - _abs_rel(fp32, frames)) < 0.005


def test_emulated_half_precision_on_cpu_is_reported(monkeypatch, caplog):
    import torch

    from SurgicalDepthLib.loading import cpu_computes_natively

    assert cpu_computes_natively("fp32") is True
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # a CPU without bf16 instructions
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert cpu_computes_natively("bf16") is False
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.loading"):
        sd.load_model("random:surgical-depth-tiny", device="cpu", precision="bf16")
    assert "AVX512-BF16/AMX" in caplog.text and "slower than fp32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.loading"):
        sd.load_model("random:surgical-depth-tiny", device="cpu", precision="fp32")
    assert caplog.text == ""
