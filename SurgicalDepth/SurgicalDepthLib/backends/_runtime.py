"""Optional runtimes: imported on first use; a missing one is a one-line error naming the pip extra."""
from __future__ import annotations

import importlib
from types import ModuleType

#: importable module -> the ``surgical-depth`` pip extra that installs it
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino"}


class MissingBackendError(ImportError, ValueError):
    """An optional runtime is not installed. A ``ValueError`` too, so command lines print it as one line."""


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (``onnx``, ``onnxruntime`` or ``openvino``) for ``purpose``, or raise
    :class:`MissingBackendError` naming the extra to install (default: the one that provides ``module``; the
    ``openvino`` extra also brings ``onnx``, which the exporter needs)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(
            f"{purpose} needs the '{module}' package, which is not installed ({exc}): "
            f"pip install 'surgical-depth[{extra or EXTRAS[module]}]'") from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
