"""Depth error metrics and the one evaluation protocol (pure numpy).

Metric definitions: monodepth2 ``evaluate_depth.py`` ``compute_errors`` (Godard et al. 2019), after Eigen et al.
2014: over the N valid pixels,

- ``abs_rel = mean(|gt - pred| / gt)``, ``sq_rel = mean((gt - pred)² / gt)``
- ``rmse = sqrt(mean((gt - pred)²))``, ``rmse_log = sqrt(mean((log gt - log pred)²))``
- ``a1, a2, a3 = mean(max(gt/pred, pred/gt) < 1.25^k)`` for k = 1, 2, 3 (δ < 1.25, 1.25², 1.25³).

Protocol of :func:`depth_metrics`, in monodepth2's order: range mask, per-image alignment (median scaling =
the paper's Eq. 1 ``pred · median(gt) / median(pred)``), clamp to the range, errors. Alignment math is the one in
:mod:`SurgicalDepthLib.alignment` (not repeated here).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from SurgicalDepthLib.alignment import fit_scale_shift
from SurgicalDepthLib.depth_kind import OutputKind
from SurgicalDepthLib.geometry import restrict_to_mask

logger = logging.getLogger(__name__)

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
ALIGNMENTS = ("median", "scale_shift", "none")
PRED_KINDS = tuple(k.value for k in OutputKind)  # ("disparity", "depth")


class NoValidPixelError(ValueError):
    """An image has no pixel to evaluate: its ground truth is invalid (0, non-finite), outside the evaluation
    range or outside the mask everywhere. One image cannot be measured; an evaluation over many skips it
    (monodepth2-style protocols leave such frames out) and counts it."""


def compute_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """monodepth2 ``compute_errors`` on matching 1-D arrays of valid depths (both > 0, same unit).

    Args:
        gt, pred: float ``[N]`` (any shape, flattened), N >= 1, all values finite and > 0.
    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}`` as Python floats.
    """
    gt = np.asarray(gt, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} does not match pred shape {pred.shape}")
    if gt.size == 0:
        raise ValueError("compute_errors: no pixels (gt and pred are empty)")
    if not (np.all(np.isfinite(gt)) and np.all(gt > 0) and np.all(np.isfinite(pred)) and np.all(pred > 0)):
        raise ValueError("compute_errors: gt and pred must be finite and > 0 (mask invalid pixels first)")
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    log_diff = np.log(gt) - np.log(pred)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
        "rmse_log": float(np.sqrt(np.mean(log_diff ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25 ** 2)),
        "a3": float(np.mean(thresh < 1.25 ** 3)),
    }


def _usable(pred: np.ndarray, pred_must_be_positive: bool) -> np.ndarray:
    """bool: predictions that can be aligned (finite, and > 0 where the protocol needs it)."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(pred)
        return ok & (pred > 0) if pred_must_be_positive else ok


def _valid_mask(gt: np.ndarray, mask: Any, min_depth: float | None, max_depth: float | None) -> np.ndarray:
    """bool: pixels to evaluate — ground truth finite, > 0, inside the range and the mask (whatever the
    prediction there: a broken prediction is scored, not skipped)."""
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > 0)
        if min_depth is not None:
            valid &= gt > min_depth
        if max_depth is not None:
            valid &= gt < max_depth
    return restrict_to_mask(valid, mask, "gt")


