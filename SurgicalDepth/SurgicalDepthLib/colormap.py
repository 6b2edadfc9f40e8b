"""Colour maps for depth and disparity: red = near, blue = far (turbo map on normalised inverse depth).

Inverse depth (disparity) is what relative models predict and spreads near structures — where surgical detail is —
over more colours than depth would. Turbo (Mikhailov 2019, as implemented by OpenCV ``COLORMAP_TURBO``) runs
blue → cyan → green → yellow → red, so mapping normalised disparity 0 → 1 gives far = blue, near = red.
"""
from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from .depth_kind import OutputKind, invert

KINDS = tuple(k.value for k in OutputKind)
DEFAULT_PERCENTILES = (2.0, 98.0)
# Turbo's two ends are nearly black (48,18,59 and 122,4,3); using indices 20..230 keeps far clearly blue
# (66,75,181), near clearly red (195,37,3) and both distinct from the black of invalid pixels.
_TURBO_FAR, _TURBO_NEAR = 20, 230


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def to_disparity(values: np.ndarray, kind: str = "depth",
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse depth and validity.

    Args:
        values: float ``[H, W]`` depth (any unit) or disparity.
        kind: ``"depth"`` or ``"disparity"``.
        mask: optional bool ``[H, W]``, True = valid.
    Returns:
        ``(disparity float32 [H, W], valid bool [H, W])``; valid excludes non-finite values, depth ≤ 0 and
        ``mask == False``. Invalid pixels hold 0.
    """
    _check_kind(kind)
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"depth_or_disparity must be a 2D map [H, W], got shape {values.shape}")
    disparity = invert(values) if kind == "depth" else values.astype(np.float32)  # a copy either way
    valid = np.isfinite(disparity)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != values.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {values.shape} like the map")
        valid &= mask.astype(bool)
    disparity[~valid] = 0.0
    return disparity, valid


def robust_range(maps: np.ndarray | Iterable[np.ndarray], kind: str = "depth",
                 percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                 masks: Iterable[np.ndarray | None] | None = None) -> tuple[float, float]:
    """Shared ``(vmin, vmax)`` in the maps' own unit over one or several maps (for a row of figures or a video).

    The percentiles are taken on disparity; for ``kind="depth"`` the result is converted back to depth, so
    ``vmin`` is the near limit (red) and ``vmax`` the far limit (blue) in both cases' own units.
    """
    _check_kind(kind)
    arrays = [maps] if isinstance(maps, np.ndarray) and maps.ndim == 2 else list(maps)
    mask_list = list(masks) if masks is not None else [None] * len(arrays)
    samples = [d[v] for d, v in (to_disparity(a, kind, m) for a, m in zip(arrays, mask_list))]
    values = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    if values.size == 0:
        raise ValueError("no valid (finite, positive depth) pixels to compute a colour range from")
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if kind == "depth":
        return (1.0 / hi if hi > 0 else float("inf"), 1.0 / lo if lo > 0 else float("inf"))
    return lo, hi


def colorize(depth_or_disparity: np.ndarray, kind: str = "depth", vmin: float | None = None,
             vmax: float | None = None, mask: np.ndarray | None = None,
             percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Colour-map a depth or disparity map: red = near, blue = far; invalid pixels black.

    Args:
        depth_or_disparity: float ``[H, W]``.
        kind: ``"depth"`` (larger = farther; ≤ 0 or non-finite = invalid) or ``"disparity"`` (larger = nearer).
        vmin, vmax: limits in the input's own unit (for depth ``vmin`` = nearest shown as full red,
            ``vmax`` = farthest shown as full blue; for disparity the other way round). Default: the 2nd/98th
            percentiles of the valid disparity (see :func:`robust_range` for one range shared by several maps).
        mask: bool ``[H, W]``, True = valid; False pixels are drawn black.
    Returns:
        uint8 RGB ``[H, W, 3]``.
    Raises:
        ValueError: ``vmin > vmax`` or a NaN limit (the whole map would come out in the middle colour).
    """
    values = np.asarray(depth_or_disparity)  # a list or a CPU tensor: robust_range would iterate over its rows
    disparity, valid = to_disparity(values, kind, mask)
    if vmin is None or vmax is None:
        if valid.any():
            auto = robust_range(values, kind, percentiles, [mask])
        else:
            auto = (1.0, 1.0)
        vmin = auto[0] if vmin is None else vmin
        vmax = auto[1] if vmax is None else vmax
    if not vmin <= vmax:  # False for NaN too
        raise ValueError(f"colour limits must satisfy vmin <= vmax, got vmin={vmin}, vmax={vmax}")
    if kind == "depth":
        if vmin <= 0 or vmax <= 0:
            raise ValueError(f"depth limits must be positive, got vmin={vmin}, vmax={vmax}")
        lo, hi = 1.0 / vmax, 1.0 / vmin
    else:
        lo, hi = vmin, vmax
    span = hi - lo
    t = (disparity - lo) / span if span > 0 else np.full(disparity.shape, 0.5, np.float32)
    index = np.round(_TURBO_FAR + np.clip(t, 0.0, 1.0) * (_TURBO_NEAR - _TURBO_FAR)).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(index, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb
