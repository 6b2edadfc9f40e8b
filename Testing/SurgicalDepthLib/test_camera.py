"""Intrinsics: distortion round trips against cv2.projectPoints, file formats, scaling, defaults."""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from SurgicalDepthLib.camera import Intrinsics, distort_normalized, parse_intrinsics, pixel_rays
from SurgicalDepthLib.geometry import backproject

OPENCV_DIST = {"model": "opencv", "coeffs": [-0.28, 0.09, 0.0012, -0.0009, -0.012]}
FISHEYE_DIST = {"model": "fisheye", "coeffs": [0.08, -0.02, 0.004, -0.0006]}


def _project(intr: Intrinsics, pts: np.ndarray) -> np.ndarray:
    """Pixel coordinates of camera-frame points [N, 3] with OpenCV's own projection."""
    zero = np.zeros(3)
    if intr.distortion is None:
        img, _ = cv2.projectPoints(pts, zero, zero, intr.K, None)
    elif intr.distortion["model"] == "fisheye":
        img, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), zero, zero, intr.K, intr.dist_coeffs)
    else:
        img, _ = cv2.projectPoints(pts, zero, zero, intr.K, intr.dist_coeffs)
    return img.reshape(-1, 2)


@pytest.mark.parametrize("dist", [None, OPENCV_DIST, FISHEYE_DIST], ids=["pinhole", "opencv", "fisheye"])
def test_rays_invert_opencv_projection(dist):
    intr = Intrinsics(420.0, 410.0, 161.3, 118.7, 320, 240, dist)
    rays = intr.undistorted_rays()
    assert rays.shape == (240, 320, 2)
    # every pixel's ray, projected back by OpenCV, lands on that pixel centre
    z = np.linspace(20.0, 150.0, rays[..., 0].size)
    pts = np.concatenate([rays.reshape(-1, 2) * z[:, None], z[:, None]], axis=1)
    uv = _project(intr, pts)
    u, v = np.meshgrid(np.arange(320.0), np.arange(240.0))
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], 1), atol=1e-6)


@pytest.mark.parametrize("dist", [OPENCV_DIST, FISHEYE_DIST, {"model": "opencv", "coeffs":
                                  [-0.2, 0.05, 0.001, 0.002, 0.01, 0.02, -0.01, 0.003, 1e-3, -1e-3, 2e-3, 5e-4]}])
def test_distort_normalized_matches_opencv(dist):
    intr = Intrinsics(300.0, 300.0, 100.0, 80.0, 200, 160, dist)
    rng = np.random.default_rng(1)
    xy = rng.uniform(-0.4, 0.4, (500, 2))
    uv = _project(intr, np.concatenate([xy, np.ones((500, 1))], 1))
    xd, yd = distort_normalized(xy[:, 0], xy[:, 1], intr.distortion)
    np.testing.assert_allclose(np.stack([xd * intr.fx + intr.cx, yd * intr.fy + intr.cy], 1), uv, atol=1e-8)
    torch = pytest.importorskip("torch")
    xt, yt = distort_normalized(torch.from_numpy(xy[:, 0]), torch.from_numpy(xy[:, 1]), intr.distortion)
    np.testing.assert_allclose(xt.numpy(), xd, atol=1e-12)
    np.testing.assert_allclose(yt.numpy(), yd, atol=1e-12)


def test_scaled_is_consistent_with_resizing():
    intr = Intrinsics(500.0, 480.0, 330.0, 250.0, 640, 480, OPENCV_DIST)
    half = intr.scaled(320, 240)
    assert (half.width, half.height, half.distortion) == (320, 240, intr.distortion)
    # a 3D point projects to pixel p at full size and to (p + 0.5) / 2 - 0.5 at half size (pixel-centre rule)
    X = np.array([[12.0, -7.0, 90.0]])
    np.testing.assert_allclose(_project(half, X), (_project(intr, X) + 0.5) / 2 - 0.5, atol=1e-9)
    back = half.scaled(640, 480)
    for f in ("fx", "fy", "cx", "cy"):
        assert getattr(back, f) == pytest.approx(getattr(intr, f), abs=1e-12)


