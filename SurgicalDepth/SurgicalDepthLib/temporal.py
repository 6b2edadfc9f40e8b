"""Temporal stabilisation of per-frame relative depth (disparity) predicted independently for each video frame.

A relative model's output is defined only up to an unknown scale and shift per frame (affine-invariant disparity,
MiDaS/Depth Anything), and that affine transform jumps from frame to frame: the video "flickers". The
:class:`TemporalAligner` keeps a running reference disparity map (an exponential moving average of the aligned
frames), fits each new frame to it with a robust scale+shift (trimmed least squares, as in MiDaS' scale-and-shift
alignment, Ranftl et al. 2020, with outlier trimming for moving or occluded regions), and returns the aligned frame.

Why the EMA runs over the reference map and not over the fitted scale/shift: the per-frame scale/shift *is* the
flicker to remove, so smoothing it would put the flicker back; smoothing the reference instead averages away the
per-pixel noise that a single previous frame would pass on to the next fit. The reference stays in the first frame's
affine frame; the *output* frame follows the input's own, slowly: the output is ``L⁻¹(C(d))``, ``C`` the fit to the
reference and ``L`` a running mean of the fits (log scale and shift, time constant ``follow`` frames). Per-frame
flicker is zero-mean around ``L`` and is removed; a real, lasting change of the input's scale (a metric model's
depth as the camera approaches, or any model whose output keeps a consistent scale) shows in ``C`` as a trend that
``L`` takes up, so the output follows it with a lag of about ``follow`` frames instead of staying at the first
frame's level for good (a metric model's 60 → 22 mm approach came out at 60 mm throughout). ``follow=0`` (the
default) keeps the first frame's frame: exactly no flicker, and no change of scale either, which is right for a
relative model (its per-frame scale is arbitrary: a real approach cannot be told from scale flicker) and why
``depth_stream`` follows only a metric model's. A blank frame (no range, or fewer
valid pixels than ``min_valid`` of the frame) is not aligned (NaN) and leaves every state as it was: fitted, it
would pull the reference to a flat map, and a few pixels taken as a new scene would restart the reference from them.

Why the reference's interquartile range is pulled back towards the first frame's (:data:`SPREAD_PULL` of the
log ratio per frame): a least-squares fit of a noisy frame to the reference shrinks the scale (regression dilution:
``cov / var`` with the frame's noise in ``var``), and each aligned frame feeds the reference, so the shrinkage
compounded: a static scene with 2 % noise lost 98 % of its contrast in 1000 frames and came out flat. A slow pull
bounds that loss (about 7 % there) and still lets the spread follow a scene whose structure changes. A frame that
does not match the reference (a scene cut: correlation below ``min_correlation``, or a scale <= 0) is not fitted to
it: it is mapped to the first frame's median and interquartile range and starts a new reference (a fit to an
unrelated map shrank the contrast for good).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from .alignment import fit_scale_shift

logger = logging.getLogger(__name__)

#: Fraction of the log ratio (first frame's / reference's interquartile range) the reference's spread is pulled back
#: per frame: a time constant of about 20 frames, against the fits' regression dilution (module docstring).
SPREAD_PULL = 0.05
#: Per-frame values (``scales``, ``shifts``, ``cuts``) kept: the latest this many, so a live stream's state does
#: not grow with its length.
HISTORY = 1000


def _subsample(values: np.ndarray, max_samples: int) -> np.ndarray:
    """A regular subsample of at most ``max_samples`` of the 1-d ``values``."""
    return values[:: int(np.ceil(values.size / max_samples))] if values.size > max_samples else values


def robust_scale_shift(source: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None, *,
                    trim: float = 0.2, iterations: int = 3, max_samples: int = 40000) -> tuple[float, float]:
    """Robust ``(s, b)`` minimising ``sum (s * source + b - target)^2`` over the inlier pixels.

    Trimmed least squares: fit on all valid pixels, then ``iterations - 1`` times refit on the ``1 - trim``
    fraction with the smallest absolute residuals. At most ``max_samples`` pixels (a regular subsample) are used.

    Args:
        source, target: float ``[H, W]`` (or any equal shapes).
        valid: bool, same shape; True = usable pixel (non-finite pixels are always excluded).
    Returns:
        ``(scale, shift)`` as floats; ``(1, 0)`` when fewer than 2 distinct valid samples exist.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape:
        raise ValueError(f"source has shape {source.shape}, target {target.shape}; expected equal shapes")
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    ok = np.isfinite(source) & np.isfinite(target)
    if valid is not None:
        if valid.shape != source.shape:
            raise ValueError(f"valid has shape {valid.shape}, expected {source.shape}")
        ok &= valid
    idx = _subsample(np.flatnonzero(ok), max_samples)
    x, y = source.ravel()[idx], target.ravel()[idx]
    if x.size < 2 or np.ptp(x) == 0:
        return 1.0, 0.0
    keep = np.ones(x.size, bool)
    scale, shift = 1.0, 0.0
    for it in range(iterations):
        try:  # plain least squares on the current inliers
            scale, shift = fit_scale_shift(x[keep], y[keep], mode="scale_shift")
        except ValueError:  # the inliers became degenerate (constant source): keep the last fit
            break
        if it + 1 < iterations and trim > 0:
            residual = np.abs(scale * x + shift - y)
            keep = residual <= np.quantile(residual, 1.0 - trim)
    return scale, shift


