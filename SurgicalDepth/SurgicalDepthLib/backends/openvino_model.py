"""The exported graph run by OpenVINO on the CPU, compiled per input shape; OpenVINO IR files (``.xml`` + ``.bin``)
written with the model's metadata in their runtime info."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_paths
from ..configs import ModelConfig
from ..recent import RecentlyUsed
from ._base import CompiledDepthModel
from ._metadata import PREFIX, read_metadata
from ._runtime import require

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
#: this project's precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT`` values, and back
_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_NAMES = {v: k for k, v in _HINTS.items()}
#: rt_info section of the metadata in IR files written here
RT_SECTION = "surgical_depth"


class OpenVINOModel(CompiledDepthModel):
    """An OpenVINO model of the exported graph, compiled for the CPU once per input shape ``[N, 3, h, w]``.

    Each shape gets its own static-shape compilation (measured ~5 % faster than one dynamic-shape compilation for
    DA-V2-S at 518×518 on a 2-core EPYC, for ~0.4 s of compiling); the ``cache_size`` most recent stay compiled.
    ``precision`` sets OpenVINO's inference precision hint; after the first compilation it is what OpenVINO
    reports it computes in (OpenVINO may choose another where the CPU lacks the instructions: this is logged).
    """

    backend = "openvino"

    def __init__(self, ov_model: Any, config: ModelConfig, *, source: str, precision: str, cache_size: int = 4,
                 exported_from: str | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {PRECISIONS} for backend='openvino'")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        super().__init__(config, source=source, precision=precision, exported_from=exported_from)
        self._ov = require("openvino", "backend='openvino'")
        self._core = self._ov.Core()
        self._model = ov_model
        self._compiled: RecentlyUsed[tuple[int, ...], Any] = RecentlyUsed(cache_size)  # shape -> infer request
        self._lock = threading.Lock()  # one infer request per shape, used by one caller at a time

    @property
    def cache_size(self) -> int:
        """Input shapes kept compiled (beyond it, the least recently used goes at the next compilation)."""
        return self._compiled.capacity

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"cache_size must be >= 1, got {value}")
        self._compiled.capacity = int(value)

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """Input shapes compiled and kept, least recently used first."""
        return self._compiled.keys()

    def _request(self, shape: tuple[int, ...]) -> Any:
        return self._compiled.get(shape, lambda: self._compile(shape))

    def _compile(self, shape: tuple[int, ...]) -> Any:
        """An infer request of the model reshaped to ``shape``, compiled at ``self.precision``."""
        model = self._model.clone()
        model.reshape(list(shape))
        compiled = self._core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _HINTS[self.precision],
                                                           "PERFORMANCE_HINT": "LATENCY"})
        actual = _NAMES.get(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), self.precision)
        if actual != self.precision:
            logger.warning("OpenVINO computes in %s on this CPU, not the requested %s", actual, self.precision)
            self.precision = actual
        logger.debug("OpenVINO: compiled %s for input %s", self.precision, shape)
        return compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            request = self._request(tuple(x.shape))
            return np.array(request.infer({0: x})[0], dtype=np.float32)

    @classmethod
    def from_onnx(cls, graph: bytes, config: ModelConfig, *, source: str, precision: str) -> "OpenVINOModel":
        """From a serialized ONNX graph (:func:`~SurgicalDepthLib.backends.onnx_export.onnx_graph`)."""
        return cls(ov_from_onnx(graph), config, source=source, precision=precision)

    @classmethod
    def from_file(cls, path: str | os.PathLike, precision: str = "auto") -> "OpenVINOModel":
        """Load an OpenVINO IR ``.xml`` (its ``.bin`` beside it) or an ``.onnx`` file written by ``surgical-depth
        export``; config and preprocessing from the file's metadata.

        Args:
            precision: ``auto`` (the precision recorded at export) or ``fp32|fp16|bf16``.
        Raises:
            FileNotFoundError: no such file, or an ``.xml`` without its ``.bin``. ValueError: not a model OpenVINO
            reads, or no SurgicalDepth metadata.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
        ov_model = read_ov_model(path, "backend='openvino'")
        config, weights, stored = read_metadata(lambda name: read_rt_info(ov_model, name), str(path))
        return cls(ov_model, config, source=str(path), precision=stored if precision == "auto" else precision,
                   exported_from=weights)


