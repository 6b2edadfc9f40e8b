"""Scale alignment of predicted depth and conversion of relative disparity to depth (pure numpy functions).

Relative models (Depth Anything's default heads) predict an affine-invariant *disparity* d (larger = nearer):
the true inverse depth is ``1/z = s·d + t`` for unknown s > 0, t. These helpers fix s and t from a known depth
range, a reference depth map, or explicit values. They are also the alignment used by the metrics code.

Formulas (over the fitting pixels P: finite, inside ``mask``, and positive where a ratio/inverse needs it):
- median scaling (monodepth2): ``s = median(ref_P) / median(pred_P)``, ``t = 0``.
- scale-and-shift (MiDaS, Ranftl et al. 2020, eq. 4): ``(s, t) = argmin Σ_P (s·pred + t − ref)²``, closed form
  ``s = cov(pred, ref) / var(pred)``, ``t = mean(ref) − s·mean(pred)``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .geometry import restrict_to_mask

logger = logging.getLogger(__name__)

ALIGN_MODES = ("median", "scale_shift")
#: (near, far) mm that a relative model's disparity is mapped to when nothing else is known: the CLI, the
#: stream and the Slicer module share it (typical endoscopic working distances).
DEFAULT_DEPTH_RANGE_MM = (5.0, 120.0)
#: millimetres per unit of a metric model's output (``DepthModel.depth_unit``; the official metric models: metres)
MM_PER_UNIT = {"m": 1000.0, "mm": 1.0}


def _as_float(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _fit_pixels(pred: np.ndarray, reference: np.ndarray | None, mask: Any, positive: bool) -> np.ndarray:
    """bool mask of pixels usable for fitting."""
    if reference is not None and reference.shape != pred.shape:
        raise ValueError(f"reference shape {reference.shape} does not match pred shape {pred.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(pred)
        if reference is not None:
            ok &= np.isfinite(reference)
        if positive:
            ok &= pred > 0
            if reference is not None:
                ok &= reference > 0
    return restrict_to_mask(ok, mask, "pred")


def fit_scale_shift(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
                    mode: str = "median") -> tuple[float, float]:
    """``(scale, shift)`` such that ``scale · pred + shift ≈ reference`` (see the module formulas).

    Args:
        pred, reference: same-shape arrays in the spaces to align (depth with depth, or disparity with inverse
            depth). Non-finite pixels are ignored; ``median`` also ignores pixels ``<= 0`` in either.
        mask: optional bool array of pixels to use.
        mode: ``"median"`` (shift is 0) or ``"scale_shift"`` (least squares).

    Raises:
        ValueError: unknown mode, shape mismatch, fewer than 1 (median) / 2 (scale_shift) usable pixels, or
            constant ``pred`` for scale_shift.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"mode must be one of {ALIGN_MODES}, got {mode!r}")
    p, r = _as_float("pred", pred), _as_float("reference", reference)
    ok = _fit_pixels(p, r, mask, positive=mode == "median")
    n = int(ok.sum())
    if mode == "median":
        if n == 0:
            raise ValueError("median alignment: no pixel is finite and > 0 in both pred and reference (and mask)")
        return float(np.median(r[ok]) / np.median(p[ok])), 0.0
    if n < 2:
        raise ValueError(f"scale_shift alignment needs >= 2 finite pixels in pred and reference, got {n}")
    pv, rv = p[ok], r[ok]
    pm, rm = pv.mean(), rv.mean()
    # the normal equations on centred values, each divided by its largest magnitude: no cancellation from a
    # large common offset, and no underflow/overflow of the squares for values near 1e-170 or 1e170
    pc, rc = pv - pm, rv - rm
    p_unit, r_unit = np.abs(pc).max(), np.abs(rc).max()
    if not p_unit > 0:
        raise ValueError("scale_shift alignment: pred is constant over the fitting pixels")
    pc = pc / p_unit
    cov = np.mean(pc * (rc / r_unit)) * (r_unit / p_unit) if r_unit > 0 else 0.0
    s = float(cov / np.mean(pc * pc))
    return s, float(rm - s * pm)


def align_scale(pred: np.ndarray, reference: np.ndarray, mode: str = "median",
                mask: np.ndarray | None = None) -> np.ndarray:
    """``pred`` rescaled to ``reference``: ``s · pred + t`` with (s, t) from :func:`fit_scale_shift`; ``mode``
    third, as the public contract writes the call (``align_scale(pred, reference, "scale_shift")``).

    ``reference`` is a depth (or inverse depth) map: its pixels that are not finite or ``<= 0`` (datasets write 0
    for "no measurement") are left out of the fit in both modes, as :func:`sdt.depth_metrics` leaves them out.

    Returns float32 of ``pred``'s shape, in the unit of ``reference``; every pixel is transformed (NaN stays NaN).
    """
    if not isinstance(mode, str):
        raise TypeError(f"align_scale(pred, reference, mode, mask): mode is 'median' or 'scale_shift', got a "
                        f"{type(mode).__name__}; pass a mask as mask=")
    ref = _as_float("reference", reference)
    with np.errstate(invalid="ignore"):
        ref = np.where(ref > 0, ref, np.nan)
    s, t = fit_scale_shift(pred, ref, mask, mode)
    return (_as_float("pred", pred) * s + t).astype(np.float32)