def robust_level_spread(values: np.ndarray, max_samples: int = 40000) -> tuple[float, float]:
    """``(median, interquartile range)`` of the 1-d ``values`` (at most ``max_samples``, a regular subsample)."""
    q25, q50, q75 = np.percentile(_subsample(values, max_samples), [25.0, 50.0, 75.0])
    return float(q50), float(q75 - q25)


def correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray, max_samples: int = 40000) -> float:
    """Pearson correlation of ``a`` and ``b`` (equal shapes) over ``valid`` (at most ``max_samples`` pixels);
    0 when either is constant there."""
    idx = _subsample(np.flatnonzero(valid), max_samples)
    x, y = a.ravel()[idx].astype(np.float64), b.ravel()[idx].astype(np.float64)
    if x.size < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else 0.0


class TemporalAligner:
    """Stateful per-frame alignment of relative disparity to a running reference (see the module docstring).

    Args:
        momentum: EMA weight of the old reference, ``ref = momentum * ref + (1 - momentum) * aligned``
            (0 = the previous aligned frame only). Higher = smoother but slower to follow scene changes.
        trim: fraction of the largest residuals dropped in each refit (moving tools, occlusions, specularities).
        iterations: trimmed least-squares passes.
        min_correlation: a frame whose correlation with the reference (over the pixels valid in both) is below
            this is a new scene: it is not fitted, the reference restarts from it.
        follow: time constant in frames with which the output follows a lasting change of the input's scale and
            shift (module docstring); 0 (default, relative models: their scale carries nothing to follow) = keep
            the first frame's affine frame for good. ``depth_stream`` follows a metric model's depth (30).
        min_valid: a frame with fewer valid pixels than this share of its pixels is blank (NaN, nothing learnt).
    Attributes:
        scales, shifts: per frame, the transform applied (``output = scale * disparity + shift``; NaN: a blank
            frame, not aligned); the latest :data:`HISTORY` frames.
        cuts: indices of the frames taken as a new scene (the latest :data:`HISTORY`).
        frames: frames seen since :meth:`reset`.
    """

    def __init__(self, momentum: float = 0.3, trim: float = 0.2, iterations: int = 3,
                 min_correlation: float = 0.3, follow: float = 0.0, min_valid: float = 0.01):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not -1.0 <= min_correlation <= 1.0:
            raise ValueError(f"min_correlation must be in [-1, 1], got {min_correlation}")
        # checked here, not only by the first fit: a bad value must not fail a stream after its first frame
        if not 0.0 <= trim < 1.0:
            raise ValueError(f"trim must be in [0, 1), got {trim}")
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        if not (np.isfinite(follow) and follow >= 0):
            raise ValueError(f"follow must be a number of frames >= 0, got {follow!r}")
        if not 0.0 <= min_valid < 1.0:
            raise ValueError(f"min_valid must be in [0, 1), got {min_valid!r}")
        self.momentum = momentum
        self.follow = float(follow)
        self.min_valid = float(min_valid)
        self.trim = trim
        self.iterations = iterations
        self.min_correlation = min_correlation
        self.reset()

    def reset(self) -> None:
        """Forget the reference (start of a new clip)."""
        self._reference: np.ndarray | None = None
        self._ref_valid: np.ndarray | None = None
        self._anchor: tuple[float, float] | None = None  # the first frame's (median, interquartile range)
        self._output_frame = (0.0, 0.0)  # L: running mean of the fits' (log scale, shift)
        self.frames = 0
        self.scales: list[float] = []
        self.shifts: list[float] = []
        self.cuts: list[int] = []

    def update(self, disparity: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Align one frame.

        Args:
            disparity: float ``[H, W]`` relative disparity (larger = nearer) of the next frame.
            valid: optional bool ``[H, W]``; non-finite pixels are invalid anyway.
        Returns:
            float32 ``[H, W]`` aligned disparity ``s * disparity + b`` in the first frame's affine frame (all NaN
            for a blank frame).
        """
        disparity = np.asarray(disparity, dtype=np.float32)
        if disparity.ndim != 2:
            raise ValueError(f"disparity must be [H, W], got shape {disparity.shape}")
        ok = np.isfinite(disparity)
        if valid is not None:
            if valid.shape != disparity.shape:
                raise ValueError(f"valid has shape {valid.shape}, expected {disparity.shape}")
            ok &= valid
        if self._reference is not None and self._reference.shape != disparity.shape:
            raise ValueError(f"frame has shape {disparity.shape} but the clip so far is {self._reference.shape}; "
                             "call reset() between clips")
        n_ok = np.count_nonzero(ok)
        if n_ok < max(2, self.min_valid * ok.size) or not np.ptp(disparity[ok]) > 0:  # blank: nothing learnt
            logger.debug("frame %d: %d valid pixels, no disparity range; not aligned", self.frames, n_ok)
            self._record(np.nan, np.nan)
            return np.full(disparity.shape, np.nan, np.float32)
        if self._anchor is None:
            scale, shift = 1.0, 0.0
            self._anchor = robust_level_spread(disparity[ok])
        else:
            scale, shift = self._fit(disparity, ok)
        self._update_reference((scale * disparity + shift).astype(np.float32), ok)
        scale, shift = self._to_output_frame(scale, shift)
        self._record(scale, shift)
        return (scale * disparity + shift).astype(np.float32)

    def _to_output_frame(self, scale: float, shift: float) -> tuple[float, float]:
        """The fit ``C = (scale, shift)`` (input → reference frame) composed with ``L⁻¹`` after ``L`` has taken up
        ``1 / follow`` of it: the transform input → output frame."""
        if self.follow > 0:
            rate = 1.0 / max(self.follow, 1.0)
            log_scale, offset = self._output_frame
            self._output_frame = (log_scale + rate * (np.log(scale) - log_scale), offset + rate * (shift - offset))
        log_scale, offset = self._output_frame
        return scale / np.exp(log_scale), (shift - offset) / np.exp(log_scale)

    def _record(self, scale: float, shift: float) -> None:
        """Append one frame's transform, keeping the latest :data:`HISTORY` (constant memory on a live stream)."""
        self.frames += 1
        for values, value in ((self.scales, scale), (self.shifts, shift)):
            values.append(float(value))
            del values[:-HISTORY]
        del self.cuts[:-HISTORY]

    __call__ = update

    def _fit(self, disparity: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
        """``(scale, shift)`` of a frame after the first: fitted to the reference, or for a new scene (no overlap,
        low correlation, scale <= 0) its median and interquartile range mapped to the first frame's, the reference
        restarting from it."""
        both = ok & self._ref_valid if self._reference is not None else ok & False
        if np.count_nonzero(both) >= 2:
            scale, shift = robust_scale_shift(disparity, self._reference, both, trim=self.trim,
                                              iterations=self.iterations)
            match = correlation(disparity, self._reference, both)
            if scale > 0 and match >= self.min_correlation:
                return scale, shift
        else:
            match = float("nan")
        logger.info("frame %d: no match with the reference (correlation %.2f); taken as a new scene",
                    self.frames, match)
        self.cuts.append(self.frames)
        self._reference = self._ref_valid = None
        level, spread = robust_level_spread(disparity[ok])
        scale = self._anchor[1] / spread if spread > 0 and self._anchor[1] > 0 else 1.0
        return scale, self._anchor[0] - scale * level

    def _update_reference(self, aligned: np.ndarray, ok: np.ndarray) -> None:
        if self._reference is None:
            self._reference = np.where(ok, aligned, 0).astype(np.float32)
            self._ref_valid = ok.copy()
            return
        both = ok & self._ref_valid
        m = np.float32(self.momentum)
        self._reference[both] = m * self._reference[both] + (1 - m) * aligned[both]
        new = ok & ~self._ref_valid
        self._reference[new] = aligned[new]
        self._ref_valid |= ok
        # pull the reference's spread back towards the first frame's: the fits' dilution must not compound
        level, spread = robust_level_spread(self._reference[self._ref_valid])
        if spread > 0 and self._anchor[1] > 0:
            gain = np.float32((self._anchor[1] / spread) ** SPREAD_PULL)
            self._reference[self._ref_valid] = ((self._reference[self._ref_valid] - np.float32(level)) * gain
                                                + np.float32(level))


def flicker(depths: np.ndarray | Iterable[np.ndarray],
            valid: np.ndarray | Iterable[np.ndarray] | None = None) -> float:
    """Relative temporal flicker: mean over consecutive frame pairs of
    ``mean|d[t+1] - d[t]| / mean((d[t+1] + d[t]) / 2)``.

    Normalising by the pair's mean level makes the number independent of the global scale (so a method cannot
    lower it by shrinking its output). Pixels are used where both frames are finite, > 0 and ``valid``.

    Args:
        depths: float ``[N, H, W]`` (or N maps ``[H, W]``), N ≥ 2, depth or disparity of one unit.
        valid: optional bool ``[N, H, W]``.
    Returns:
        the flicker as a fraction (0 = perfectly steady).
    """
    maps = [np.asarray(d, dtype=np.float64) for d in depths]
    masks = [None] * len(maps) if valid is None else [np.asarray(v, bool) for v in valid]
    if len(maps) < 2:
        raise ValueError(f"flicker needs at least 2 frames, got {len(maps)}")
    if len(masks) != len(maps):
        raise ValueError(f"valid has {len(masks)} frames, depths {len(maps)}")
    values = []
    for t in range(len(maps) - 1):
        a, b = maps[t], maps[t + 1]
        if a.shape != b.shape:
            raise ValueError(f"frame {t + 1} has shape {b.shape}, frame {t} {a.shape}")
        ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
        for m in (masks[t], masks[t + 1]):
            if m is not None:
                ok &= m
        if not ok.any():
            continue
        level = 0.5 * (a[ok] + b[ok]).mean()
        values.append(np.abs(b[ok] - a[ok]).mean() / level)
    if not values:
        raise ValueError("no frame pair has valid pixels in common")
    return float(np.mean(values))
