"""Training losses for depth fine-tuning (torch, batched, masked).

All losses take ``pred`` and ``target`` float ``[B, H, W]`` and ``valid`` bool ``[B, H, W]``, compute one value
per image over its valid pixels and return the mean over the images that have at least one (two for
``ssi_loss`` and ``affine_invariant_loss``) valid pixel. A batch without any such image is an error (it would give a
NaN gradient).

Targets for a relative model (disparity output, ``output_kind == "disparity"``) are ground-truth *inverse depth*
``1 / depth``; see each loss for how the unknown scale is handled.
"""
from __future__ import annotations

import torch

_EPS = 1e-6


def _check(pred: torch.Tensor, target: torch.Tensor,
           valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pred, target, valid)`` with ``valid`` narrowed to finite targets and both maps set to 0 outside it.

    Zeroing first is what makes pixels outside ``valid`` irrelevant: a NaN/inf there would otherwise reach the
    value through ``0 * x`` sums (SSI's normal equations) or the backward pass through ``torch.where`` (the masked
    branch gets a zero gradient, but ``0 * NaN`` upstream is NaN), poisoning the whole image's gradient.
    """
    if pred.ndim != 3:
        raise ValueError(f"pred must be [B, H, W], got shape {tuple(pred.shape)}")
    if target.shape != pred.shape or valid.shape != pred.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and valid "
                         f"{tuple(valid.shape)} must have the same shape")
    valid = valid.to(torch.bool) & torch.isfinite(target)
    pred = torch.where(valid, pred, torch.zeros_like(pred))
    return pred, torch.where(valid, target, torch.zeros_like(target)), valid


def _per_image_mean(values: torch.Tensor, keep: torch.Tensor, name: str) -> torch.Tensor:
    if not bool(keep.any()):
        raise ValueError(f"{name}: no image in the batch has enough valid pixels")
    return values[keep].mean()


def masked_median(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image median of ``x`` over ``valid``: ``[B, H, W]`` -> ``[B]`` (NaN for images without valid pixels).

    The lower median (torch convention); gradients flow to the median element.
    """
    flat = torch.where(valid, x, torch.full_like(x, float("nan"))).flatten(1)
    return torch.nanmedian(flat, dim=1).values


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``x`` over ``valid``: ``[B, H, W]`` -> ``[B]`` (0 for images without valid pixels)."""
    total = torch.where(valid, x, torch.zeros_like(x)).flatten(1).sum(1)
    return total / valid.flatten(1).sum(1).clamp_min(1)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
            normalize: bool = True) -> torch.Tensor:
    """L1 loss on ground truth (the paper's fine-tuning loss), per image: ``mean_valid |p̂ - ĝ|``.

    Depth normalisation for a relative model: the model predicts disparity of unknown scale, and the target is
    the ground-truth inverse depth ``1/depth``. With ``normalize=True`` (default) both are divided by their own
    per-image mean over the valid pixels, ``p̂ = p / mean(p)``, ``ĝ = g / mean(g)``. This makes L1 meaningful
    across scenes whose depth ranges differ (mm vs cm, close-up vs overview) and keeps the pretrained model's
    output scale (no loss is spent on re-learning a global constant), while the loss still penalises every
    relative-depth error; the result is scale- but not shift-invariant, so ``1 / prediction`` is depth up to one
    factor — what median scaling assumes. The mean, not the median, is the normaliser because a ReLU head can
    output 0 on more than half of the pixels (the far lumen): a median of 0 makes every other pixel's error
    explode and training collapses to an all-zero output with no gradient (observed when training from scratch).
    ``normalize=False`` is plain L1 in the given units (metric heads: depth in the head's unit).

    Args:
        pred: float ``[B, H, W]`` model output. target: float ``[B, H, W]``. valid: bool ``[B, H, W]``.
    Returns:
        scalar tensor.
    """
    pred, target, valid = _check(pred, target, valid)
    if normalize:
        mp = masked_mean(pred, valid).clamp_min(_EPS)[:, None, None]
        mt = masked_mean(target, valid).clamp_min(_EPS)[:, None, None]
        pred, target = pred / mp, target / mt
    err = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred)).flatten(1).sum(1)
    n = valid.flatten(1).sum(1)
    return _per_image_mean(err / n.clamp_min(1), n > 0, "l1_loss")


def silog_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
               lambd: float = 0.5) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014), the variant of Depth-Anything-V2 ``metric_depth/util/loss.py``:
    with ``e = log(target) - log(pred)`` over the valid pixels, ``sqrt(mean(e²) - λ·mean(e)²)``, λ = 0.5.

    Computed per image, then averaged (DA-V2 pools the whole batch). Because ``log(1/x) = -log(x)``, the value
    is the same for depth and for inverse depth, so it serves both heads (relative: pred = disparity, target =
    1/depth). ``pred`` is clamped to ``>= 1e-6`` before the log (a ReLU head outputs zeros).
    """
    pred, target, valid = _check(pred, target, valid)
    valid = valid & (target > 0)
    e = torch.log(target.clamp_min(_EPS)) - torch.log(pred.clamp_min(_EPS))
    e = torch.where(valid, e, torch.zeros_like(e)).flatten(1)
    n = valid.flatten(1).sum(1)
    nn_ = n.clamp_min(1)
    mean = e.sum(1) / nn_
    var = (e ** 2).sum(1) / nn_ - lambd * mean ** 2
    return _per_image_mean(torch.sqrt(var.clamp_min(1e-12)), n > 0, "silog_loss")


def fit_scale_shift_batched(pred: torch.Tensor, target: torch.Tensor,
                            valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image least squares ``(s, t) = argmin Σ_valid (s·pred + t - target)²`` (MiDaS, Ranftl et al. 2020,
    eq. 4; the solution of MiDaS ``compute_scale_and_shift``). Returns ``s, t`` of shape ``[B]``; images whose
    system is singular (a prediction constant over its valid pixels) get ``s = t = 0``. Pixels outside ``valid``
    are ignored.

    Solved on values centred on their valid means (``s = Σ p̃ g̃ / Σ p̃²``, ``t = ḡ - s p̄``): the same solution as
    the raw 2×2 normal equations, whose ``n Σp² - (Σp)²`` cancels catastrophically in float32 once the
    prediction's offset dwarfs its spread (a disparity of 20 ± 0.01 gave a scale off by 3x).
    """
    m = valid.to(torch.bool)
    pred = torch.where(m, pred, torch.zeros_like(pred))
    target = torch.where(m, target, torch.zeros_like(target))
    mp, mt = masked_mean(pred, m)[:, None, None], masked_mean(target, m)[:, None, None]
    pc = torch.where(m, pred - mp, torch.zeros_like(pred)).flatten(1)
    tc = torch.where(m, target - mt, torch.zeros_like(target)).flatten(1)
    n = m.flatten(1).sum(1).to(pred.dtype)
    det = n * (pc * pc).sum(1)  # = a00·a11 - a01² of the raw normal equations (singularity threshold unchanged)
    ok = det.abs() > 1e-12
    s = torch.where(ok, (pc * tc).sum(1) / torch.where(ok, (pc * pc).sum(1), torch.ones_like(det)),
                    torch.zeros_like(det))
    t = torch.where(ok, mt[:, 0, 0] - s * mp[:, 0, 0], torch.zeros_like(det))
    return s, t


def _gradient_loss(residual: torch.Tensor, valid: torch.Tensor, scales: int) -> torch.Tensor:
    """MiDaS gradient-matching term (eq. 11): ``Σ_k mean_valid(|∂x R_k| + |∂y R_k|)``, residuals subsampled 2^k."""
    total = residual.new_zeros(residual.shape[0])
    for k in range(scales):
        step = 2 ** k
        r, m = residual[:, ::step, ::step], valid[:, ::step, ::step].to(residual.dtype)
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs() * m[:, :, 1:] * m[:, :, :-1]
        gy = (r[:, 1:] - r[:, :-1]).abs() * m[:, 1:] * m[:, :-1]
        total = total + (gx.flatten(1).sum(1) + gy.flatten(1).sum(1)) / m.flatten(1).sum(1).clamp_min(1)
    return total


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
             gradient_weight: float = 0.0, scales: int = 4) -> torch.Tensor:
    """Scale-and-shift-invariant loss (MiDaS, Ranftl et al. 2020): align ``pred`` to ``target`` per image by
    least squares (:func:`fit_scale_shift_batched`), then ``mean_valid |s·pred + t - target|``; plus optionally
    ``gradient_weight · Σ_k mean(|∇R_k|)`` (multi-scale gradient matching of the residual ``R``, eq. 11).

    For a relative model ``pred`` is the disparity and ``target`` the inverse depth (disparity space, as MiDaS).
    Gradients flow through ``s`` and ``t``.
    """
    pred, target, valid = _check(pred, target, valid)
    s, t = fit_scale_shift_batched(pred, target, valid)
    residual = s[:, None, None] * pred + t[:, None, None] - target
    n = valid.flatten(1).sum(1)
    loss = torch.where(valid, residual.abs(), torch.zeros_like(residual)).flatten(1).sum(1) / n.clamp_min(1)
    if gradient_weight:
        loss = loss + gradient_weight * _gradient_loss(residual, valid, scales)
    return _per_image_mean(loss, n > 1, "ssi_loss")


def _median_scale(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``((x - t) / s, s)`` per image over ``valid``: ``t = median(x)``, ``s = mean|x - t|`` (Depth Anything eq. 2);
    ``s`` is clamped to 1e-6 in the division and images without valid pixels get ``t = 0`` (never NaN)."""
    t = torch.nan_to_num(masked_median(x, valid))[:, None, None]
    s = masked_mean((x - t).abs(), valid)
    return (x - t) / s.clamp_min(_EPS)[:, None, None], s


def affine_invariant_per_image(pred: torch.Tensor, target: torch.Tensor,
                               valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth Anything's affine-invariant loss (Yang et al. 2024, eq. 1-2) of each image, over its ``valid`` pixels
    only: ``mean_valid |d̂ - d̂*|`` with ``d̂ = (d - median(d)) / mean_valid|d - median(d)|`` for the prediction
    and the target alike (median and scale computed inside ``valid``).

    Args:
        pred, target: float ``[B, H, W]`` (relative models: disparity). valid: bool ``[B, H, W]``.
    Returns:
        ``(loss [B], ok [B] bool)``: ``ok`` marks images with >= 2 valid pixels and a non-constant target there;
        ``loss`` is 0 (finite, no gradient) for the others.
    """
    pred, target, valid = _check(pred, target, valid)
    p, _ = _median_scale(pred, valid)
    g, scale = _median_scale(target, valid)
    ok = (valid.flatten(1).sum(1) > 1) & (scale > _EPS)
    loss = masked_mean((p - g).abs(), valid)
    return torch.where(ok, loss, torch.zeros_like(loss)), ok


def affine_invariant_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over images of :func:`affine_invariant_per_image` (images without a usable target left out)."""
    loss, ok = affine_invariant_per_image(pred, target, valid)
    return _per_image_mean(loss, ok, "affine_invariant_loss")


#: name -> loss function, keyed by :data:`.loss_names.LOSS_NAMES` in its order (the test suite checks that they agree)
LOSSES = {"l1": l1_loss, "silog": silog_loss, "ssi": ssi_loss}
