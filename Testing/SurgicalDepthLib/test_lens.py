"""Lens correction (``SurgicalDepthLib.lens``): factors against closed forms of the pinhole and equidistant fisheye
geometry, exact round trips, and ``depth_stream(intrinsics=)`` on a real tiny model."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from tiny_model import textured, tiny_model

import SurgicalDepthLib as sd
from SurgicalDepthLib.lens import LensCorrection, correct_prediction, lens_factor, ray_cosines

W, H = 64, 48


def pinhole_cos(f: float, w: int = W, h: int = H) -> np.ndarray:
    """cos θ of every pixel of a centred pinhole with focal length ``f`` px (closed form)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    return f / np.sqrt(f * f + (u - (w - 1) / 2) ** 2 + (v - (h - 1) / 2) ** 2)


def focal(fov_deg: float, w: int = W) -> float:
    return 0.5 * w / math.tan(math.radians(fov_deg) / 2)


def test_factor_is_the_cosine_ratio_for_a_wider_lens_and_one_for_a_narrower_one():
    """Catches: a reference camera not centred or of another field of view, the ratio inverted (cos θ_ref / cos θ),
    cosines of unnormalised rays, the cap at 1 missing (a lens narrower than the model's reference would push the
    frame's corners farther: measured worse than the raw output on 70° lenses)."""
    np.testing.assert_allclose(lens_factor(sd.Intrinsics.from_fov(W, H, 100.0), 100.0), 1.0, atol=1e-6)
    wide = sd.Intrinsics.from_fov(W, H, 140.0)
    expected = pinhole_cos(focal(140.0)) / pinhole_cos(focal(100.0))
    np.testing.assert_allclose(lens_factor(wide, 100.0), expected, rtol=1e-6)
    assert expected.min() < 0.6  # the corners of a 140° view are much nearer than a 100° reading says
    np.testing.assert_array_equal(lens_factor(sd.Intrinsics.from_fov(W, H, 60.0), 100.0), 1.0)


def test_fisheye_cosines_follow_the_equidistant_model():
    """Catches: fisheye pixels read as pinhole rays (distortion not undone): an equidistant fisheye (k = 0) has
    θ = r / f exactly, so a pixel 1.2 f from the centre sees 69° off axis, where a pinhole would say 50°."""
    f = 20.0
    fish = sd.Intrinsics(f, f, (W - 1) / 2, (H - 1) / 2, W, H, distortion={"model": "fisheye", "coeffs": [0.0] * 4})
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    theta = np.hypot(u - (W - 1) / 2, v - (H - 1) / 2) / f
    inside = theta < math.radians(85)
    np.testing.assert_allclose(ray_cosines(fish)[inside], np.cos(theta[inside]), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["disparity", "depth"])
def test_correction_recovers_z_depth_from_the_reference_lens_reading(kind):
    """Catches: disparity multiplied instead of divided (or depth divided), i.e. the correction applied backwards.
    Exact case: a model that reads ``ray length · cos θ_ref`` on a 150° fisheye frame is turned into true z."""
    fish = sd.Intrinsics(15.0, 15.0, (W - 1) / 2, (H - 1) / 2, W, H,
                         distortion={"model": "fisheye", "coeffs": [-0.02, 0.0, 0.0, 0.0]})
    cos_true = ray_cosines(fish)
    ray_length = np.random.default_rng(0).uniform(5.0, 80.0, (H, W))
    z_true = ray_length * cos_true
    z_read = ray_length * pinhole_cos(focal(100.0))
    pred = z_read if kind == "depth" else 1.0 / z_read
    out = correct_prediction(pred.astype(np.float32), lens_factor(fish, 100.0), kind)
    got = out if kind == "depth" else 1.0 / out
    ok = np.isfinite(z_true)
    np.testing.assert_allclose(got[ok], z_true[ok], rtol=1e-5)


def test_correction_rescales_intrinsics_of_the_same_aspect_and_refuses_another():
    """Catches: a calibration at another resolution applied pixel for pixel (or silently to another aspect)."""
    calib = sd.Intrinsics.from_fov(2 * W, 2 * H, 130.0)
    corr = LensCorrection(calib, 100.0, "disparity")
    np.testing.assert_allclose(corr.factor(H, W), lens_factor(calib.scaled(W, H), 100.0))
    with pytest.raises(ValueError, match="aspect"):
        corr.factor(H, H)
    with pytest.raises(ValueError, match="another image size"):
        correct_prediction(np.ones((H, W), np.float32), np.ones((W, H), np.float32), "depth")


def test_depth_stream_corrects_only_models_with_a_reference_lens(one_torch_thread):
    """Catches: the correction skipped when intrinsics are given to a model that has a reference lens, or applied
    to a model without one (official Depth Anything weights: their reference lens is not known)."""
    plain = tiny_model(2)
    lensed = tiny_model(2)
    lensed.config = dataclasses.replace(lensed.config, reference_fov_deg=100.0)
    frames = [textured(H, W, seed=s) for s in range(2)]
    calib = sd.Intrinsics.from_fov(W, H, 140.0)
    factor = lens_factor(calib, 100.0)

    def predictions(model, **kw):
        return [f.prediction for f in sd.depth_stream(model, frames, input_size=56, fov_mask=None, **kw)]

    for raw, out in zip(predictions(lensed), predictions(lensed, intrinsics=calib)):
        np.testing.assert_allclose(out, raw / factor, rtol=1e-6)
    for raw, out in zip(predictions(plain), predictions(plain, intrinsics=calib)):
        np.testing.assert_array_equal(out, raw)


def test_factor_of_a_camera_is_computed_once_and_read_only():
    """Catches: the factor recomputed for every frame (undistorting a 1080p OpenCV camera takes ~1.3 s, and the
    Slicer live worker starts a stream per frame), and a shared factor that a caller could change in place."""
    calib = sd.Intrinsics(40.0, 40.0, 31.5, 23.5, W, H, distortion={"model": "opencv", "coeffs": [-0.2, 0.05, 0, 0]})
    first = LensCorrection(calib, 100.0, "disparity").factor(H, W)
    assert LensCorrection(calib, 100.0, "depth").factor(H, W) is first
    assert not first.flags.writeable
    assert lens_factor(calib, 90.0) is not first  # another reference lens is another factor