def _fit_inverse_depth(x: np.ndarray, inv_gt: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """``(s, t)``: least squares ``s·x + t ≈ 1/gt`` over ``valid`` (x: float [H, W] disparity or 1/depth, finite
    or NaN where the prediction is no depth). A constant ``x`` over the finite pixels (a flat map, e.g. a dead
    network's zeros, or a single valid pixel) is a prediction too: every least-squares solution then predicts
    ``mean(1/gt)`` there, which is scored (``s = 0``), as median scaling scores a flat map, instead of failing the
    whole evaluation."""
    used = valid & np.isfinite(x)
    xv = x[used]
    if xv.size and np.all(xv == xv[0]):
        return 0.0, float(np.mean(inv_gt[used]))
    return fit_scale_shift(x, inv_gt, valid, mode="scale_shift")


def align_prediction(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, *,
                     alignment: str = "median", pred_kind: str = "depth", min_depth: float | None = None,
                     max_depth: float | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Steps 1-3 of the protocol (range mask, alignment fitted on the valid pixels, clamp): see
    :func:`depth_metrics` for the arguments.

    Returns:
        ``(depth float64 [H, W] in gt's unit — every pixel transformed, NaN where the prediction cannot be
        converted —, valid bool [H, W] — the pixels evaluated —, scale, shift)``.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if pred_kind not in PRED_KINDS:
        raise ValueError(f"pred_kind must be one of {PRED_KINDS}, got {pred_kind!r}")
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} does not match gt shape {gt.shape}")
    if min_depth is not None and max_depth is not None and not min_depth < max_depth:
        raise ValueError(f"need min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
    # A disparity <= 0 means "infinitely far" (a ReLU head's zeros): it is evaluated as the depth cap (monodepth2
    # clamps predictions to the cap), so a model cannot hide failures behind zeros, and one such pixel does not
    # stop an evaluation. Without a cap (relative ground truth: EndoSLAM, a folder) the cap is the image's farthest
    # evaluated ground truth, the bound the scale_shift fit already uses.
    positive = not (pred_kind == "disparity" and alignment == "scale_shift")
    evaluated = _valid_mask(gt, mask, min_depth, max_depth)
    if not evaluated.any():
        raise NoValidPixelError(f"depth_metrics: no valid pixel (gt finite, > 0, inside ({min_depth}, {max_depth}), "
                         f"inside mask) among {gt.size}")
    cap = float(max_depth) if max_depth is not None else float(gt[evaluated].max())
    usable = _usable(pred, positive)
    broken = evaluated & ~usable
    valid = evaluated & usable  # the alignment is fitted on these
    if not valid.any():  # every prediction broken (e.g. an all-NaN map): all scored at the cap, not an error
        logger.warning("depth_metrics: every one of the %d evaluated predictions is non-finite or <= 0; all are "
                       "scored at the depth cap %g", int(evaluated.sum()), cap)
        return np.full(gt.shape, cap), evaluated, 1.0, 0.0
    scale, shift = 1.0, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        if alignment == "scale_shift":
            x = pred if pred_kind == "disparity" else np.where(pred > 0, 1.0 / pred, np.nan)
            scale, shift = _fit_inverse_depth(x, 1.0 / gt, valid)
            # the fitted inverse depth can reach 0 or below (beyond infinity) where the fit extrapolates: it is
            # clamped to the cap, or without one to the image's farthest ground truth (not to ~1e8, which would
            # let one such pixel decide an image's AbsRel)
            depth = 1.0 / np.maximum(scale * x + shift, 1.0 / cap)
        else:
            depth = np.where(pred > 0, 1.0 / pred, np.inf) if pred_kind == "disparity" else pred.copy()
            if alignment == "median":
                if np.isfinite(depth[valid]).any():
                    scale, _ = fit_scale_shift(depth, gt, valid, mode="median")
                # else: every valid pixel is predicted infinitely far; nothing to scale, the cap scores them
                depth = depth * scale
    if min_depth is not None or max_depth is not None:
        depth = np.clip(depth, min_depth, max_depth)
    depth[broken] = cap  # broken predictions score as the cap (monodepth2 clamps to it), never skipped
    return depth, evaluated, float(scale), float(shift)


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, *,
                  alignment: str = "median", pred_kind: str = "depth", min_depth: float | None = None,
                  max_depth: float | None = None) -> dict[str, float]:
    """Errors of one predicted map against ground truth, after per-image alignment.

    Args:
        pred: float ``[H, W]``: depth (``pred_kind="depth"``) or a relative model's raw disparity
            (``pred_kind="disparity"``: larger = nearer, affine-invariant).
        gt: float ``[H, W]`` ground-truth depth (mm where metric); non-finite or <= 0 = invalid.
        mask: optional bool ``[H, W]``, True = evaluate.
        alignment:
            ``"median"``: disparity is first inverted (``1/d``; ``d <= 0`` invalid), then
            ``pred · median(gt) / median(pred)`` over the valid pixels (monodepth2; the paper's Eq. 1);
            ``"scale_shift"``: least squares in disparity space, ``s·x + t ≈ 1/gt`` with ``x`` = the disparity
            (or ``1/pred`` for depth), then inverted; the fitted inverse depth is clamped to
            ``>= 1/max_depth`` (without a ``max_depth``: ``>= 1/`` the image's largest valid ``gt``) so every
            pixel gets a positive, bounded depth;
            ``"none"``: metric prediction used as is (a disparity is only inverted).
        min_depth, max_depth: evaluation range in gt's unit: pixels with gt outside ``(min_depth, max_depth)``
            are ignored, and aligned predictions are clamped to ``[min_depth, max_depth]`` (monodepth2).
    Returns:
        the :data:`METRIC_KEYS` plus ``scale``, ``shift`` (the fitted alignment; shift is in inverse-depth units
        for scale_shift, 0 otherwise), ``n_valid`` (pixels evaluated) and ``n_broken`` (evaluated pixels whose
        prediction is non-finite or <= 0). Every pixel with valid ground truth is evaluated: the alignment is
        fitted on the usable predictions, and a broken one (non-finite, a depth <= 0, a disparity <= 0 =
        infinitely far) is scored as ``max_depth``, as monodepth2 clamps predictions to the cap; without a
        ``max_depth`` as the image's farthest evaluated ground truth.
    Raises:
        ValueError: unknown ``alignment``/``pred_kind``, shape mismatch (both shapes quoted) or bad range;
            :class:`NoValidPixelError` (a ``ValueError``) when no pixel has valid ground truth.
    """
    depth, valid, scale, shift = align_prediction(pred, gt, mask, alignment=alignment, pred_kind=pred_kind,
                                                  min_depth=min_depth, max_depth=max_depth)
    errors: dict[str, float] = compute_errors(np.asarray(gt, dtype=np.float64)[valid], depth[valid])
    errors.update(scale=scale, shift=shift, n_valid=int(valid.sum()),
                  n_broken=count_broken(pred, valid, pred_kind, alignment))
    return errors


def count_broken(pred: np.ndarray, evaluated: np.ndarray, pred_kind: str = "depth", alignment: str = "median") -> int:
    """Evaluated pixels whose raw prediction is non-finite or <= 0 (scored at the depth cap by the protocol) —
    except a disparity <= 0 under ``scale_shift``, which is fitted and scored like any other (the shift moves it)."""
    fitted_any_sign = pred_kind == "disparity" and alignment == "scale_shift"
    return int((evaluated & ~_usable(np.asarray(pred, dtype=np.float64), not fitted_any_sign)).sum())


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each :data:`METRIC_KEYS` entry over images (monodepth2 averages per-image errors)."""
    if not per_image:
        raise ValueError("mean_metrics: no per-image metrics to average")
    return {k: float(np.mean([m[k] for m in per_image])) for k in METRIC_KEYS}