def test_dict_round_trip_and_K_form():
    intr = Intrinsics(500.0, 480.0, 330.0, 250.0, 640, 480, FISHEYE_DIST)
    assert Intrinsics.from_dict(json.loads(json.dumps(intr.to_dict()))) == intr
    k_form = {"K": intr.K.tolist(), "dist": FISHEYE_DIST, "width": 640, "height": 480}
    assert Intrinsics.from_dict(k_form) == intr
    plain = Intrinsics.from_dict({"K": intr.K.tolist(), "dist": [0.1, 0.01, 0, 0], "width": 640, "height": 480})
    assert plain.distortion == {"model": "opencv", "coeffs": [0.1, 0.01, 0.0, 0.0]}


def test_from_file_json(tmp_path):
    intr = Intrinsics(500.0, 480.0, 330.0, 250.0, 640, 480, OPENCV_DIST)
    p = tmp_path / "cam.json"
    p.write_text(json.dumps(intr.to_dict()))
    assert Intrinsics.from_file(p) == intr
    p2 = tmp_path / "k.json"
    p2.write_text(json.dumps({"K": intr.K.tolist(), "dist": OPENCV_DIST["coeffs"], "width": 640, "height": 480}))
    assert Intrinsics.from_file(p2) == intr
    with pytest.raises(ValueError, match="are for 640x480, but 320x240 was given"):
        Intrinsics.from_file(p, 320, 240)


def test_from_file_opencv_filestorage(tmp_path):
    intr = Intrinsics(500.0, 480.0, 330.0, 250.0, 640, 480, OPENCV_DIST)
    for suffix in (".yaml", ".xml"):
        p = tmp_path / f"calib{suffix}"
        fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_WRITE)
        fs.write("image_width", 640)
        fs.write("image_height", 480)
        fs.write("camera_matrix", intr.K)
        fs.write("distortion_coefficients", np.asarray(OPENCV_DIST["coeffs"]).reshape(1, -1))
        fs.release()
        got = Intrinsics.from_file(p)
        assert got.size == (640, 480) and got.distortion["model"] == "opencv"
        np.testing.assert_allclose(got.K, intr.K)
        np.testing.assert_allclose(got.dist_coeffs, OPENCV_DIST["coeffs"])


def test_from_file_ros_yaml_fisheye(tmp_path):
    p = tmp_path / "ost.yaml"
    p.write_text("image_width: 320\nimage_height: 240\ncamera_name: scope\n"
                 "camera_matrix:\n  rows: 3\n  cols: 3\n  data: [210.0, 0.0, 160.5, 0.0, 205.0, 119.0, 0.0, 0.0, 1.0]\n"
                 "distortion_model: equidistant\n"
                 "distortion_coefficients:\n  rows: 1\n  cols: 4\n  data: [0.08, -0.02, 0.004, -0.0006]\n")
    got = Intrinsics.from_file(p)
    assert got == Intrinsics(210.0, 205.0, 160.5, 119.0, 320, 240, FISHEYE_DIST)


@pytest.mark.parametrize("name", ["cam.txt", "cam.json", "cam.yaml"])
def test_binary_calibration_file_names_the_file(tmp_path, name):
    """Catches: a binary file given as a calibration failing with Python's bare "'utf-8' codec can't decode"
    (no file named) in predict / reconstruct / evaluate."""
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    with pytest.raises(ValueError, match=f"intrinsics file .*{name} is not a text file"):
        Intrinsics.from_file(path, 640, 480)


