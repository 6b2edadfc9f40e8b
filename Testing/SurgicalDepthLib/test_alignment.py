"""align_scale / fit_scale_shift / disparity_to_depth against closed-form references."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthLib.alignment import align_scale, disparity_to_depth, fit_scale_shift


@pytest.fixture
def depth() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(20.0, 150.0, (60, 80))


def test_median_scaling(depth):
    pred = depth / 7.3
    out = align_scale(pred, depth)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, depth, rtol=1e-6)
    s, t = fit_scale_shift(pred, depth, mode="median")
    assert s == pytest.approx(np.median(depth) / np.median(pred)) and t == 0.0


def test_scale_shift_least_squares(depth):
    pred = (depth - 11.0) / 2.5
    noisy = pred + np.random.default_rng(1).normal(0, 0.2, pred.shape)
    s, t = fit_scale_shift(noisy, depth, mode="scale_shift")
    A = np.column_stack([noisy.ravel(), np.ones(noisy.size)])
    ref_s, ref_t = np.linalg.lstsq(A, depth.ravel(), rcond=None)[0]  # independent reference
    assert (s, t) == (pytest.approx(ref_s, rel=1e-9), pytest.approx(ref_t, rel=1e-9))
    np.testing.assert_allclose(align_scale(pred, depth, mode="scale_shift"), depth, rtol=1e-5)


def test_mask_and_invalid_pixels_are_ignored(depth):
    pred = depth / 2.0
    ref = depth.copy()
    ref[:10] = np.nan
    ref[10:20] = 0.0
    pred[20:30] = np.inf
    corrupt = pred.copy()
    corrupt[30:] = 1e6  # masked out below
    mask = np.zeros(depth.shape, bool)
    mask[:30] = True
    mask[30:40] = False
    mask[40:] = True
    corrupt[40:] = pred[40:]
    out = align_scale(corrupt, ref, mask=mask)
    np.testing.assert_allclose(out[40:], depth[40:], rtol=1e-6)
    with pytest.raises(ValueError, match="no pixel is finite and > 0"):
        align_scale(pred, ref, mask=np.zeros(depth.shape, bool))
    with pytest.raises(ValueError, match=r"reference shape \(2, 2\) does not match pred shape \(60, 80\)"):
        align_scale(pred, np.ones((2, 2)))
    with pytest.raises(ValueError, match="mode must be one of"):
        align_scale(pred, depth, mode="mean")
    with pytest.raises(ValueError, match="pred is constant"):
        align_scale(np.ones_like(depth), depth, mode="scale_shift")


def test_disparity_from_reference_scale_shift(depth):
    disparity = 3.0 * (1.0 / depth) * 1000 - 2.5  # affine in inverse depth: 1/z = (d + 2.5) / 3000
    out = disparity_to_depth(disparity, reference=depth, mode="scale_shift")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, depth, rtol=1e-5)
    # a shifted disparity whose inverse depth turns non-positive is NaN, not a negative depth
    d2 = disparity.copy()
    d2[0, 0] = -100.0
    out2 = disparity_to_depth(d2, reference=depth, mode="scale_shift", mask=d2 > -50)
    assert np.isnan(out2[0, 0]) and np.isfinite(out2[1:]).all()


def test_disparity_from_reference_median(depth):
    disparity = 500.0 / depth
    out = disparity_to_depth(disparity, reference=depth, mode="median")
    np.testing.assert_allclose(out, depth, rtol=1e-5)
    disparity[0, :2] = [0.0, -1.0]
    assert np.isnan(disparity_to_depth(disparity, reference=depth)[0, :2]).all()


def test_disparity_from_depth_range(depth):
    inv = 1.0 / depth
    disparity = 7.0 * inv + 0.01  # any affine disparity
    near, far = depth.min(), depth.max()
    out = disparity_to_depth(disparity, depth_range=(near, far))
    np.testing.assert_allclose(out, depth, rtol=1e-5)
    assert out.min() == pytest.approx(near, rel=1e-6) and out.max() == pytest.approx(far, rel=1e-6)
    # robust percentiles: values beyond the band are clipped into [near, far]
    robust = disparity_to_depth(disparity, depth_range=(30.0, 100.0), percentiles=(5, 95))
    assert np.nanmin(robust) == pytest.approx(30.0) and np.nanmax(robust) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="0 < near < far"):
        disparity_to_depth(disparity, depth_range=(10.0, 5.0))
    with pytest.raises(ValueError, match="disparity is constant"):
        disparity_to_depth(np.ones((4, 4)), depth_range=(10.0, 50.0))


def test_disparity_explicit_scale_and_argument_rules(depth):
    disparity = 1000.0 / depth - 1.0
    np.testing.assert_allclose(disparity_to_depth(disparity, scale=1e-3, shift=1e-3), depth, rtol=1e-6)
    nan_in = disparity.copy()
    nan_in[5, 5] = np.nan
    assert np.isnan(disparity_to_depth(nan_in, scale=1e-3, shift=1e-3)[5, 5])
    with pytest.raises(ValueError, match="exactly one of depth_range, reference or scale; got none"):
        disparity_to_depth(disparity)
    with pytest.raises(ValueError, match=r"got \['depth_range', 'scale'\]"):
        disparity_to_depth(disparity, depth_range=(1, 2), scale=1.0)


def test_mode_is_the_third_argument_as_the_contract_writes_it(depth):
    """Catches ``sd.align_scale(pred, reference, "scale_shift")`` (the contract's call) taking the mode string for
    a mask ("mask shape () does not match"); a mask passed third by old habit is a clear TypeError."""
    import SurgicalDepthLib as sd

    pred = (depth - 11.0) / 2.5
    np.testing.assert_allclose(sd.align_scale(pred, depth, "scale_shift"), depth, rtol=1e-5)
    with pytest.raises(TypeError, match="pass a mask as mask="):
        sd.align_scale(pred, depth, np.ones(depth.shape, bool))


@pytest.mark.parametrize("how", [{"depth_range": (5.0, 120.0)}, {"scale": 1e-3, "shift": 1e-3},
                                 {"reference": "depth", "mode": "median"},
                                 {"reference": "depth", "mode": "scale_shift"}])
def test_non_finite_disparity_has_no_depth(depth, how):
    """Catches a +-inf disparity given a depth: ``s·inf + t`` inverted to 0 mm (scale and reference modes; 0 is
    the nearest value a viewer draws) and the depth_range clip sent +inf to ``near`` and -inf to ``far``, where the
    docstring promises NaN for a non-finite disparity."""
    disparity = 1000.0 / depth - 1.0
    disparity[0, :3] = [np.inf, -np.inf, np.nan]
    kwargs = {k: (depth if v == "depth" else v) for k, v in how.items()}
    out = disparity_to_depth(disparity, **kwargs)
    assert np.isnan(out[0, :3]).all()
    assert np.isfinite(out[1:]).all() and (out[1:] > 0).all()


def test_depth_beyond_float32_is_nan_not_inf():
    """Catches an inverse depth that is positive but tiny (1e-300) coming out as +inf mm after the float32 cast."""
    out = disparity_to_depth(np.array([[1e-300, 0.5, 0.0]]), scale=1.0)
    assert np.isnan(out[0, 0]) and out[0, 1] == 2.0 and np.isnan(out[0, 2])


def test_scale_shift_ignores_unmeasured_reference_pixels_like_depth_metrics(depth):
    """Catches ``align_scale(pred, gt, "scale_shift")`` fitting the 0 that datasets write for "no measurement" as
    a target depth (the result was off by up to 42 mm on a 20-150 mm map) while median mode and
    ``sdt.depth_metrics`` leave those pixels out."""
    import SurgicalDepthTrainingLib as sdt

    pred = (depth - 11.0) / 2.5
    gt = depth.copy()
    gt[:10] = 0.0
    gt[10:12] = -1.0
    for mode in ("median", "scale_shift"):
        np.testing.assert_allclose(align_scale(pred if mode == "scale_shift" else depth / 3.0, gt, mode)[12:],
                                   depth[12:], rtol=1e-5)
    # the same fit as the metrics' one where both work in the same space (disparity against 1/gt)
    disparity = 3.0 / depth + 0.002
    metrics = sdt.depth_metrics(disparity, gt, alignment="scale_shift", pred_kind="disparity")
    inverse_gt = np.divide(1.0, gt, out=np.zeros_like(gt), where=gt > 0)  # 0 where unmeasured
    np.testing.assert_allclose(align_scale(disparity, inverse_gt, "scale_shift"),
                               metrics["scale"] * disparity + metrics["shift"], rtol=1e-6)
    np.testing.assert_allclose(disparity_to_depth(disparity, reference=gt, mode="scale_shift")[12:], depth[12:],
                               rtol=1e-5)


@pytest.mark.parametrize("magnitude", [1e-170, 1e-30, 1e30, 1e160])
def test_scale_shift_at_extreme_magnitudes(depth, magnitude):
    """Catches the normal equations squaring raw magnitudes: pred ~1e-170 underflowed its variance to 0 ("pred is
    constant") and pred ~1e160 overflowed it to inf (scale 0). Solved on centred values divided by their largest
    magnitude, the fit is exact at any magnitude."""
    s, t = fit_scale_shift(depth * magnitude, depth + 7.0, mode="scale_shift")
    assert s == pytest.approx(1.0 / magnitude, rel=1e-9) and t == pytest.approx(7.0, rel=1e-9)
    s, t = fit_scale_shift(depth, depth * magnitude, mode="scale_shift")
    assert s == pytest.approx(magnitude, rel=1e-9) and abs(t) <= 1e-9 * magnitude * depth.max()


def test_scale_shift_float32_with_a_large_offset(depth):
    """Pins the centred solve on float32 values around 1e4 with a spread of ~100: the fit is exact to float32's own
    rounding of the inputs (normal equations on uncentred values would cancel)."""
    pred = (depth + 1e4).astype(np.float32)
    s, t = fit_scale_shift(pred, depth, mode="scale_shift")
    ref_s, ref_t = np.polyfit(pred.astype(np.float64).ravel(), depth.ravel(), 1)  # independent reference
    assert (s, t) == (pytest.approx(ref_s, rel=1e-9), pytest.approx(ref_t, rel=1e-9))
    assert s == pytest.approx(1.0, rel=1e-5)


def test_depth_range_mapping_is_monotone_finite_and_keeps_nan():
    """depth_range on a sphere's exact disparity with a shifted (partly negative) affine: nearer (larger) disparity
    gives smaller depth, every finite disparity gets a finite depth in [near, far] (the negative ones: far, not
    NaN), NaN stays NaN, and the band maps to near/far exactly, linearly in inverse depth."""
    v, u = np.mgrid[-30:31, -30:31] / 30.0
    z = 50.0 - 20.0 * np.sqrt(np.clip(1.0 - u ** 2 - v ** 2, 0.0, None))  # a sphere cap bulging to 30 mm
    disparity = 4.0 / z - 0.09  # any affine of 1/z; about -0.01 at the far rim
    assert (disparity < 0).any()
    disparity[0, 0] = np.nan
    near, far = 10.0, 100.0
    out = disparity_to_depth(disparity, depth_range=(near, far))
    assert np.isnan(out[0, 0]) and np.isfinite(out).sum() == out.size - 1
    ok = np.isfinite(disparity)
    order = np.argsort(disparity[ok])
    assert np.all(np.diff(out[ok][order]) <= 1e-4)  # monotone: larger disparity, smaller depth
    lo, hi = np.nanmin(disparity), np.nanmax(disparity)
    expected = 1.0 / (1.0 / far + (disparity - lo) / (hi - lo) * (1.0 / near - 1.0 / far))
    np.testing.assert_allclose(out[ok], expected[ok], rtol=1e-5)
    assert np.nanmin(out) == pytest.approx(near) and np.nanmax(out) == pytest.approx(far)