def disparity_to_depth(disparity: np.ndarray, *, depth_range: tuple[float, float] | None = None,
                       reference: np.ndarray | None = None, mask: np.ndarray | None = None,
                       mode: str = "median", scale: float | None = None, shift: float = 0.0,
                       percentiles: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """Depth from a relative (affine-invariant) disparity, with the scale stated explicitly — exactly one of:

    - ``depth_range=(near, far)``: disparity percentile ``percentiles[0]`` (default min) ↦ ``1/far`` and
      ``percentiles[1]`` (default max) ↦ ``1/near``, linearly in inverse depth; disparity outside that band is
      clipped, so depth lies in ``[near, far]``. Unit: that of near/far.
    - ``reference=depth``: fitted on the pixels where ``reference`` is finite and ``> 0`` (and ``mask``):
      ``mode="scale_shift"``: ``1/z = s·d + t`` by least squares against ``1/reference`` (disparity space);
      ``mode="median"``: ``z = s / d`` with ``s = median(reference) / median(1/d)``. Unit: that of ``reference``.
    - ``scale=s`` (and ``shift=t``): ``1/z = s·d + t``.

    ``mask`` (bool, same shape) limits the pixels used to fit (range percentiles / reference); the output
    covers every pixel. Pixels whose depth is undefined — non-finite disparity, or ``s·d + t <= 0`` (for the
    median mode: ``d <= 0``) — are NaN in the output.

    Returns:
        float32 depth, shape of ``disparity``.
    """
    d = _as_float("disparity", disparity)
    given = [name for name, v in (("depth_range", depth_range), ("reference", reference), ("scale", scale))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"disparity_to_depth needs exactly one of depth_range, reference or scale; "
                         f"got {given or 'none'}")
    if mode not in ALIGN_MODES:
        raise ValueError(f"mode must be one of {ALIGN_MODES}, got {mode!r}")
    if depth_range is not None:
        near, far = (float(v) for v in depth_range)
        if not 0 < near < far:
            raise ValueError(f"depth_range must be (near, far) with 0 < near < far, got {depth_range!r}")
        ok = _fit_pixels(d, None, mask, positive=False)
        if not ok.any():
            raise ValueError("disparity_to_depth: no finite disparity pixel to take the range from")
        lo, hi = np.percentile(d[ok], percentiles)
        if not hi > lo:
            raise ValueError(f"disparity_to_depth: disparity is constant ({lo}) over the fitting pixels; "
                             f"a depth range cannot be mapped onto it")
        frac = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
        inv = 1.0 / far + frac * (1.0 / near - 1.0 / far)
    elif reference is not None:
        ref = _as_float("reference", reference)
        if ref.shape != d.shape:
            raise ValueError(f"reference shape {ref.shape} does not match disparity shape {d.shape}")
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_ref = np.where(ref > 0, 1.0 / ref, np.nan)
        if mode == "scale_shift":
            s, t = fit_scale_shift(d, inv_ref, mask, "scale_shift")
            inv = s * d + t
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                depth0 = np.where(d > 0, 1.0 / d, np.nan)
            s, _ = fit_scale_shift(depth0, ref, mask, "median")
            inv = d / s
            inv[~(d > 0)] = np.nan
    else:
        if not (np.isfinite(scale) and np.isfinite(shift)):
            raise ValueError(f"scale and shift must be finite, got scale={scale!r}, shift={shift!r}")
        inv = float(scale) * d + float(shift)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth = np.where(np.isfinite(d) & (inv > 0), 1.0 / inv, np.nan).astype(np.float32)
    # a non-finite disparity has no depth (s·inf + t gave 0 mm, a clip gave near/far), and an inverse depth
    # too small for float32 (1/z overflowing to inf) none either: NaN, never 0 or inf
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    n_bad = int(np.count_nonzero(~np.isfinite(depth)))
    if n_bad:
        logger.debug("disparity_to_depth: %d of %d pixels have undefined depth (NaN)", n_bad, depth.size)
    return depth


def prediction_to_mm(pred: np.ndarray, output_kind: str, unit: str,
                     depth_range_mm: tuple[float, float] = DEFAULT_DEPTH_RANGE_MM,
                     percentiles: tuple[float, float] = (2.0, 98.0), mask: np.ndarray | None = None) -> np.ndarray:
    """A model's raw output as depth in millimetres (float32, NaN where undefined).

    Args:
        pred: float ``[H, W]`` model output.
        output_kind: ``"disparity"`` (relative model) or ``"depth"`` (metric model); see ``DepthModel.output_kind``.
        unit: ``DepthModel.depth_unit`` — ``"relative"``, ``"m"`` (official metric models) or ``"mm"``.
        depth_range_mm: for relative models, the depth of the nearest / farthest tissue: the disparity
            percentiles map to it linearly in inverse depth (:func:`disparity_to_depth`); an explicit assumption.
        mask: optional bool ``[H, W]`` of the pixels that show tissue (the scope's field of view): the
            percentiles are taken there, and the depth outside is NaN.
    """
    if output_kind == "disparity":
        depth = disparity_to_depth(pred, depth_range=depth_range_mm, percentiles=percentiles, mask=mask)
    elif output_kind != "depth":
        raise ValueError(f"output_kind must be 'disparity' or 'depth', got {output_kind!r}")
    else:
        if unit not in MM_PER_UNIT:
            raise ValueError(f"a metric model's unit must be one of {sorted(MM_PER_UNIT)}, got {unit!r}")
        depth = _as_float("pred", pred) * MM_PER_UNIT[unit]
        depth = np.where(depth > 0, depth, np.nan).astype(np.float32)
    if mask is not None:
        depth[~restrict_to_mask(np.ones(depth.shape, bool), mask, "pred")] = np.nan
    return depth