def test_from_file_text_matrix(tmp_path):
    p = tmp_path / "camera_intrinsics.txt"
    p.write_text("156.0418,0,178.5604\n0,155.7529,181.8043\n0,0,1\n")  # EndoSLAM layout
    got = Intrinsics.from_file(p, 320, 320)
    assert (got.fx, got.fy, got.cx, got.cy, got.width, got.height) == (156.0418, 155.7529, 178.5604, 181.8043,
                                                                       320, 320)
    with pytest.raises(ValueError, match="holds no image size; pass width and height"):
        Intrinsics.from_file(p)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3")
    with pytest.raises(ValueError, match="expected 9 numbers .* got 3"):
        Intrinsics.from_file(bad, 10, 10)
    with pytest.raises(FileNotFoundError, match=r"intrinsics file .* does not exist"):
        Intrinsics.from_file(tmp_path / "missing.json")


def test_from_fov_default_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="SurgicalDepthLib.camera"):
        intr = Intrinsics.from_fov(640, 480)
    assert "no camera intrinsics given" in caplog.text
    assert intr.cx == 319.5 and intr.cy == 239.5 and intr.fx == intr.fy
    # the left and right image borders (pixel edges) lie at ±35° for the default 70° FOV
    assert np.degrees(np.arctan((intr.width / 2) / intr.fx)) == pytest.approx(35.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="SurgicalDepthLib.camera"):
        Intrinsics.from_fov(640, 480, fov_deg=90)
    assert caplog.text == ""


def test_parse_intrinsics(tmp_path):
    assert parse_intrinsics("500,490,320,240", 640, 480) == Intrinsics(500, 490, 320, 240, 640, 480)
    p = tmp_path / "cam.json"
    p.write_text(json.dumps(Intrinsics(1000.0, 1000.0, 639.5, 479.5, 1280, 960).to_dict()))
    half = parse_intrinsics(str(p), 640, 480)
    assert (half.fx, half.cx, half.cy) == (500.0, 319.5, 239.5)
    with pytest.raises(ValueError, match="aspect ratio"):
        parse_intrinsics(p, 640, 640)
    with pytest.raises(FileNotFoundError, match="neither 'fx,fy,cx,cy' nor an existing file"):
        parse_intrinsics("nope.json", 640, 480)
    txt = tmp_path / "K.txt"
    txt.write_text("500 0 320 0 500 240 0 0 1")
    assert parse_intrinsics(txt, 640, 480).fx == 500.0


@pytest.mark.parametrize("kwargs, msg", [
    (dict(fx=0.0), r"Intrinsics.fx must be > 0, got 0.0"),
    (dict(width=0), r"Intrinsics size must be positive integers, got 0x480"),
    (dict(cx=float("nan")), r"Intrinsics.cx must be a finite number"),
    (dict(distortion={"model": "kb", "coeffs": [0, 0, 0, 0]}),
     r"must be one of \('opencv', 'fisheye', 'ocam'\), got 'kb'"),
    (dict(distortion={"model": "fisheye", "coeffs": [0.1, 0.2]}), r"'fisheye' takes 4 coefficients, got 2"),
])
def test_invalid_intrinsics(kwargs, msg):
    args = dict(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640, height=480) | kwargs
    with pytest.raises(ValueError, match=msg):
        Intrinsics(**args)


def test_pixel_rays_pinhole_closed_form():
    intr = Intrinsics(100.0, 50.0, 2.0, 1.0, 5, 3)
    rays = pixel_rays(intr)
    np.testing.assert_array_equal(rays[1, :, 0], (np.arange(5) - 2.0) / 100.0)
    np.testing.assert_array_equal(rays[:, 3, 1], (np.arange(3) - 1.0) / 50.0)


