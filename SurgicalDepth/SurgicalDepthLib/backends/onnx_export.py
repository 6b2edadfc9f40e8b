"""The project's own graph (:class:`~SurgicalDepthLib.model.DepthModel.forward`) as ONNX, with dynamic batch,
height and width.

PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) traces the model once at a
non-square example size; the sizes it reads are symbolic in the graph, and the position-embedding resampling is
traced as tensor operations (:func:`SurgicalDepthLib.encoder.interpolate_pos_embed_official`), so the one graph
keeps the official computation at every input size (H and W multiples of 14). The ``torch.export``-based exporter
(the default since PyTorch 2.9) needs the extra ``onnxscript`` package and symbolic shape constraints for the
multiple-of-14 sizes; tracing needs neither.

The graph's input and output stay float32 in every precision: an fp16 graph casts inside, so one runner feeds
every graph.
"""
from __future__ import annotations

import copy
import io
import logging
import time
import warnings

import torch
from torch import nn

from ..model import DepthModel
from ._metadata import INPUT_NAME, ONNX_PRECISIONS, OUTPUT_NAME, prefixed
from ._runtime import require

logger = logging.getLogger(__name__)

#: ONNX operator set: 17 is the first with ``LayerNormalization`` as one operator (instead of its decomposition)
OPSET = 17
#: a protobuf message (one .onnx file) holds at most 2 GiB
MAX_ONNX_BYTES = 2**31 - 2**24
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: traced example: 2 × 5×7 patches (non-square, not the 37×37 pretraining grid, batch > 1)
_EXAMPLE_SHAPE = (2, 3, 5, 7)


class _HalfGraph(nn.Module):
    """float32 in and out, the model computing in ``dtype`` (weights converted)."""

    def __init__(self, model: DepthModel, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def check_onnx_precision(precision: str) -> None:
    if precision not in ONNX_PRECISIONS:
        hint = " (bf16: use --format openvino --precision bf16)" if precision == "bf16" else ""
        raise ValueError(f"an ONNX graph is written in precision one of {ONNX_PRECISIONS}, got {precision!r}{hint}")


def onnx_graph(model: DepthModel, precision: str = "fp32") -> bytes:
    """Serialized ONNX graph of ``model.forward`` (``image [N, 3, H, W] -> depth [N, H, W]``, float32).

    Args:
        model: the model to export (left unchanged; fp16 converts a copy).
        precision: ``fp32`` (exactly the model's weights) or ``fp16`` (weights and computation).
    Raises:
        ValueError: an unsupported precision, or a graph over the 2 GiB limit of one ONNX file.
        MissingBackendError: the ``onnx`` package (which the exporter needs) is not installed.
    """
    check_onnx_precision(precision)
    require("onnx", "export")
    size = sum(p.numel() for p in model.parameters()) * (2 if precision == "fp16" else 4)
    if size > MAX_ONNX_BYTES:
        raise ValueError(f"the {model.config.encoder} weights take {size / 2**30:.1f} GiB in {precision}, over the "
                         "2 GiB limit of one ONNX file")
    graph: nn.Module = model
    if precision != "fp32":
        graph = _HalfGraph(copy.deepcopy(model).float(), _DTYPES[precision])
    device = next(model.parameters()).device
    n, c, gh, gw = _EXAMPLE_SHAPE
    p = model.config.patch_size
    example = torch.randn(n, c, gh * p, gw * p, device=device)
    buffer = io.BytesIO()
    start = time.perf_counter()
    training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # the legacy exporter is chosen on purpose (module docstring)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            # DepthModel.forward checks the channel count, a constant of the graph
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"SurgicalDepthLib\.model")
            torch.onnx.export(
                graph, (example,), buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch", 1: "height", 2: "width"}})
    finally:
        model.train(training)
    logger.debug("traced %s to ONNX (%s) in %.1f s", model.config.encoder, precision, time.perf_counter() - start)
    return buffer.getvalue()


def with_metadata(graph: bytes, meta: dict[str, str]) -> bytes:
    """``graph`` with ``meta`` in its ``metadata_props`` (keys prefixed ``surgical_depth.``) and the producer set."""
    onnx = require("onnx", "export")
    from .. import __version__

    proto = onnx.load_from_string(graph)
    onnx.helper.set_model_props(proto, prefixed(meta))
    proto.producer_name, proto.producer_version = "surgical-depth", __version__
    proto.doc_string = "Depth Anything (SurgicalDepth): image [N, 3, H, W] -> depth [N, H, W]; see metadata_props"
    return proto.SerializeToString()
