"""Tests of SurgicalDepthLib.slicer_model: the Slicer panel's Backend choice resolved, the model cache keyed by every
choice that changes the model, and the status line the panel shows (real tiny models; OpenVINO where installed)."""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_model import textured, tiny_model

import SurgicalDepthLib as sd
from SurgicalDepthLib import loading
from SurgicalDepthLib.backends import BackendChoice
from SurgicalDepthLib.slicer_model import BACKEND_CHOICES, CHOSEN, load_cached, model_status, resolve_backend

REPO = Path(__file__).resolve().parents[2]
SIZE = 70


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from SurgicalDepthLib.checkpoints import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", tiny_model(5))


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    """This machine as a CPU without AVX512-BF16/AMX (``auto`` -> PyTorch whatever is installed)."""
    monkeypatch.setattr(loading, "cpu_computes_natively", lambda precision: precision == "fp32")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This machine as a CPU with AVX512-BF16/AMX and OpenVINO installed (``auto`` -> OpenVINO bf16)."""
    from SurgicalDepthLib import backends

    monkeypatch.setattr(loading, "cpu_computes_natively", lambda precision: True)
    monkeypatch.setattr(backends, "available", lambda module: True)


def test_panel_backends_are_the_load_model_backends():
    """Bug: the panel offering a backend ``load_model`` refuses (``tensorrt``, not built in) or missing one it has
    (test_slicer_modules checks the parameter node's literals against these); the panel not starting on ``auto``."""
    assert BACKEND_CHOICES[0] == "auto" and set(BACKEND_CHOICES) == set(loading.BACKENDS)
    tree = ast.parse((REPO / "SurgicalDepth" / "SurgicalDepth.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthParameterNode")
    assert next(ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.AnnAssign)
                and s.target.id == "backend") == "auto"


def test_resolve_backend(no_bf16_cpu):
    """Bug: a named backend replaced by ``auto``'s pick, ``auto`` without its reason, or an unknown backend
    silently run as PyTorch."""
    assert resolve_backend("onnxruntime", "cpu", "fp32") == BackendChoice("onnxruntime", "fp32", CHOSEN)
    choice = resolve_backend("auto", "cpu")
    assert (choice.backend, choice.precision) == ("torch", "auto")
    assert choice.reason.startswith("auto: this CPU has no AVX512-BF16 or AMX")
    for bad in ("tensorrt", "TORCH", ""):
        with pytest.raises(ValueError, match=repr(bad)):
            resolve_backend(bad)


def test_model_status_text():
    """Bug: the panel's line naming the backend asked for rather than the one that runs (an exported .onnx runs
    with ONNX Runtime whatever the choice), or leaving out the precision, device or reason."""
    cpu = torch.device("cpu")
    compiled = SimpleNamespace(backend="openvino", precision="bf16", device=cpu)
    auto = BackendChoice("openvino", "bf16", "auto: this CPU has AVX512-BF16 or AMX and OpenVINO is installed")
    assert model_status(compiled, auto) == ("OpenVINO bf16 on CPU (auto: this CPU has AVX512-BF16 or AMX and "
                                            "OpenVINO is installed)")
    torch_model = tiny_model()  # a DepthModel: no backend attribute
    assert model_status(torch_model, BackendChoice("torch", "auto", CHOSEN)) == f"PyTorch fp32 on CPU ({CHOSEN})"
    graph = SimpleNamespace(backend="onnxruntime", precision="fp32", device=cpu)
    assert model_status(graph, BackendChoice("torch", "auto", CHOSEN)) == \
        "ONNX Runtime fp32 on CPU (an exported graph runs with its file's runtime)"


def test_cache_keys_by_backend_and_precision(bf16_cpu):
    """Bug: a cache keyed by source only, which handed the PyTorch model back after the backend (or precision) was
    changed; ``auto`` not loading with the backend and precision it picked; weights downloaded for a cached model."""
    loads, downloads, cache = [], [], {}

    def load(source, *, device, precision, backend):
        loads.append((backend, precision))
        return SimpleNamespace(backend="" if backend == "torch" else backend, device=torch.device("cpu"),
                               precision="fp32" if precision == "auto" else precision)

    first, status = load_cached(cache, "model.pth", "cpu", "auto", "torch", load=load)
    assert load_cached(cache, "model.pth", "cpu", "auto", "torch", load=load)[0] is first and len(loads) == 1
    assert status == f"PyTorch fp32 on CPU ({CHOSEN})"
    assert load_cached(cache, "model.pth", "cpu", "auto", "openvino", load=load)[0] is not first
    assert load_cached(cache, "model.pth", "cpu", "bf16", "torch", load=load)[0] is not first
    ov, status = load_cached(cache, "model.pth", "cpu", "auto", "auto", load=load)
    assert loads[-1] == ("openvino", "bf16") and status.startswith("OpenVINO bf16 on CPU (auto: this CPU has")
    assert load_cached(cache, "model.pth", "cpu", "bf16", "openvino", load=load)[0] is ov  # the same model
    assert len(loads) == 4 and len(cache) == 4
    name = next(iter(sd.WEIGHTS))
    for _ in range(2):
        load_cached(cache, name, "cpu", download=lambda: downloads.append(name), load=load)
    load_cached(cache, "model.pth", "cpu", "fp32", download=lambda: downloads.append("file"), load=load)
    assert downloads == [name]  # official weights, once: a file needs no download, a cached model none either


def test_backends_agree_through_the_cache(checkpoint):
    """What the module's self-test checks in Slicer, on the Lib side: the Backend choice reaches ``load_model``
    (each run names the runtime that computed it) and OpenVINO's output (bf16 on CPUs with AVX512-BF16/AMX: ~1e-2
    of the range) agrees with PyTorch's, its depth NaN where PyTorch's is."""
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    frame = textured(42, 56, 1)
    cache, out = {}, {}
    for backend in ("torch", "openvino"):
        model, status = load_cached(cache, str(checkpoint), "cpu", "auto", backend)
        assert status.startswith({"torch": "PyTorch", "openvino": "OpenVINO"}[backend])
        out[backend] = next(sd.depth_stream(model, [frame], input_size=SIZE))
    ref, got = out["torch"].prediction, out["openvino"].prediction
    assert np.abs(got - ref).max() <= 0.03 * (ref.max() - ref.min())
    assert np.array_equal(np.isnan(out["torch"].depth_mm), np.isnan(out["openvino"].depth_mm))