def test_fisheye_rays_are_exact_and_stop_where_the_fitted_polynomial_turns():
    """A scope's fitted fisheye polynomial (C3VD's: θd stops increasing at 76°, inside the frame's corners).
    Inside its range the rays are OpenCV's own inversion (independent) and project back to the pixel; beyond it
    they are the limit ray in the pixel's own direction. Bugs caught: OpenCV's -1e6 rays beyond the range (the lens
    factor ~0 there, back-projected points at infinity), a non-converged inversion near the limit, flipped
    directions."""
    import cv2

    from SurgicalDepthLib.camera import distort_normalized, pixel_rays
    from SurgicalDepthLib.fisheye import fisheye_angles

    coeffs = [-0.18867185058223412, -0.003927337093919806, 0.030524814153620117, -0.012756926010904904]
    cam = Intrinsics(153.48, 153.5, 135.41, 108.33, 270, 216, {"model": "fisheye", "coeffs": coeffs})
    rays = pixel_rays(cam)
    assert np.isfinite(rays).all()
    u, v = np.meshgrid(np.arange(270.0), np.arange(216.0))
    xd, yd = (u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy
    rd = np.hypot(xd, yd)
    inside = rd < 0.9  # the polynomial rises up to θd = 0.928 (θ = 76.1°)
    ref = cv2.fisheye.undistortPoints(np.stack([u, v], -1).reshape(-1, 1, 2), cam.K, cam.dist_coeffs,
                                      criteria=(3, 100, 1e-14)).reshape(216, 270, 2)
    np.testing.assert_allclose(rays[inside], ref[inside], atol=1e-9)
    x, y = distort_normalized(rays[..., 0], rays[..., 1], cam.distortion)
    np.testing.assert_allclose(np.stack([x, y], -1)[inside], np.stack([xd, yd], -1)[inside], atol=1e-12)
    beyond = rd > 0.93
    assert beyond.sum() > 100
    theta = np.degrees(np.arctan(np.hypot(rays[..., 0], rays[..., 1])))
    np.testing.assert_allclose(theta[beyond], np.degrees(fisheye_angles(np.array(10.0), coeffs)), atol=1e-9)
    assert 75.9 < theta[beyond].min() < 76.1 and theta.max() <= theta[beyond].max() + 1e-9
    np.testing.assert_allclose(np.arctan2(rays[..., 1], rays[..., 0])[beyond], np.arctan2(yd, xd)[beyond],
                               atol=1e-12)


TILTED = {"model": "opencv", "coeffs": [-0.1, 0.01, 0.001, -0.002, 0.003, 0.01, -0.002, 0.001, 0.001, -0.001, 0.002,
                                        0.0005, 0.05, -0.03]}


def test_tilted_sensor_model_matches_opencv():
    """Catches: the 14-coefficient model (CALIB_TILTED_MODEL) accepted by ``Intrinsics`` and back-projected, yet
    refused by ``distort_normalized`` (so by the fusion at its first frame), or a tilt map that differs from
    OpenCV's ``computeTiltProjectionMatrix`` (checked through ``cv2.projectPoints``, the independent peer)."""
    intr = Intrinsics(100.0, 100.0, 50.0, 40.0, 100, 80, TILTED)
    xy = np.random.default_rng(0).uniform(-0.5, 0.5, (200, 2))
    uv = _project(intr, np.concatenate([xy, np.ones((200, 1))], 1))
    xd, yd = distort_normalized(xy[:, 0], xy[:, 1], TILTED)
    np.testing.assert_allclose(np.stack([xd * 100 + 50, yd * 100 + 40], 1), uv, atol=1e-9)
    rays = pixel_rays(intr)
    assert np.isfinite(rays).all()
    u, v = np.meshgrid(np.arange(100.0), np.arange(80.0))
    pts = np.concatenate([rays.reshape(-1, 2), np.ones((8000, 1))], 1)
    np.testing.assert_allclose(_project(intr, pts), np.stack([u.ravel(), v.ravel()], 1), atol=1e-6)


def test_opencv_pixels_past_the_turning_point_have_no_ray():
    """Strong barrel distortion whose radial factor turns inside the frame: OpenCV's iteration returns a ray for
    every pixel, but past the turn none projects back onto its pixel. Catches: those rays kept (points folded
    back up to 300 px away, mesh normals facing away from the camera) — they are NaN, and back-projection and
    meshing leave those pixels out; every ray kept projects back through OpenCV within 1e-3 px."""
    from SurgicalDepthLib.polydata import depth_to_mesh

    intr = Intrinsics(160.0, 160.0, 159.5, 127.5, 320, 256, {"model": "opencv", "coeffs": [-0.4, 0.2, 0, 0, -0.05]})
    rays = pixel_rays(intr)
    lost = np.isnan(rays).any(-1)
    assert 0.05 < lost.mean() < 0.8 and not lost[100:156, 120:200].any()  # the corners, never the centre
    u, v = np.meshgrid(np.arange(320.0), np.arange(256.0))
    kept = np.concatenate([rays[~lost], np.ones(((~lost).sum(), 1))], 1)
    np.testing.assert_allclose(_project(intr, kept), np.stack([u[~lost], v[~lost]], 1), atol=1e-3)
    depth = np.full((256, 320), 50.0, np.float32)
    points = backproject(depth, intr)
    assert points.shape == ((~lost).sum(), 3) and np.isfinite(points).all()
    mesh = depth_to_mesh(depth, intr)
    assert mesh.GetNumberOfPoints() == (~lost).sum()
    bounds = np.asarray(mesh.GetBounds())
    assert np.isfinite(bounds).all() and np.abs(bounds).max() < 1e4


def test_scaled_refuses_a_fractional_size():
    """Catches: ``scaled(127.9, 96)`` silently truncated to 127 px wide with fx scaled by 127.9/128."""
    with pytest.raises(ValueError, match="positive integers"):
        Intrinsics(100.0, 100.0, 63.5, 47.5, 128, 96).scaled(127.9, 96)


def test_calibration_files_opencv_lists_and_camera_info(tmp_path):
    """Catches: a camera matrix written as a plain YAML list (and a ROS CameraInfo message dump: K, D, width,
    height) failing with OpenCV's "isMap()" assertion (a traceback, exit 1) — ``node.mat()`` was asked first; the
    message's own image size ignored; a file stating one of the two sizes mixed with the frame's other side."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("image_width: 128\nimage_height: 96\ncamera_matrix: [100, 0, 63.5, 0, 100, 47.5, 0, 0, 1]\n"
                    "distortion_coefficients: [0.1, 0.01, 0, 0, 0]\n")
    want = Intrinsics(100.0, 100.0, 63.5, 47.5, 128, 96, {"model": "opencv", "coeffs": [0.1, 0.01, 0, 0, 0]})
    assert Intrinsics.from_file(flat) == want
    message = tmp_path / "camera_info.yaml"
    message.write_text("header: {frame_id: scope}\nheight: 96\nwidth: 128\ndistortion_model: plumb_bob\n"
                       "D: [0.1, 0.01, 0, 0, 0]\nK: [100, 0, 63.5, 0, 100, 47.5, 0, 0, 1]\n")
    assert Intrinsics.from_file(message) == want
    assert parse_intrinsics(message, 256, 192) == want.scaled(256, 192)  # its own size, rescaled to the frames
    one = tmp_path / "one.yaml"
    one.write_text("image_width: 128\ncamera_matrix: [100, 0, 63.5, 0, 100, 47.5, 0, 0, 1]\n")
    with pytest.raises(ValueError, match=r"one\.yaml states only one of image_width/image_height"):
        parse_intrinsics(one, 128, 96)


@pytest.mark.parametrize("name, text, field", [
    ("broken.yaml", "camera_matrix: [1,2\n  bad: : :\n", "not valid OpenCV YAML/XML"),
    ("cut.xml", '<?xml version="1.0"?>\n<opencv_storage>\n<camera_matrix type_id', "not valid OpenCV YAML/XML"),
    ("coeffs.json", '{"fx": 50, "fy": 50, "cx": 31.5, "cy": 23.5, "width": 64, "height": 48, '
                    '"distortion": {"model": "opencv", "coeffs": "ab"}}', r"distortion\['coeffs'\] must be numbers"),
    ("k.json", '{"K": "abc", "width": 64, "height": 48}', "'K' must hold numbers"),
    ("three.yaml", "image_width: 128\nimage_height: 96\ncamera_matrix: [100, 0, 63.5, 0, 100, 47.5, 0, 0, 1]\n"
                   "distortion_coefficients: [0.1, 0.01, 0]\n", "takes 4 or 5 or 8 or 12 or 14 coefficients, got 3"),
    ("bool.json", '{"fx": 50, "fy": 50, "cx": 31.5, "cy": 23.5, "width": true, "height": 48}', "positive integers"),
])
def test_bad_calibration_values_name_the_file_and_field(tmp_path, name, text, field):
    """Catches: OpenCV's parser error escaping as ``SystemError`` (traceback, exit 1, missed by callers catching
    ValueError); a bad value's message without the file ("could not convert string to float: 'ab'"); ``width:
    true`` read as 1 px and reported as a principal point outside a 1×48 image."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^intrinsics file .*{name}.*{field}"):
        Intrinsics.from_file(path)


