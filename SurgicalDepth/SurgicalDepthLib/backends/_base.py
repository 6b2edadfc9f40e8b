"""Common part of the models run by another runtime: the graph's input/output contract and the inference API of
:class:`~SurgicalDepthLib.model.DepthModel` (:class:`~SurgicalDepthLib.model.FrameInference`: the same official
preprocessing, batching and output resize), so that ``sd.depth_stream`` and every front end use them unchanged."""
from __future__ import annotations

import numpy as np
import torch

from ..configs import ModelConfig
from ..model import FrameInference, resize_prediction


class CompiledDepthModel(FrameInference):
    """A Depth Anything graph run by ``backend`` on the CPU.

    Attributes:
        config: the architecture record (from the graph's metadata or the exported model).
        source: what was loaded: the exported ``.onnx`` / ``.xml`` file, or the weights compiled in memory.
        exported_from: for an exported file, the weights it was exported from (its metadata); else None.
        precision: ``fp32|fp16|bf16``, the precision the runtime computes in.
        device: ``torch.device("cpu")`` (where predictions are resized and returned).
        backend: the runtime's name.
    """

    backend = ""

    def __init__(self, config: ModelConfig, *, source: str, precision: str, exported_from: str | None = None):
        self.config = config
        self.source = source
        self.exported_from = exported_from
        self.precision = precision
        self.device = torch.device("cpu")

    def _run(self, x: np.ndarray) -> np.ndarray:
        """float32 C-contiguous ``[N, 3, h, w]`` → float32 ``[N, h, w]`` (the graph's output)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """:meth:`DepthModel.forward`: normalised ``[B, 3, h, w]`` (h and w multiples of 14) → ``[B, h, w]``."""
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        B, C, H, W = array.shape if array.ndim == 4 else (0, 0, 0, 0)
        if array.ndim != 4 or C != 3:
            raise ValueError(f"expected [B, 3, H, W] input, got shape {tuple(array.shape)}")
        p = self.config.patch_size
        if H % p or W % p:
            raise ValueError(f"input height and width must be multiples of {p}, got {H}x{W}")
        if not (H and W):  # the runtimes fail inside their kernels, each with its own exception
            raise ValueError(f"input height and width must be positive, got {H}x{W}")
        if B == 0:  # as DepthModel.forward; OpenVINO crashes the process (segfault) on an empty batch
            return torch.zeros((0, H, W), dtype=torch.float32)
        return torch.from_numpy(self._run(np.ascontiguousarray(array, dtype=np.float32)))

    __call__ = forward

    def eval(self) -> "CompiledDepthModel":
        """No-op (inference only), for callers written for ``torch.nn.Module``."""
        return self

    def _launch(self, batch: torch.Tensor, out_hw: tuple[int, int], input_size: int | None = None) -> torch.Tensor:
        return resize_prediction(self.forward(batch), out_hw, self.config.version)

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}({c.encoder} {c.version} {c.head}, {self.precision}, "
                f"source={self.source!r})")
