"""The model a Slicer run uses: the panel's Backend choice resolved (``auto``:
:func:`~SurgicalDepthLib.backends.choose_backend`, which says why), loaded models cached by every choice that
changes them, and the status line the panel shows. Slicer-free: the Surgical Depth logic keeps the cache (a dict)
and calls :func:`load_cached`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: the panel's Backend choices: ``auto``, then ``loading.BACKENDS`` (the parameter node's ``Choice`` literals, checked
#: by pytest; TensorRT is not built into this version)
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
#: the reason shown for a backend given by name (``auto`` gives its own)
CHOSEN = "chosen, not auto"


def resolve_backend(backend: str = "auto", device: Any = "auto", precision: str = "auto") -> Any:
    """The :class:`~SurgicalDepthLib.backends.BackendChoice` a run loads its model with: for ``auto``,
    ``choose_backend`` on the resolved ``device`` (its reason prefixed ``"auto: "``); any other backend as given.

    Raises ValueError naming the value for an unknown backend (``tensorrt`` too: not built into this version)."""
    from .backends import BackendChoice, choose_backend
    from .loading import resolve_device

    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if backend != "auto":
        return BackendChoice(backend, precision, CHOSEN)
    choice = choose_backend(resolve_device(device), precision)
    return BackendChoice(choice.backend, choice.precision, f"auto: {choice.reason}")


def model_status(model: Any, choice: Any) -> str:
    """The panel's line for a loaded ``model``: the runtime, precision and device it computes with, and why, e.g.
    ``"OpenVINO bf16 on CPU (auto: this CPU has AVX512-BF16 or AMX and OpenVINO is installed)"``.

    ``choice``: the :func:`resolve_backend` it was loaded with. An exported ``.onnx`` / ``.xml`` model runs with its
    file's runtime whatever the choice (``load_model``), and the line says so."""
    from .backends import BACKEND_NAMES

    backend = getattr(model, "backend", "") or "torch"  # DepthModel: PyTorch; CompiledDepthModel names its runtime
    reason = choice.reason if backend == choice.backend else "an exported graph runs with its file's runtime"
    return f"{BACKEND_NAMES[backend]} {model.precision} on {model.device.type.upper()} ({reason})"


def model_key(source: Any, device: Any, choice: Any) -> tuple[str, str, str, str]:
    """What makes two loads the same model: the source, the resolved device, and the chosen backend and precision
    (``auto`` and the backend it picks share one entry)."""
    from .loading import resolve_device

    return str(source), str(resolve_device(device)), choice.backend, choice.precision


def load_cached(cache: dict, source: Any = "default", device: Any = "auto", precision: str = "auto",
                backend: str = "torch", *, download: Callable[[], Any] | None = None,
                load: Callable[..., Any] | None = None) -> tuple[Any, str]:
    """The model for these choices and its :func:`model_status` line: from ``cache`` (a dict the caller keeps, keyed
    by :func:`model_key`), or loaded by ``load`` (default ``sd.load_model``) with the backend and precision of
    :func:`resolve_backend` and stored there.

    ``download()`` runs first when ``source`` names official weights (``sd.WEIGHTS``) and is not in the cache (the
    module asks the user, then downloads; a model in the cache needs no file).
    """
    from .weights import WEIGHTS

    choice = resolve_backend(backend, device, precision)
    key = model_key(source, device, choice)
    if key not in cache:
        if download is not None and str(source) in WEIGHTS:
            download()
        if load is None:
            from .loading import load_model as load
        cache[key] = load(source, device=device, precision=choice.precision, backend=choice.backend)
    return cache[key], model_status(cache[key], choice)