def test_check_calibration_file_reads_all_but_the_size(tmp_path):
    """``check_calibration_file`` (``stream --intrinsics`` at startup) refuses what no frame size can fix and
    passes a file that leaves the size to the frames. Catches: a bare K refused for lacking a size, or a broken
    one (wrong count of numbers, a JSON without fx) passed until the first frame."""
    from SurgicalDepthLib.calibration_files import check_calibration_file

    good = tmp_path / "K.txt"
    good.write_text("100 0 63.5\n0 100 47.5\n0 0 1\n")
    check_calibration_file(good)
    sized = tmp_path / "fx.json"
    sized.write_text('{"fx": 50, "fy": 50, "cx": 31.5, "cy": 23.5}')
    check_calibration_file(sized)
    for name, text, msg in (("five.txt", "1 2 3 4 5", "got 5"), ("nofx.json", '{"fy": 50, "cx": 1, "cy": 2}',
                                                                  r"missing \['fx'\]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"{name}.*{msg}"):
            check_calibration_file(tmp_path / name)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
@pytest.mark.parametrize("name, text", [
    ("cam.txt", "156.0418,0,178.5604\r\n0,155.7529,181.8043\r\n0,0,1\r\n"),
    ("cam.json", '{"fx": 156.0418, "fy": 155.7529, "cx": 178.5604, "cy": 181.8043, "width": 320, "height": 320}'),
    ("cam.yaml", "image_width: 320\r\nimage_height: 320\r\ncamera_matrix:\r\n  rows: 3\r\n  cols: 3\r\n"
                 "  data: [156.0418, 0.0, 178.5604, 0.0, 155.7529, 181.8043, 0.0, 0.0, 1.0]\r\n")])
def test_calibration_files_written_by_windows_tools(tmp_path, name, text, encoding):
    """Catches calibration files refused for how Windows tools save text: Notepad's UTF-8 byte-order mark ("could
    not convert string to float: '\\ufeff156.0418'", JSON's "Unexpected UTF-8 BOM") and PowerShell 5's ``>``
    (UTF-16 with its mark: "is not a text file"), with CRLF line ends. Each reads as the plain UTF-8 file does."""
    plain, marked = tmp_path / f"plain_{name}", tmp_path / name
    plain.write_text(text.replace("\r\n", "\n"), encoding="utf-8")
    marked.write_bytes(text.encode(encoding))
    assert Intrinsics.from_file(marked, 320, 320) == Intrinsics.from_file(plain, 320, 320)
    assert Intrinsics.from_file(plain, 320, 320).fx == 156.0418


def test_opencv_rays_of_a_wide_monotone_lens_reach_every_pixel_exactly():
    """Barrel distortion k1 = -0.3, k2 = 0.1 (with tangential terms) rises over the whole frame (its radial map
    never turns), so every pixel has a ray. Catches: ``cv2.undistortPoints``' fixed-point iteration oscillating in
    the corners — there 526 of 76,800 pixels were dropped as "past the turning point" (NaN: holes in clouds and in
    the lens factor) and others kept ~1e-3 px off; each ray must project back through OpenCV within 1e-6 px."""
    intr = Intrinsics(150.0, 151.5, 161.1, 118.45, 320, 240,
                      {"model": "opencv", "coeffs": [-0.3, 0.1, 0.001, -0.002]})
    rays = pixel_rays(intr)
    assert np.isfinite(rays).all()
    u, v = np.meshgrid(np.arange(320.0), np.arange(240.0))
    uv = _project(intr, np.concatenate([rays.reshape(-1, 2), np.ones((rays[..., 0].size, 1))], 1))
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], 1), atol=1e-6)


