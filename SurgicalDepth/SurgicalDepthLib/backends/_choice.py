"""``backend="auto"`` as a pure decision: the facts about the machine go in (device, CPU instructions, installed
packages), the backend, its precision and a reason a user can act on come out."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: how each backend is named to users (logs, the Slicer panel's status line)
BACKEND_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
_GPU_NAMES = {"cuda": "CUDA", "mps": "Apple MPS"}


@dataclass(frozen=True)
class BackendChoice:
    """What ``backend="auto"`` picks, and why (``reason``: shown to the user, without the backend's name)."""

    backend: str
    precision: str
    reason: str


def decide_backend(device_type: str, precision: str = "auto", *, cpu_bf16: bool | None,
                   openvino_missing: Sequence[str] = ()) -> BackendChoice:
    """``backend="auto"``: OpenVINO in bf16 on a CPU with AVX512-BF16 or AMX (measured 2.4× PyTorch fp32 for DA-V2-S
    on a 2-core EPYC, Testing/benchmarks/RESULTS.md), PyTorch everywhere else: on a GPU, on other CPUs, where
    OpenVINO is not installed, or when a precision other than bf16 is asked for (OpenVINO fp32 measured slower than
    PyTorch fp32).

    Args:
        device_type: the resolved device's type: ``cpu``, ``cuda`` or ``mps``.
        precision: the requested precision (``auto`` or a name); kept unless OpenVINO is chosen (then ``bf16``).
        cpu_bf16: whether the CPU has AVX512-BF16 or AMX instructions; None where that cannot be told.
        openvino_missing: the packages the OpenVINO route needs that are not installed (``openvino``, and ``onnx``,
            which exports the model for it).
    """
    if device_type != "cpu":
        gpu = _GPU_NAMES.get(device_type, device_type.upper())
        return BackendChoice("torch", precision, f"the model runs on the {gpu} GPU, where PyTorch is the backend")
    if cpu_bf16 is None:
        return BackendChoice("torch", precision, "this PyTorch cannot tell whether the CPU has AVX512-BF16 or AMX")
    if not cpu_bf16:
        return BackendChoice("torch", precision, "this CPU has no AVX512-BF16 or AMX, which OpenVINO bf16 needs to "
                                                 "be faster")
    if precision not in ("auto", "bf16"):
        return BackendChoice("torch", precision, f"precision {precision} was asked for; OpenVINO is faster only in "
                                                 "bf16")
    if openvino_missing:
        missing = " and ".join(openvino_missing) + (" is" if len(openvino_missing) == 1 else " are")
        return BackendChoice("torch", precision, f"this CPU has AVX512-BF16 or AMX, but {missing} not installed "
                                                 "(pip install 'surgical-depth[openvino]')")
    return BackendChoice("openvino", "bf16", "this CPU has AVX512-BF16 or AMX and OpenVINO is installed")
