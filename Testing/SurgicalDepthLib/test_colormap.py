"""Colour maps: red = near, blue = far, invalid black, shared and robust ranges."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthLib.colormap import colorize, robust_range, to_disparity


def ramp(h: int = 8, w: int = 100, near: float = 10.0, far: float = 100.0) -> np.ndarray:
    return np.tile(np.linspace(near, far, w, dtype=np.float32), (h, 1))


def test_near_red_far_blue():
    rgb = colorize(ramp())
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 100, 3)
    near, far = rgb[0, 0].astype(int), rgb[0, -1].astype(int)
    assert near[0] > 150 and near[0] > near[2] + 100  # red
    assert far[2] > 150 and far[2] > far[0] + 100  # blue
    # along a disparity ramp: blue (far) -> green (middle) -> red (near)
    c = colorize(np.tile(np.linspace(0.0, 1.0, 101, dtype=np.float32), (2, 1)), "disparity", 0.0, 1.0)[0]
    assert np.argmax(c[5]) == 2 and np.argmax(c[50]) == 1 and np.argmax(c[95]) == 0


def test_depth_and_disparity_agree():
    d = ramp()
    np.testing.assert_array_equal(colorize(d, "depth"), colorize(1.0 / d, "disparity"))
    lo, hi = robust_range(d, "depth")
    np.testing.assert_array_equal(colorize(d, "depth", lo, hi), colorize(1 / d, "disparity", 1 / hi, 1 / lo))


def test_invalid_and_masked_pixels_black():
    d = ramp()
    d[0, 3], d[1, 4], d[2, 5] = 0.0, np.nan, -5.0
    mask = np.ones(d.shape, bool)
    mask[5:, 50:] = False
    rgb = colorize(d, mask=mask)
    for v, u in [(0, 3), (1, 4), (2, 5)]:
        assert rgb[v, u].tolist() == [0, 0, 0]
    assert (rgb[5:, 50:] == 0).all()
    assert (rgb[:5].reshape(-1, 3).max(axis=1) > 0).sum() == 5 * 100 - 3  # valid pixels are never black
    assert (colorize(np.zeros((4, 4))) == 0).all()  # nothing valid: all black, no error


def test_shared_range_gives_equal_colours_for_equal_depths():
    a, b = ramp(far=50.0), ramp(near=30.0, far=100.0)
    vmin, vmax = robust_range([a, b], "depth", percentiles=(0, 100))
    assert (vmin, vmax) == pytest.approx((10.0, 100.0))
    ca, cb = colorize(a, vmin=vmin, vmax=vmax), colorize(b, vmin=vmin, vmax=vmax)
    # depth 50 is the last column of a; find it in b
    col_b = int(np.argmin(np.abs(b[0] - 50.0)))
    assert np.abs(ca[0, -1].astype(int) - cb[0, col_b].astype(int)).max() <= 12
    # per-map automatic ranges would instead both span red..blue
    assert colorize(b)[0, 0, 0] > 150


def test_robust_percentiles_ignore_outliers():
    d = ramp()
    d[0, 0] = 0.001  # one absurdly near pixel
    rgb = colorize(d)
    mid = rgb[4, 1:].astype(int)
    assert np.ptp(mid[:, 0] - mid[:, 2]) > 200  # the rest still spans the colour map


def test_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        colorize(ramp(), kind="inverse")
    with pytest.raises(ValueError, match=r"2D map \[H, W\]"):
        colorize(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="mask has shape"):
        colorize(ramp(), mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="no valid"):
        robust_range(np.zeros((3, 3)))
    disp, valid = to_disparity(np.array([[2.0, 0.0]]), "depth")
    assert disp.tolist() == [[0.5, 0.0]] and valid.tolist() == [[True, False]]


def test_lists_and_tensors_colour_like_arrays():
    """Catches: ``colorize`` took a nested list or a (CPU) torch tensor in ``to_disparity`` but handed the original
    to ``robust_range``, which iterated over its rows and failed with "must be a 2D map [H, W], got shape (W,)"."""
    import torch

    d = ramp(h=3, w=7)
    expected = colorize(d)
    np.testing.assert_array_equal(colorize(d.tolist()), expected)
    np.testing.assert_array_equal(colorize(torch.from_numpy(d)), expected)
    np.testing.assert_array_equal(colorize((1.0 / d).tolist(), "disparity"), colorize(1.0 / d, "disparity"))


@pytest.mark.parametrize("kind, vmin, vmax", [("depth", 100.0, 10.0), ("disparity", 0.9, 0.1),
                                              ("depth", float("nan"), 100.0), ("disparity", 0.1, float("nan"))])
def test_misordered_or_nan_limits_are_refused(kind, vmin, vmax):
    """Catches: limits given the wrong way round (or NaN) made the span negative (or NaN) and the whole map came out
    in turbo's middle green, the colour of a constant map, without an error."""
    with pytest.raises(ValueError, match=r"vmin <= vmax, got vmin=.*, vmax="):
        colorize(ramp(), kind, vmin, vmax)


def test_constant_map_is_the_middle_colour_and_equal_limits_are_allowed():
    """A constant map (and vmin == vmax) has no range: every valid pixel gets turbo's middle colour, invalid ones
    stay black (a documented outcome, not an error)."""
    d = np.full((2, 3), 50.0)
    d[0, 0] = np.nan
    rgb = colorize(d)
    middle = colorize(np.full((1, 1), 1.0), "disparity", 0.0, 2.0)[0, 0]  # t = 0.5
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert (rgb.reshape(-1, 3)[1:] == middle).all()
    np.testing.assert_array_equal(colorize(d, "depth", 50.0, 50.0), rgb)