def _write_storage(path, values: dict) -> None:
    """A calibration file written by OpenCV itself (``cv2.FileStorage``; YAML, XML or JSON by suffix)."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    for name, value in values.items():
        fs.write(name, value)
    fs.release()


K_640 = np.array([[800.0, 0.0, 639.5], [0.0, 810.0, 359.25], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("suffix", [".yaml", ".xml", ".json"])
@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (8,), (1, 12), (14, 1)])  # 4: see test_calibration_files
def test_files_written_by_cv2_filestorage_read_as_written(tmp_path, suffix, shape):
    """``cv2.calibrateCamera``'s K and distortion saved by ``cv2.FileStorage`` in each of its formats, the
    coefficients in each layout it returns them. Catches: FileStorage's JSON (``{"camera_matrix": {"type_id":
    "opencv-matrix", "rows", "cols", "dt", "data"}}``) refused as missing fx, fy, cx, cy."""
    dist = (np.arange(1, int(np.prod(shape)) + 1) * 1e-3).reshape(shape)
    path = tmp_path / f"calibration{suffix}"
    _write_storage(path, {"image_width": 1280, "image_height": 720, "camera_matrix": K_640,
                          "distortion_coefficients": dist})
    intr = Intrinsics.from_file(path)
    np.testing.assert_array_equal(intr.K, K_640)
    assert intr.size == (1280, 720) and intr.distortion["model"] == "opencv"
    np.testing.assert_array_equal(intr.dist_coeffs, dist.ravel())


@pytest.mark.parametrize("suffix", [".yaml", ".xml", ".json"])
def test_opencv_calibration_sample_fisheye_flag(tmp_path, suffix):
    """OpenCV's calibration sample (``samples/cpp/tutorial_code/calib3d/camera_calibration``) saves a fisheye
    calibration as ``fisheye_model: 1`` beside ``camera_matrix`` and 4×1 ``distortion_coefficients``. Catches: the
    flag ignored and k1..k4 read as the pinhole model's k1, k2, p1, p2 (a wrong lens, silently)."""
    coeffs = np.array([[0.05], [-0.01], [0.003], [-0.0005]])
    path = tmp_path / f"out_camera_data{suffix}"
    _write_storage(path, {"image_width": 640, "image_height": 480, "flags": 0, "fisheye_model": 1,
                          "camera_matrix": K_640 / 2 + np.diag([0, 0, 0.5]), "distortion_coefficients": coeffs})
    assert Intrinsics.from_file(path).distortion == {"model": "fisheye", "coeffs": coeffs.ravel().tolist()}
    _write_storage(path, {"image_width": 640, "image_height": 480, "fisheye_model": 0,
                          "camera_matrix": K_640 / 2 + np.diag([0, 0, 0.5]), "distortion_coefficients": coeffs})
    assert Intrinsics.from_file(path).distortion["model"] == "opencv"


