"""Detail from a second, larger read of the same frame (``detail_size`` of ``infer_image`` / ``iter_batches`` /
``sd.depth_stream``).

A network read at the size it was trained at gets a frame's near-to-far layout right; read larger, it sees smaller
structures (a polyp's rise off the wall, a fold's edge) but the layout drifts. Keeping the large-scale part of the
first read and the small-scale part of the second gives both. The idea is Miangoleh et al., "Boosting Monocular
Depth Estimation Models to High-Resolution via Content-Adaptive Multi-Resolution Merging" (CVPR 2021), who merge
low- and high-resolution estimates with a trained network; here the merge is a fixed split by spatial frequency in
log space, which leaves the first read's scale untouched (measured for the default model: model card, "Detail").
"""
from __future__ import annotations

import numbers

import cv2
import numpy as np

#: Standard deviation of the Gaussian that separates layout from detail, as a fraction of the frame's longer side
#: (0.03 of 320 px ≈ 10 px; measured on held-out synthetic frames, model card).
DETAIL_SIGMA_FRACTION = 0.03
_MAX_SIGMA_PX = 16.0  # larger low-passes run on a downscaled copy (a low-pass loses nothing there)


def check_detail_size(detail_size: int, input_size: int, name: str = "detail_size") -> int:
    """``detail_size`` checked against the first read's network size ``input_size``: an integer, and larger
    (the message starts with ``name``, the option's name); numpy integers are taken."""
    if not isinstance(detail_size, numbers.Integral) or isinstance(detail_size, bool) or detail_size <= input_size:
        raise ValueError(f"{name} must be an integer larger than the input size ({input_size}), "
                         f"got {detail_size!r}")
    return int(detail_size)


def low_pass(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 ``[H, W]`` image with standard deviation ``sigma`` px (reflected borders); for
    ``sigma`` > 16 px on a copy scaled down so that it is 16 px there, then scaled back up (bilinear)."""
    h, w = image.shape
    if sigma <= _MAX_SIGMA_PX:
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    scale = _MAX_SIGMA_PX / sigma
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), _MAX_SIGMA_PX, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def merge_detail(coarse: np.ndarray, fine: np.ndarray, sigma_fraction: float = DETAIL_SIGMA_FRACTION) -> np.ndarray:
    """Merge two reads of the same frames: the layout of ``coarse``, the detail of ``fine``.

    Args:
        coarse, fine: float32 ``[H, W]`` or ``[n, H, W]`` predictions of the same kind (disparity or depth; each
            with any scale), read at the model's size and at a larger one, both at the frame size.
        sigma_fraction: the layout/detail split, a Gaussian standard deviation as a fraction of ``max(H, W)``.
    Returns:
        float32, the shape of ``coarse``: ``fine · G(coarse / fine)`` (``G`` the Gaussian low-pass applied to the
        log of the ratio), i.e. ``log out = G(log coarse) + (log fine − G(log fine))``; ``coarse``'s scale. Where
        either read is ≤ 0 or not finite (a disparity of 0: infinitely far), ``coarse`` is kept as it is.
    """
    if coarse.shape != fine.shape:
        raise ValueError(f"coarse {coarse.shape} and fine {fine.shape} must have the same shape")
    if not sigma_fraction > 0:
        raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}")
    if coarse.ndim == 3:
        return np.stack([merge_detail(c, f, sigma_fraction) for c, f in zip(coarse, fine)]) if len(coarse) \
            else coarse.astype(np.float32)
    coarse, fine = coarse.astype(np.float32, copy=False), fine.astype(np.float32, copy=False)
    good = np.isfinite(coarse) & np.isfinite(fine) & (coarse > 0) & (fine > 0)
    if not good.any():
        return coarse.copy()
    ratio = np.zeros(coarse.shape, np.float32)  # log(coarse / fine); 0 (no correction) where a read is unusable
    ratio[good] = np.log(coarse[good] / fine[good])
    sigma = sigma_fraction * max(coarse.shape)
    smooth = low_pass(ratio, sigma)
    if not good.all():  # normalised convolution: the unusable pixels' zeros do not pull the average
        smooth /= np.maximum(low_pass(good.astype(np.float32), sigma), 1e-6)
    out = coarse.copy()
    out[good] = fine[good] * np.exp(smooth[good])
    return out
