"""The exported ONNX graph run by ONNX Runtime (CPU execution provider)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..configs import ModelConfig
from ._base import CompiledDepthModel
from ._metadata import INPUT_NAME, ONNX_PRECISIONS, OUTPUT_NAME, PREFIX, read_metadata
from ._runtime import require


def _session(graph: bytes | str | os.PathLike) -> Any:
    """An ONNX Runtime CPU session of a serialized graph or an ``.onnx`` file."""
    ort = require("onnxruntime", "backend='onnxruntime'")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: shape-inference notes about the dynamic sizes are expected
    return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), sess_options=options,
                                providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(CompiledDepthModel):
    """An ONNX graph (``image [N, 3, H, W] -> depth [N, H, W]``) in one ONNX Runtime session.

    The session takes every input shape: ONNX Runtime plans memory per shape itself, so nothing is compiled per
    shape here. ``precision`` is the graph's (an fp16 graph computes in fp16; its input and output are float32).
    """

    backend = "onnxruntime"

    def __init__(self, session: Any, config: ModelConfig, *, source: str, precision: str,
                 exported_from: str | None = None):
        super().__init__(config, source=source, precision=precision, exported_from=exported_from)
        self._session = session

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    @classmethod
    def from_graph(cls, graph: bytes, config: ModelConfig, *, source: str, precision: str) -> "OnnxRuntimeModel":
        """From a serialized ONNX graph (:func:`~SurgicalDepthLib.backends.onnx_export.onnx_graph`)."""
        return cls(_session(graph), config, source=source, precision=precision)

    @classmethod
    def from_file(cls, path: str | os.PathLike, precision: str = "auto") -> "OnnxRuntimeModel":
        """Load an ``.onnx`` file written by ``surgical-depth export`` (config and preprocessing from its
        ``metadata_props``).

        Args:
            precision: ``auto`` or the file's own precision (ONNX Runtime runs the graph as it is).
        Raises:
            FileNotFoundError: no such file. ValueError: not an ONNX file ONNX Runtime reads, no SurgicalDepth
            metadata, or another precision asked.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        try:
            session = _session(path)
        except Exception as exc:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) have no common base but this
            message = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ValueError(f"{path}: not a readable ONNX model: {message}") from exc
        meta = session.get_modelmeta().custom_metadata_map
        config, weights, stored = read_metadata(lambda name: meta.get(PREFIX + name), str(path))
        if precision not in ("auto", *ONNX_PRECISIONS, "bf16"):
            raise ValueError(f"precision={precision!r} is not one of {('auto', *ONNX_PRECISIONS, 'bf16')}")
        if precision not in ("auto", stored):
            again = f"export it again with --precision {precision}, or " if precision in ONNX_PRECISIONS else ""
            raise ValueError(f"{path} is an {stored} graph and ONNX Runtime runs it as it is, so precision="
                             f"{precision!r} cannot be given ({again}use backend='openvino', which sets the "
                             "precision when compiling)")
        return cls(session, config, source=str(path), precision=stored, exported_from=weights)