ROS2_ECHO = """header:
  stamp:
    sec: 1700000000
    nanosec: 5
  frame_id: ''
height: 96
width: 128
distortion_model: equidistant
d:
- 0.05
- -0.01
- 0.003
- -0.0005
k:
- 100.0
- 0.0
- 63.5
- 0.0
- 100.0
- 47.5
- 0.0
- 0.0
- 1.0
binning_x: 0
roi:
  x_offset: 0
  width: 0
  do_rectify: false
---
"""


def test_ros_camera_info_messages_in_yaml_and_json(tmp_path):
    """CameraInfo messages as ``ros2 topic echo`` prints them (lower-case ``k``/``d``, block lists, a closing
    ``---``) and as JSON (rosbridge, Foxglove: ``K`` rows, ``D``). Catches: the echo refused by OpenCV's YAML
    parser ("Incorrect indentation"), and the JSON's ``D`` dropped without a word (distortion None)."""
    want = Intrinsics(100.0, 100.0, 63.5, 47.5, 128, 96, {"model": "fisheye", "coeffs": [0.05, -0.01, 0.003, -5e-4]})
    echo = tmp_path / "camera_info.yaml"
    echo.write_text(ROS2_ECHO)
    assert Intrinsics.from_file(echo) == want
    message = tmp_path / "camera_info.json"
    message.write_text(json.dumps({"height": 96, "width": 128, "distortion_model": "equidistant",
                                   "D": want.distortion["coeffs"], "K": want.K.tolist()}))
    assert Intrinsics.from_file(message) == want
    message.write_text(json.dumps({"height": 96, "width": 128, "D": [-0.1, 0.01, 0, 0, 0], "K": want.K.tolist()}))
    assert Intrinsics.from_file(message).distortion == {"model": "opencv", "coeffs": [-0.1, 0.01, 0, 0, 0]}


