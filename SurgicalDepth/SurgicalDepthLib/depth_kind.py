"""The one disparity/depth convention of the project.

A model's raw output is either ``disparity`` (relative models: larger = nearer, affine-invariant, no unit) or
``depth`` (metric models: z along the optical axis in the model's unit). Invalid values are NaN, never 0: a 0
would be drawn as the nearest (disparity) or an impossible (depth) value.
"""
from __future__ import annotations

from enum import Enum

import numpy as np


class OutputKind(str, Enum):
    """What a depth map holds; compares equal to its string value (``OutputKind.DEPTH == "depth"``)."""

    DISPARITY = "disparity"
    DEPTH = "depth"

    @classmethod
    def parse(cls, value: str) -> "OutputKind":
        """``"disparity"``/``"depth"`` (or an ``OutputKind``) → ``OutputKind``; anything else is a ValueError."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"output kind must be one of {[k.value for k in cls]}, got {value!r}") from None


def invert(values: np.ndarray) -> np.ndarray:
    """``1 / values`` where finite and > 0, NaN elsewhere (depth ↔ disparity). float32, shape of ``values``."""
    v = np.asarray(values, dtype=np.float32)
    ok = np.isfinite(v) & (v > 0)
    out = np.full(v.shape, np.nan, np.float32)
    np.divide(np.float32(1.0), v, out=out, where=ok)
    return out


def as_depth_map(depth: np.ndarray, name: str = "depth") -> np.ndarray:
    """float32 ``[H, W]`` copy (or view) of a real-valued 2D numpy array ``depth`` (a map to write); TypeError or
    ValueError naming ``name`` otherwise."""
    if not isinstance(depth, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(depth).__name__}")
    if depth.ndim != 2:
        raise ValueError(f"{name} must be a 2D map [H, W], got shape {depth.shape}")
    if depth.size == 0:
        raise ValueError(f"{name} is empty (shape {depth.shape})")
    if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
        raise TypeError(f"{name} must be a real-valued array, got dtype {depth.dtype}")
    return depth.astype(np.float32, copy=False)
