"""Deployment backends: the project's own graph exported to ONNX / OpenVINO IR, and run by ONNX Runtime or
OpenVINO with the inference API of :class:`~SurgicalDepthLib.model.DepthModel` (``infer_image``, ``infer_batch``,
``iter_batches``; usable by ``sd.depth_stream``). PyTorch stays the reference; each runtime is an optional extra
(``pip install 'surgical-depth[onnx]'``, ``'surgical-depth[openvino]'``) imported only when used.

- :func:`export_model` writes a graph with dynamic batch, height and width and its metadata (config, input size,
  mean/std, output kind, depth unit, source, precision), so the file loads alone;
- :func:`load_backend` (called by ``sd.load_model(..., backend=...)``) loads an exported file, or exports a PyTorch
  model in memory and compiles it;
- :func:`choose_backend` is ``backend="auto"``: OpenVINO bf16 on CPUs that compute bf16 natively, PyTorch elsewhere,
  with the reason (:func:`decide_backend`, the pure decision).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ._base import CompiledDepthModel
from ._choice import BACKEND_NAMES, BackendChoice, decide_backend
from ._metadata import ONNX_PRECISIONS, graph_metadata
from ._runtime import EXTRAS, MissingBackendError, available, require

logger = logging.getLogger(__name__)

#: inference backends of ``load_model`` (``"auto"``: :func:`choose_backend`)
BACKENDS = ("torch", "onnxruntime", "openvino")
#: export formats -> file suffix
FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
#: suffixes of exported graphs that load directly -> the backend they load with by default
GRAPH_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino"}

__all__ = ["BACKENDS", "BACKEND_NAMES", "FORMATS", "GRAPH_SUFFIXES", "EXTRAS", "BackendChoice", "CompiledDepthModel",
           "MissingBackendError", "choose_backend", "decide_backend", "export_model", "load_backend"]


def choose_backend(device: torch.device, precision: str = "auto") -> BackendChoice:
    """``backend="auto"`` on this machine: :func:`decide_backend` given the device, the CPU's bf16 instructions and
    whether OpenVINO (and ``onnx``, its exporter) is installed (imported only when the answer depends on it).

    Args:
        device: the resolved device (:func:`~SurgicalDepthLib.loading.resolve_device`).
        precision: the requested precision (``auto`` or a name).
    """
    from ..loading import cpu_computes_natively

    cpu_bf16 = cpu_computes_natively("bf16") if device.type == "cpu" else None
    wanted = device.type == "cpu" and bool(cpu_bf16) and precision in ("auto", "bf16")
    missing = [module for module in ("openvino", "onnx") if wanted and not available(module)]
    return decide_backend(device.type, precision, cpu_bf16=cpu_bf16, openvino_missing=missing)


def _check_cpu(backend: str, device: Any) -> None:
    if str(device) not in ("auto", "cpu"):
        raise ValueError(f"backend={backend!r} runs on the CPU in this version; got device={str(device)!r} "
                         "(use backend='torch' for GPUs)")


def _runtime_precision(backend: str, precision: str) -> str:
    """``precision`` for a PyTorch model compiled by ``backend``: ``auto`` -> fp32 on the CPU (the contract of
    ``load_model``: OpenVINO in bf16 is asked for by name, or chosen with its reason by ``backend="auto"``)."""
    from ..loading import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    return "fp32" if precision == "auto" else precision


def _no_hints(hints: dict[str, Any], where: Any, what: str = "a model object (its config states the architecture)"
              ) -> None:
    """Hints describe weight files; a model object (``config``) or an exported graph (its metadata) states its
    architecture: refuse them rather than ignore them (``where``: the call or file, ``what``: what it is)."""
    if hints:
        raise ValueError(f"{where}: hints {sorted(hints)} apply to weight files, not to {what}")


_GRAPH = "an exported graph (its metadata states the architecture)"


def _input_it_replaces(out: Path, source: Path | None) -> str:
    """What writing ``out`` would replace of the input ``source``: ``"the input"`` (the weight file itself), ``"a
    file in the input folder ..."`` (a Hugging Face folder's ``pytorch_model.bin`` is the weights of an OpenVINO
    ``pytorch_model.xml`` written beside it), or ``""`` (nothing)."""
    if source is None or not source.exists() or not out.exists():
        return ""
    out, source = out.resolve(), source.resolve()
    if out == source:
        return "the input"
    return f"a file in the input folder {source}" if source.is_dir() and source in out.parents else ""


def load_backend(source: str | os.PathLike | torch.nn.Module, backend: str, *, device: Any = "auto",
                 precision: str = "auto", **hints: Any) -> CompiledDepthModel:
    """A model run by ``backend`` (``onnxruntime`` or ``openvino``) on the CPU.

    Args:
        source: an exported ``.onnx`` / OpenVINO ``.xml`` file (loads alone), a ``DepthModel``, or any other
            ``load_model`` source (loaded with PyTorch, exported in memory and compiled).
        precision: ``auto|fp32|fp16|bf16``: ONNX Runtime runs the graph's precision (fp32 or fp16); OpenVINO
            compiles with it as its inference precision.
        hints: ``load_model`` hints, for PyTorch sources only.
    Raises:
        ValueError: an unknown backend, a device other than the CPU, an unsupported precision, hints for an
            exported file or a model object. MissingBackendError: the runtime is not installed.
    """
    from ..model import DepthModel
    from .onnx_export import onnx_graph

    if backend not in BACKENDS[1:]:
        raise ValueError(f"load_backend: backend={backend!r} is not one of {BACKENDS[1:]}")
    _check_cpu(backend, device)
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in GRAPH_SUFFIXES:
        path = Path(source).expanduser()
        _no_hints(hints, path, _GRAPH)
        if backend == "onnxruntime":
            if path.suffix.lower() != ".onnx":
                raise ValueError(f"backend='onnxruntime' reads .onnx files, not {path.name} (use backend='openvino')")
            from .onnxruntime_model import OnnxRuntimeModel

            return OnnxRuntimeModel.from_file(path, precision)
        from .openvino_model import OpenVINOModel

        return OpenVINOModel.from_file(path, precision)
    extra = EXTRAS[backend]
    require(backend, f"backend={backend!r}", extra)  # before the (slow) export
    require("onnx", f"backend={backend!r} (to export the model)", extra)
    precision = _runtime_precision(backend, precision)
    if backend == "onnxruntime" and precision not in ONNX_PRECISIONS:  # the export's advice names its flags
        hint = " (bf16: use backend='openvino')" if precision == "bf16" else ""
        raise ValueError(f"backend='onnxruntime' runs graphs in {' or '.join(ONNX_PRECISIONS)}, got precision="
                         f"{precision!r}{hint}")
    if isinstance(source, DepthModel):
        _no_hints(hints, "load_backend")
        model = source
    else:
        from ..loading import load_model

        model = load_model(source, device="cpu", precision="fp32", **hints)
    start = time.perf_counter()
    graph = onnx_graph(model, precision if backend == "onnxruntime" else "fp32")
    if backend == "onnxruntime":
        from .onnxruntime_model import OnnxRuntimeModel

        compiled: CompiledDepthModel = OnnxRuntimeModel.from_graph(graph, model.config, source=model.source,
                                                                   precision=precision)
    else:
        from .openvino_model import OpenVINOModel

        compiled = OpenVINOModel.from_onnx(graph, model.config, source=model.source, precision=precision)
    logger.info("%s: exported and loaded for %s (%s) in %.1f s", model.source, backend, precision,
             time.perf_counter() - start)
    return compiled


def export_model(source: str | os.PathLike | torch.nn.Module, path: str | os.PathLike, *, format: str,
                 precision: str = "fp32", overwrite: bool = False, **hints: Any) -> Path:
    """Write ``source`` as a deployable graph with dynamic batch, height and width and its metadata.

    Args:
        source: a ``DepthModel`` or any ``load_model`` source (weights), or an exported ``.onnx`` file for
            ``format="openvino"``.
        path: the output file: ``.onnx`` (format ``onnx``), or ``.xml`` (format ``openvino``; the weights go to the
            ``.bin`` beside it).
        format: ``onnx`` or ``openvino``.
        precision: ``fp32`` (exact); ``fp16`` (ONNX: weights and computation in fp16; OpenVINO: fp16 weights and
            inference precision); ``bf16`` (OpenVINO only: fp16 weights, bf16 inference precision). Largest
            difference to PyTorch fp32, over its output range: fp32 ~1e-5, fp16 ~2e-3, bf16 ~3e-2.
        overwrite: replace an existing output file (never an input).
    Returns:
        ``path``. Written atomically: a failure leaves nothing under the output names.
    Raises:
        ValueError: unknown format or precision, wrong suffix, hints with a model object. FileExistsError: the
            output exists (without ``overwrite``), or is the input or a file in the input folder (even with
            ``overwrite``). MissingBackendError: ``onnx`` / ``openvino`` not installed.
    """
    from .onnx_export import check_onnx_precision, onnx_graph, with_metadata
    from .openvino_model import PRECISIONS as OV_PRECISIONS

    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {tuple(FORMATS)}")
    path = Path(path).expanduser()
    if path.suffix.lower() != FORMATS[format]:
        raise ValueError(f"an {format} graph is written to a {FORMATS[format]} file, got {path.name!r}")
    if format == "onnx":
        check_onnx_precision(precision)
    elif precision not in OV_PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {OV_PRECISIONS} for format 'openvino'")
    outputs = [path] + ([path.with_suffix(".bin")] if format == "openvino" else [])
    source_path = None if isinstance(source, torch.nn.Module) else Path(source).expanduser()
    if source_path is None:
        _no_hints(hints, "export_model")
    for out in outputs:
        which = _input_it_replaces(out, source_path)
        if which:
            raise FileExistsError(f"{out} is {which}; outputs never overwrite inputs")
        if out.exists() and not out.is_file():  # first: --overwrite would not help
            raise FileExistsError(f"{out} exists and is not a file: it cannot be replaced by the graph")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    extra = "onnx" if format == "onnx" else "openvino"
    if format == "openvino":
        require("openvino", "export --format openvino", extra)
    require("onnx", f"export --format {format}", extra)
    if source_path is not None and source_path.suffix.lower() in GRAPH_SUFFIXES:
        if format != "openvino" or source_path.suffix.lower() != ".onnx":
            raise ValueError(f"{source_path.name} is already an exported graph; export from the weights (only an "
                             ".onnx file converts further, to --format openvino)")
        _no_hints(hints, source_path, _GRAPH)
        from ._metadata import read_metadata
        from .openvino_model import read_ov_model, read_rt_info, save_openvino

        if not source_path.is_file():
            raise FileNotFoundError(f"ONNX file {source_path} does not exist")
        ov_model = read_ov_model(source_path, "export --format openvino")
        config, origin, stored = read_metadata(lambda name: read_rt_info(ov_model, name), str(source_path))
        if stored != "fp32" and precision == "fp32":  # its weights and casts are fp16: converting keeps them
            raise ValueError(f"{source_path.name} is an {stored} graph: converted, it computes in {stored} (pass "
                             f"--precision {stored}), or export fp32 from the weights")
        return save_openvino(ov_model, path, graph_metadata(config, origin, precision), precision)
    if isinstance(source, torch.nn.Module):
        model = source
    else:
        from ..loading import load_model

        model = load_model(source, device="cpu", precision="fp32", **hints)
    meta = graph_metadata(model.config, model.source, precision)
    if format == "onnx":
        from ..atomic_io import atomic_path

        graph = with_metadata(onnx_graph(model, precision), meta)
        with atomic_path(path) as tmp:
            tmp.write_bytes(graph)
        return path
    from .openvino_model import ov_from_onnx, save_openvino

    return save_openvino(ov_from_onnx(onnx_graph(model, "fp32")), path, meta, precision)