_K_YAML = "camera_matrix: [100, 0, 63.5, 0, 100, 47.5, 0, 0, 1]\n"


@pytest.mark.parametrize("name, text, field", [
    ("model.yaml", "image_width: 128\nimage_height: 96\n" + _K_YAML + "distortion_model: unified\n"
                   "distortion_coefficients: [0.1, 0.01, 0, 0, 0]\n", "distortion_model 'unified' is not supported"),
    ("scalar.yaml", "image_width: 128\nimage_height: 96\n" + _K_YAML + "distortion_coefficients: 0.1\n",
     "'distortion_coefficients' must be a matrix or a list"),
    ("text.yaml", "image_width: abc\nimage_height: 96\n" + _K_YAML, "'image_width' must be a number, got 'abc'"),
    ("frac.yaml", "image_width: 128.5\nimage_height: 96\n" + _K_YAML, "positive integers, got 128.5x96"),
    ("frac.json", '{"K": [[100, 0, 63.5], [0, 100, 47.5], [0, 0, 1]], "width": 128.5, "height": 96}',
     "positive integers, got 128.5x96"),
    ("dist.json", '{"K": [[100, 0, 63.5], [0, 100, 47.5], [0, 0, 1]], "dist": ["a"], "width": 128, "height": 96}',
     "'dist' must be a list of numbers"),
    ("flag.yaml", "image_width: 128\nimage_height: 96\nfisheye_model: 2\n" + _K_YAML +
                  "distortion_coefficients: [0.1, 0.01, 0, 0]\n", "'fisheye_model' must be 0 or 1"),
])
def test_calibration_fields_of_the_wrong_kind_are_named(tmp_path, name, text, field):
    """Catches values that were read silently wrong: an unsupported ``distortion_model`` (Mei's ``unified``) read
    as OpenCV's pinhole model; a scalar ``distortion_coefficients`` ignored; ``image_width: 128.5`` truncated to
    128 (YAML, and JSON with ``K``); ``image_width: abc`` read as 1.8e308 px (reported as a bad focal length); and a
    message without the field (``could not convert string to float: 'a'``)."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^intrinsics file .*{name}.*{field}"):
        Intrinsics.from_file(path)
