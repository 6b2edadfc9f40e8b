"""Image effects, shading and procedural textures of the synthetic renderer (small exact checks)."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthTrainingLib.synthetic import effects
from SurgicalDepthTrainingLib.synthetic.shading import (beam_profile, expose, expose_planes, lighting,
                                                        normals_from_points, shade, vignette_map)
from SurgicalDepthTrainingLib.synthetic.textures import band_noise, channel_planes, sample_bilinear, sample_planes


def test_band_noise_is_periodic_unit_and_seeded():
    a = band_noise(np.random.default_rng(1), (200, 120), (0.5, 0.5), 8.0)
    b = band_noise(np.random.default_rng(1), (200, 120), (0.5, 0.5), 8.0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and abs(float(a.mean())) < 1e-5 and float(a.std()) == pytest.approx(1.0, 1e-4)
    step = np.abs(np.diff(a, axis=1)).mean()
    assert np.abs(a[:, 0] - a[:, -1]).mean() < 2 * step  # wraps without a seam
    with pytest.raises(ValueError, match="wavelength_mm"):
        band_noise(np.random.default_rng(0), (8, 8), (1, 1), 0.0)


def test_sample_bilinear_exact_on_linear_table():
    rows, cols = np.meshgrid(np.arange(10.0), np.arange(7.0), indexing="ij")
    table = np.stack([2 * rows + 3 * cols, rows - cols], -1)
    u, v = np.array([0.25, 4.5, 8.9]), np.array([1.5, 0.0, 5.75])
    out = sample_bilinear(table, u, v, wrap_v=False)
    np.testing.assert_allclose(out, np.stack([2 * u + 3 * v, u - v], -1))


def test_sample_planes_equals_sample_bilinear():
    table = np.random.default_rng(2).random((40, 30, 3)).astype(np.float32)
    u = np.array([0.0, 3.25, 17.9, 38.99, 45.0, -2.0])
    v = np.array([0.0, 29.5, -0.25, 61.3, 12.0, 29.999])  # wraps both ways
    for wrap in (True, False):
        ref = sample_bilinear(table, u, v, wrap_v=wrap)
        planes = sample_planes(channel_planes(table), 40, 30, u, v, wrap_v=wrap)
        np.testing.assert_array_equal(np.stack(planes, -1), ref)


def test_normals_of_a_plane_face_the_camera():
    h, w = 20, 30
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    ray = np.stack([(u - 15) / 100, (v - 10) / 100, np.ones_like(u)], -1)
    plane = np.array([0.3, -0.2, -1.0])  # plane·X = -50, normal already facing the camera (negative z)
    z = -50.0 / (ray @ plane)
    pts = ray * z[..., None]
    n = normals_from_points(pts, np.ones((h, w), bool))
    expected = plane / np.linalg.norm(plane)
    np.testing.assert_allclose(n[5:15, 5:25].reshape(-1, 3), np.broadcast_to(expected, (200, 3)), atol=1e-5)


def test_inverse_square_falloff_and_exposure():
    dirs = np.zeros((1, 2, 3))
    dirs[..., 2] = 1.0
    normals = -dirs
    albedo = np.full((1, 2, 3), 0.5, np.float32)
    valid = np.ones((1, 2), bool)
    zeros = np.zeros((1, 2), np.float32)
    rad = shade(albedo, normals, dirs, np.array([[10.0, 20.0]]), valid, zeros, zeros + 10, 0.0)
    assert rad[0, 0, 0] == pytest.approx(4 * rad[0, 1, 0])  # 1/d^2
    out = expose(rad, valid, 0.5, 1.0, np.ones((1, 2), np.float32), percentile=100.0)
    assert out[0, 0, 0] == pytest.approx(0.5) and out[0, 1, 0] == pytest.approx(0.125)
    planes = expose_planes([rad[..., k] for k in range(3)], valid, 0.5, 1.0, np.ones((1, 2), np.float32),
                           percentile=100.0)
    np.testing.assert_array_equal(np.stack(planes, -1), out)
    diffuse, spec = lighting(np.ones((1, 2)), np.array([[10.0, 20.0]]), np.array([[True, False]]), 0.5, 10.0, 0.0)
    assert diffuse[0, 0] == pytest.approx(1.0) and spec[0, 0] == pytest.approx(0.5)  # facing, 10 mm: 1
    assert diffuse[0, 1] == 0 and spec[0, 1] == 0  # invalid
    vig = vignette_map(5, 7, 0.4)
    assert vig[2, 3] == pytest.approx(1.0) and vig[0, 0] == pytest.approx(0.6)


def test_effects_change_only_what_they_should():
    rng = np.random.default_rng(0)
    img = np.full((40, 50, 3), 0.4, np.float32)
    img[:, 25:] = 0.8
    blurred = effects.motion_blur(img, 7.0, 0.0)
    assert blurred.mean() == pytest.approx(img.mean(), abs=1e-3) and np.abs(blurred - img).max() > 0.05
    np.testing.assert_array_equal(effects.motion_blur(img, 0.5, 0.0), img)
    depth = np.full((40, 50), 20.0)
    depth[:, 25:] = 200.0
    smoky = effects.add_smoke(img, depth, np.ones((40, 50), bool), 0.8, rng)
    gain = np.abs(smoky - img).mean(axis=(0, 2))
    assert gain[30:].mean() > gain[:20].mean()  # farther tissue disappears more into the haze
    noisy = effects.sensor_noise(img, 0.02, np.random.default_rng(3))
    np.testing.assert_array_equal(noisy, effects.sensor_noise(img, 0.02, np.random.default_rng(3)))
    assert 0.005 < float(np.std(noisy - img)) < 0.03 and noisy.min() >= 0 and noisy.max() <= 1
    bloody = effects.add_blood(img, 1.0, rng)
    assert bloody[..., 1].mean() < img[..., 1].mean() and bloody[..., 0].mean() <= img[..., 0].mean() + 1e-6


def test_fill_light_lifts_the_far_lumen_and_beam_darkens_the_rim():
    """Bugs caught: fill light scaled with distance like the direct light (the far lumen would stay as dark as
    1/d² makes it, the very cue real video lacks), fill applied to invalid pixels, or a beam profile that
    brightens the rim instead of the axis."""
    cos = np.ones((1, 3), np.float32)
    length = np.array([[10.0, 100.0, 50.0]])
    valid = np.array([[True, True, False]])
    plain, _ = lighting(cos, length, valid, 0.0, 10.0, 0.0)
    filled, _ = lighting(cos, length, valid, 0.0, 10.0, 0.0, fill=0.5)
    assert plain[0, 0] / plain[0, 1] == pytest.approx(100.0)
    extra = 0.5 * (1.0 + 0.01) / 2  # half the mean direct irradiance of the valid pixels
    np.testing.assert_allclose(filled[0, :2], plain[0, :2] + extra, rtol=1e-6)
    assert filled[0, 0] / filled[0, 1] < 5.0 and filled[0, 2] == 0.0
    beam = beam_profile(np.array([[1.0, 0.5]]), 2.0)
    np.testing.assert_allclose(beam, [[1.0, 0.25]])
    lit, _ = lighting(cos[:, :2], length[:, :2] * 0 + 10.0, valid[:, :2] | True, 0.0, 10.0, 0.0, beam=beam)
    np.testing.assert_allclose(lit, [[1.0, 0.25]], rtol=1e-6)


def test_renderer_photometry_options_default_to_the_old_rendering_and_are_validated():
    """Bugs caught: the new options changing every existing render at their defaults (the shipped recipe's data
    would no longer reproduce), and negative / out-of-range values accepted silently."""
    import SurgicalDepthTrainingLib as sdt
    from SurgicalDepthTrainingLib.synthetic.config import SceneConfig

    a = sdt.render_clip("colon", n_frames=1, seed=5, height=40, width=48)[0]
    b = sdt.render_clip("colon", n_frames=1, seed=5, height=40, width=48, fill_light=0.0, beam_exponent=0.0)[0]
    np.testing.assert_array_equal(a["image"], b["image"])
    c = sdt.render_clip("colon", n_frames=1, seed=5, height=40, width=48, fill_light=0.3, beam_exponent=2.0)[0]
    np.testing.assert_array_equal(a["depth"], c["depth"])
    assert not np.array_equal(a["image"], c["image"])
    with pytest.raises(ValueError, match="fill_light"):
        SceneConfig(fill_light=1.5)
    with pytest.raises(ValueError, match="beam_exponent"):
        SceneConfig(beam_exponent=-1.0)