def read_ov_model(path: Path, needed_by: str) -> Any:
    """The ``openvino.Model`` of an IR ``.xml`` (its ``.bin`` beside it) or an ``.onnx`` file.

    The file is first checked by the frontend of its suffix: on a file it does not recognise, ``read_model`` tries
    every frontend in turn (TensorFlow's logs its own parse errors to stderr) before failing.

    Args:
        needed_by: what needs OpenVINO, for the error if it is not installed.
    Raises:
        ValueError: ``path`` is not a model OpenVINO reads (the message names it and gives OpenVINO's reason).
    """
    ov = require("openvino", needed_by)
    framework, kind = ("onnx", "ONNX") if path.suffix.lower() == ".onnx" else ("ir", "OpenVINO IR")
    from openvino.frontend import FrontEndManager

    if not FrontEndManager().load_by_framework(framework).supported(str(path)):
        raise ValueError(f"{path}: not a readable {kind} model (OpenVINO's {framework} reader does not recognise it)")
    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as exc:  # OpenVINO's lines ending in ':' locate its source ("Exception from src/...cpp:84:")
        _reraise_interrupt(exc)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.rstrip().endswith(":")]
        raise ValueError(f"{path}: not a readable {kind} model: {lines[0] if lines else exc}") from exc


def ov_from_onnx(graph: bytes) -> Any:
    """An ``openvino.Model`` of a serialized ONNX graph (read from memory: no temporary file)."""
    ov = require("openvino", "OpenVINO")
    try:
        return ov.convert_model(io.BytesIO(graph))
    except RuntimeError as exc:
        _reraise_interrupt(exc)
        raise


def _reraise_interrupt(exc: RuntimeError) -> None:
    """OpenVINO's C++ code catches a Ctrl-C / SIGTERM raised in its Python callbacks (``KeyboardInterrupt``) and
    throws it on as a RuntimeError naming it: raise it as the interrupt it was (exit 130, not a traceback), with
    the interrupt's own message (the CLI's ``SIGTERM``) from its line ``KeyboardInterrupt: <message>``; the lines
    after it are a Python stack (``At: ...``), not a message."""
    if "KeyboardInterrupt" not in str(exc):
        return
    line = next(line for line in str(exc).splitlines() if "KeyboardInterrupt" in line)
    message = line.split("KeyboardInterrupt", 1)[1].lstrip(":").strip()
    raise KeyboardInterrupt("" if message == "<EMPTY MESSAGE>" else message) from None


def read_rt_info(ov_model: Any, name: str) -> str | None:
    """Metadata ``name`` of an OpenVINO model: from an IR written here, or an ONNX file's ``metadata_props``."""
    for path in ([RT_SECTION, name], ["framework", PREFIX + name]):
        if ov_model.has_rt_info(path):
            return str(ov_model.get_rt_info(path).astype(str))
    return None


def save_openvino(ov_model: Any, path: str | os.PathLike, meta: dict[str, str], precision: str) -> Path:
    """Write ``ov_model`` as OpenVINO IR ``path`` (``.xml``, any case) and its ``.bin``, atomically as a pair
    (:func:`~SurgicalDepthLib.atomic_io.atomic_paths`: the ``.bin`` renamed first, so an ``.xml`` never names
    weights that are not there yet; a failure leaves the earlier pair, or nothing, under those names).

    Args:
        meta: stored in the runtime info under ``surgical_depth/<name>``.
        precision: recorded as the default inference precision; ``fp16``/``bf16`` also store the weights in
            fp16 (half the file; their rounding, 2⁻¹¹ relative, is below bf16's 2⁻⁸).
    """
    ov = require("openvino", "export --format openvino")
    path = Path(path)
    for name, value in meta.items():
        ov_model.set_rt_info(value, [RT_SECTION, name])
    with atomic_paths([path.with_suffix(".bin"), path], [".bin", ".xml"]) as (tmp_bin, tmp_xml):  # save_model: .xml
        written_bin = tmp_xml.with_suffix(".bin")  # save_model writes the weights beside the .xml it is given
        try:
            ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=precision != "fp32")
            os.replace(written_bin, tmp_bin)
        finally:
            with contextlib.suppress(FileNotFoundError):
                written_bin.unlink()
    return path
