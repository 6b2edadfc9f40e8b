"""Scaramuzza's omnidirectional model (OCamCalib) in ``sd.Intrinsics``: closed forms, exact round trips, the
toolbox's ``calib_results.txt`` layout, and fusion through such a lens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib.camera import distort_normalized, pixel_rays
from SurgicalDepthLib.lens import ray_cosines

W, H = 96, 72
XC, YC = 34.25, 50.5  # the toolbox's centre: row, column (deliberately not the image centre, and not equal)

#: calib_results.txt as the toolbox writes it (comment lines, then N a0..a(N-1), M p0.., xc yc, c d e, height width)
CALIB = ("#polynomial coefficients for the DIRECT mapping function (ocam_model.ss in MATLAB). "
         "These are used by cam2world") + """

5 -6.000000e+01 0.000000e+00 4.000000e-03 -1.000000e-05 0.000000e+00

#polynomial coefficients for the inverse mapping function (ocam_model.invpol in MATLAB). These are used by world2cam

3 60.0 20.0 1.0

#center: "row" and "column", starting from 0 (C starts from 0)

34.250000 50.500000

#affine parameters "c", "d", "e"

1.010000 0.002000 -0.003000

#image size: "height" and "width"

72 96
"""


def ocam(c=1.0, d=0.0, e=0.0, poly=(-60.0,)) -> sd.Intrinsics:
    return sd.Intrinsics(-poly[0], abs(c * poly[0]), YC, XC, W, H,
                         distortion={"model": "ocam", "coeffs": [c, d, e, *poly]})


def test_constant_polynomial_is_a_pinhole_with_the_toolbox_axes():
    """Catches: rows and columns swapped (the toolbox's x runs along the rows, and its centre is "row column"),
    the polynomial's sign (its z points away from the scene), the affine matrix applied the wrong way: with
    f(ρ) = a0 and A = [[c, 0], [0, 1]] the model is a pinhole with fx = |a0|, fy = c·|a0|."""
    cam = ocam(c=1.2)
    pinhole = sd.Intrinsics(60.0, 72.0, YC, XC, W, H)
    np.testing.assert_allclose(pixel_rays(cam), pixel_rays(pinhole), rtol=1e-12, atol=1e-12)
    x, y = np.random.default_rng(0).uniform(-0.7, 0.7, (2, 50))
    np.testing.assert_allclose(np.stack(distort_normalized(x, y, cam.distortion)), np.stack([x, y]), atol=1e-12)


def test_pixel_ray_pixel_round_trip_is_exact_for_a_wide_lens():
    """Catches: a projection that is not the inverse of the back-projection (affine inverse, Newton's step, the
    row/column order in either), and torch tensors taking another path than numpy arrays."""
    cam = ocam(c=1.01, d=0.002, e=-0.003, poly=(-60.0, 0.0, 4e-3, -1e-5))
    rays = pixel_rays(cam)
    assert np.degrees(np.arctan(np.hypot(rays[..., 0], rays[..., 1]))).max() > 50  # a wide lens
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    xd, yd = distort_normalized(rays[..., 0], rays[..., 1], cam.distortion)
    np.testing.assert_allclose(xd * cam.fx + cam.cx, u, atol=1e-9)
    np.testing.assert_allclose(yd * cam.fy + cam.cy, v, atol=1e-9)
    xt, yt = distort_normalized(torch.from_numpy(rays[..., 0]), torch.from_numpy(rays[..., 1]), cam.distortion)
    np.testing.assert_allclose(xt.numpy(), xd, atol=1e-12)
    assert rays[int(XC), W - 1, 0] > 0 and rays[H - 1, int(YC), 1] > 0  # right of / below the centre


def test_calib_results_file_and_rescaling(tmp_path):
    """Catches: the toolbox file read in the wrong order (centre row/column, affine c d e, height width) or its
    inverse polynomial taken for the direct one; a rescaled calibration whose polynomial keeps its pixel units
    (a_i must scale by s^(1-i)); an aspect change accepted."""
    path = tmp_path / "calib_results.txt"
    path.write_text(CALIB)
    cam = sd.Intrinsics.from_file(path)
    expected = ocam(c=1.01, d=0.002, e=-0.003, poly=(-60.0, 0.0, 4e-3, -1e-5, 0.0))
    assert cam == expected
    half = sd.parse_intrinsics(str(path), W // 2, H // 2)  # the file states its size: rescaled
    centre_pairs = (pixel_rays(cam)[0::2, 0::2] + pixel_rays(cam)[1::2, 1::2]) / 2
    np.testing.assert_allclose(pixel_rays(half), centre_pairs, atol=2e-3)
    with pytest.raises(ValueError, match="aspect"):
        cam.scaled(W, H // 2)
    path.write_text(CALIB.replace("5 -6.0", "7 -6.0"))
    with pytest.raises(ValueError, match="calib_results"):
        sd.Intrinsics.from_file(path)


def test_inconsistent_focal_length_is_refused():
    """Catches: an 'ocam' camera whose fx, fy disagree with its polynomial (projected pixels would be scaled)."""
    with pytest.raises(ValueError, match=r"fx = \|a0\|"):
        sd.Intrinsics(50.0, 60.0, YC, XC, W, H, distortion={"model": "ocam", "coeffs": [1.0, 0.0, 0.0, -60.0]})


def test_lens_cosines_of_an_ocam_camera():
    """Catches: the lens correction reading an ocam camera as the pinhole of its centre focal length."""
    cam = ocam(poly=(-60.0, 0.0, 4e-3))
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rho = np.hypot(v - XC, u - YC)
    forward = 60.0 - 4e-3 * rho ** 2
    np.testing.assert_allclose(ray_cosines(cam), forward / np.hypot(rho, forward), rtol=1e-12)


def test_pixels_without_a_ray_give_no_point_and_no_vertex():
    """A lens whose polynomial reaches 90° off axis inside the frame (f(ρ) = −30 + 0.01 ρ² is 0 at ρ ≈ 55 px;
    the corners lie 63 px from the centre): those pixels have no ray (NaN). Catches: ``backproject`` and
    ``depth_to_mesh`` turning them into NaN points (half the points of a real circular fisheye; VTK bounds of
    ±8e6) although they are documented never to become points."""
    from SurgicalDepthLib.polydata import depth_to_mesh

    cam = ocam(poly=(-30.0, 0.0, 1e-2))
    lost = np.isnan(pixel_rays(cam)).any(-1)
    assert 0 < lost.sum() < lost.size // 4
    depth = np.full((H, W), 40.0, np.float32)
    points = sd.backproject(depth, cam)
    assert points.shape == ((~lost).sum(), 3) and np.isfinite(points).all()
    mesh = depth_to_mesh(depth, cam)
    assert mesh.GetNumberOfPoints() == (~lost).sum() and np.isfinite(mesh.GetBounds()).all()


def test_projection_is_exact_up_to_90_degrees_off_axis():
    """A lens that reaches 90° off axis inside the frame (f(ρ) = −40 + 4e-3 ρ² + 6e-5 ρ³). Catches: projection
    by Newton's method on ρ + r·f(ρ) = 0 from the pinhole guess diverging from ~80° off axis (points 87 px from
    their pixel, up to millions of px on real fisheye calibrations), which the TSDF fusion projects voxels with;
    pixel → ray → pixel must be exact for every pixel up to 89.9°, in numpy and torch."""
    cam = sd.Intrinsics(40.0, 40.4, 80.3, 58.7, 160, 120,
                        distortion={"model": "ocam", "coeffs": [1.01, 0.002, -0.003, -40.0, 0.0, 4e-3, 6e-5]})
    rays = pixel_rays(cam)
    angle = np.degrees(np.arctan(np.hypot(rays[..., 0], rays[..., 1])))
    seen = angle < 89.9  # NaN (no forward ray) compares False
    assert angle[seen].max() > 89.5
    v, u = np.mgrid[0:120, 0:160].astype(np.float64)
    xd, yd = distort_normalized(rays[..., 0][seen], rays[..., 1][seen], cam.distortion)
    np.testing.assert_allclose(xd * cam.fx + cam.cx, u[seen], atol=1e-9)
    np.testing.assert_allclose(yd * cam.fy + cam.cy, v[seen], atol=1e-9)
    xt, yt = distort_normalized(torch.from_numpy(rays[..., 0][seen]), torch.from_numpy(rays[..., 1][seen]),
                                cam.distortion)
    np.testing.assert_allclose(xt.numpy(), xd, atol=1e-12)
    np.testing.assert_allclose(yt.numpy(), yd, atol=1e-12)
