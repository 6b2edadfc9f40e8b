"""Calibration files as real tools write them (cv2.FileStorage, ROS camera_calibration_parsers, Kalibr, COLMAP) read
to the right camera, checked against OpenCV's own undistortion; the readers' other cases are in test_camera.py."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

import SurgicalDepthLib as sd
from SurgicalDepthLib.camera import Intrinsics, parse_intrinsics

W, H = 64, 48
K = np.array([[52.0, 0.0, 31.25], [0.0, 51.5, 23.75], [0.0, 0.0, 1.0]])
FISHEYE_D = np.array([[0.05], [-0.01], [0.003], [-0.0005]])  # 4×1, as cv2.fisheye.calibrate returns D
RATIONAL_D = np.array([[-0.21, 0.05, 0.001, -0.0008, -0.004, 0.02, 0.003, 0.001]])  # CALIB_RATIONAL_MODEL: 1×8


def _write_storage(path, values: dict) -> None:
    """A file written by OpenCV (``cv2.FileStorage``: ``%YAML:1.0`` YAML, XML or JSON by suffix)."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    for name, value in values.items():
        fs.write(name, value)
    fs.release()


def _opencv_points(depth: np.ndarray, K: np.ndarray, D: np.ndarray, fisheye: bool) -> np.ndarray:
    """float64 [H·W, 3] points of every pixel, by OpenCV's own undistortion of the camera (K, D) (iterated to
    convergence), independently of SurgicalDepthLib."""
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]].astype(np.float64)
    pix = np.stack([u.ravel(), v.ravel()], -1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-15)
    if fisheye:
        rays = cv2.fisheye.undistortPoints(pix, K, D, criteria=criteria)
    else:
        rays = cv2.undistortPoints(pix, K, D, criteria=criteria)
    rays = rays.reshape(-1, 2)
    return depth.reshape(-1, 1) * np.concatenate([rays, np.ones((rays.shape[0], 1))], 1)


def _depth(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(20.0, 80.0, (H, W)).astype(np.float32)


def _assert_backprojects_like_opencv(intr: Intrinsics, K: np.ndarray, D: np.ndarray, fisheye: bool) -> None:
    depth = _depth()
    np.testing.assert_allclose(sd.backproject(depth, intr), _opencv_points(depth, K, D, fisheye), rtol=2e-6,
                               atol=2e-5)


@pytest.mark.parametrize("suffix", [".yaml", ".xml", ".json"])
def test_fisheye_calibration_saved_without_its_model_is_refused_not_guessed(tmp_path, suffix):
    """``K, D`` of ``cv2.fisheye.calibrate`` saved with ``cv2.FileStorage`` (K, D and the image size, no model
    field). Catches: its k1..k4 read without a word as the pinhole model's k1 k2 p1 p2 (a wrong lens: rays off by
    pixels towards the corners). Four coefficients name no model: refused with the file and the fix; stated, each
    model reads and back-projects as OpenCV's own undistortion."""
    path = tmp_path / f"fisheye{suffix}"
    _write_storage(path, {"K": K, "D": FISHEYE_D, "image_width": W, "image_height": H})
    with pytest.raises(ValueError, match=rf"^intrinsics file .*fisheye{suffix}: 4 distortion coefficients and no "
                                         r"distortion_model.*'distortion_model: fisheye'"):
        Intrinsics.from_file(path)
    for model, fisheye in (("fisheye", True), ("equidistant", True), ("plumb_bob", False)):
        _write_storage(path, {"K": K, "D": FISHEYE_D, "distortion_model": model, "image_width": W,
                              "image_height": H})
        intr = Intrinsics.from_file(path)
        assert intr == Intrinsics(52.0, 51.5, 31.25, 23.75, W, H, {"model": "fisheye" if fisheye else "opencv",
                                                                   "coeffs": FISHEYE_D.ravel().tolist()})
        _assert_backprojects_like_opencv(intr, K, FISHEYE_D, fisheye)


def test_cli_refuses_an_ambiguous_calibration_in_one_line(tmp_path):
    """The CLI (``stream --intrinsics``, checked before the service starts) on the file above. Catches: the fisheye
    calibration accepted as a pinhole lens; a traceback instead of one line naming the file (exit 2)."""
    path = tmp_path / "scope.yml"
    _write_storage(path, {"camera_matrix": K, "distortion_coefficients": FISHEYE_D, "image_width": W,
                          "image_height": H})
    missing = tmp_path / "no_model.safetensors"  # a file that is read stops at the model, not a service started
    proc = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", "stream", "--intrinsics", str(path),
                           "--model", str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and f"{path}: 4 distortion coefficients" in proc.stderr


ROS_OST = """image_width: 64
image_height: 48
camera_name: davinci_left
camera_matrix:
  rows: 3
  cols: 3
  data: [52.0, 0.0, 31.25, 0.0, 51.5, 23.75, 0.0, 0.0, 1.0]
distortion_model: {model}
distortion_coefficients:
  rows: 1
  cols: {n}
  data: [{coeffs}]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [52.0, 0.0, 31.25, 0.0, 0.0, 51.5, 23.75, 0.0, 0.0, 0.0, 1.0, 0.0]
"""


def _ros_file(tmp_path, model: str, coeffs: np.ndarray):
    """A camera_info YAML as ROS's camera_calibration_parsers writes it (``writeCalibrationYml``: ost.yaml)."""
    path = tmp_path / "left.yaml"
    path.write_text(ROS_OST.format(model=model, n=coeffs.size, coeffs=", ".join(map(repr, coeffs.ravel().tolist()))))
    return path


def test_equidistant_lens_with_zero_coefficients_is_not_a_pinhole(tmp_path):
    """A ROS camera_info of an ideal equidistant (f-theta) lens: ``distortion_model: equidistant``, D all zero (a
    fisheye calibrated with its k1..k4 fixed). Catches: the zeros read as "no distortion", i.e. a pinhole — r =
    tan θ instead of θ, a corner ray ~20 % off here; and a ROS rational_polynomial file back-projecting unlike
    OpenCV."""
    intr = Intrinsics.from_file(_ros_file(tmp_path, "equidistant", np.zeros(4)))
    assert intr.distortion == {"model": "fisheye", "coeffs": [0.0, 0.0, 0.0, 0.0]}
    _assert_backprojects_like_opencv(intr, K, np.zeros(4), fisheye=True)
    intr = Intrinsics.from_file(_ros_file(tmp_path, "rational_polynomial", RATIONAL_D))
    assert intr.distortion == {"model": "opencv", "coeffs": RATIONAL_D.ravel().tolist()}
    _assert_backprojects_like_opencv(intr, K, RATIONAL_D, fisheye=False)


CAMCHAIN = """cam0:
  camera_model: pinhole
  intrinsics: [52.0, 51.5, 31.25, 23.75]
  distortion_model: {model}
  distortion_coeffs: [0.05, -0.01, 0.003, -0.0005]
  T_cam_imu:
  - [0.0148655429818, -0.999880929698, 0.00414029679422, -0.0216401454975]
  - [0.999557249008, 0.0149672133247, 0.025715529948, -0.064676986768]
  - [-0.0257744366974, 0.00375618835797, 0.999660727178, 0.00981073058949]
  - [0.0, 0.0, 0.0, 1.0]
  timeshift_cam_imu: -8.121e-05
  rostopic: /cam0/image_raw
  resolution: [64, 48]
"""
CAM1 = """cam1:
  T_cn_cnm1:
  - [0.999997256477797, 0.002317135723275, 0.000343393120620, -0.110074137800478]
  - [-0.002312067192432, 0.999898048507103, -0.014090668452683, 0.000399257366387]
  - [-0.000376008102320, 0.014089835846691, 0.999900662638081, -0.000853702503358]
  - [0.0, 0.0, 0.0, 1.0]
  camera_model: pinhole
  intrinsics: [52.3, 51.9, 32.0, 24.1]
  distortion_model: radtan
  distortion_coeffs: [-0.28, 0.07, 0.0002, 0.00002]
  rostopic: /cam1/image_raw
  resolution: [64, 48]
"""


@pytest.mark.parametrize("model, fisheye", [("radtan", False), ("equidistant", True)])
def test_kalibr_camchain(tmp_path, model, fisheye):
    """Kalibr's camchain.yaml (wiki "Yaml formats": intrinsics [fu, fv, pu, pv], resolution [w, h]). Catches: the
    file refused as missing a 'camera_matrix' (and without naming the formats that are read); radtan and
    equidistant mapped to the wrong OpenCV model; a two-camera chain (a stereo scope) read as either camera."""
    path = tmp_path / "camchain-scope.yaml"
    path.write_text(CAMCHAIN.format(model=model))
    intr = Intrinsics.from_file(path)
    coeffs = [0.05, -0.01, 0.003, -0.0005]
    assert intr == Intrinsics(52.0, 51.5, 31.25, 23.75, 64, 48, {"model": "fisheye" if fisheye else "opencv",
                                                                 "coeffs": coeffs})
    _assert_backprojects_like_opencv(intr, K, np.array(coeffs), fisheye)
    path.write_text(CAMCHAIN.format(model=model) + CAM1)
    with pytest.raises(ValueError, match=r"camchain-scope\.yaml is a Kalibr camchain with 2 cameras \['cam0', "
                                         r"'cam1'\]"):
        Intrinsics.from_file(path)
    path.write_text(CAMCHAIN.format(model=model).replace("pinhole", "omni"))
    with pytest.raises(ValueError, match=r"camchain-scope\.yaml: Kalibr cam0\.camera_model 'omni' is not supported"):
        Intrinsics.from_file(path)


COLMAP_HEADER = ("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                 "# Number of cameras: 1\n")


@pytest.mark.parametrize("line, fx, fy, distortion", [
    ("SIMPLE_PINHOLE 64 48 52 31.75 24.25", 52.0, 52.0, None),
    ("PINHOLE 64 48 52 51.5 31.75 24.25", 52.0, 51.5, None),
    ("SIMPLE_RADIAL 64 48 52 31.75 24.25 -0.2", 52.0, 52.0, {"model": "opencv", "coeffs": [-0.2, 0, 0, 0]}),
    ("RADIAL 64 48 52 31.75 24.25 -0.2 0.04", 52.0, 52.0, {"model": "opencv", "coeffs": [-0.2, 0.04, 0, 0]}),
    ("OPENCV 64 48 52 51.5 31.75 24.25 -0.2 0.04 0.001 -0.002", 52.0, 51.5,
     {"model": "opencv", "coeffs": [-0.2, 0.04, 0.001, -0.002]}),
    ("FULL_OPENCV 64 48 52 51.5 31.75 24.25 -0.21 0.05 0.001 -0.0008 -0.004 0.02 0.003 0.001", 52.0, 51.5,
     {"model": "opencv", "coeffs": RATIONAL_D.ravel().tolist()}),
    ("OPENCV_FISHEYE 64 48 52 51.5 31.75 24.25 0.05 -0.01 0.003 -0.0005", 52.0, 51.5,
     {"model": "fisheye", "coeffs": FISHEYE_D.ravel().tolist()}),
    ("RADIAL_FISHEYE 64 48 52 31.75 24.25 0.05 -0.01", 52.0, 52.0, {"model": "fisheye", "coeffs": [0.05, -0.01, 0, 0]}),
])
def test_colmap_cameras_txt(tmp_path, line, fx, fy, distortion):
    """COLMAP's cameras.txt, each model that maps onto OpenCV's (src/colmap/sensor/models.h). COLMAP puts the centre
    of the top-left pixel at (0.5, 0.5) (doc/faq.rst), so its (31.75, 24.25) is OpenCV's (31.25, 23.75). Catches:
    the file refused as "found a non-number: '#'" (formats not named); its principal point taken as is (every ray
    half a pixel off)."""
    path = tmp_path / "cameras.txt"
    path.write_text(COLMAP_HEADER + "1 " + line + "\n")
    intr = Intrinsics.from_file(path)
    assert intr == Intrinsics(fx, fy, 31.25, 23.75, 64, 48, distortion)
    Kc = np.array([[fx, 0.0, 31.25], [0.0, fy, 23.75], [0.0, 0.0, 1.0]])
    D = np.asarray(distortion["coeffs"] if distortion else np.zeros(4))
    _assert_backprojects_like_opencv(intr, Kc, D, fisheye=bool(distortion) and distortion["model"] == "fisheye")


def test_colmap_calibration_is_rescaled_to_the_frames_and_odd_files_refused(tmp_path):
    """A COLMAP camera at twice the frames' size: its centred principal point (w/2, h/2) in COLMAP's convention
    stays the frames' centre ((w - 1)/2 in OpenCV's) after rescaling. Catches also: several different cameras, or a
    model with no OpenCV counterpart, read as something else rather than refused with the models that are read."""
    path = tmp_path / "cameras.txt"
    path.write_text(COLMAP_HEADER + "1 PINHOLE 128 96 104 103 64 48\n")
    assert parse_intrinsics(path, 64, 48) == Intrinsics(52.0, 51.5, 31.5, 23.5, 64, 48)
    path.write_text(COLMAP_HEADER + "1 PINHOLE 128 96 104 103 64 48\n2 PINHOLE 128 96 104 103 64 48\n")
    assert Intrinsics.from_file(path) == Intrinsics(104.0, 103.0, 63.5, 47.5, 128, 96)  # the same camera twice
    path.write_text(COLMAP_HEADER + "1 PINHOLE 128 96 104 103 64 48\n2 PINHOLE 128 96 104 103 65 48\n")
    with pytest.raises(ValueError, match=r"cameras\.txt \(COLMAP cameras\.txt\) holds 2 different cameras"):
        Intrinsics.from_file(path)
    path.write_text(COLMAP_HEADER + "1 FOV 128 96 104 103 64 48 0.9\n")
    with pytest.raises(ValueError, match=r"cameras\.txt: COLMAP camera model FOV is not supported; expected one "
                                         r"of SIMPLE_PINHOLE, PINHOLE, .*OPENCV_FISHEYE$"):
        Intrinsics.from_file(path)
    path.write_text(COLMAP_HEADER + "1 OPENCV 128 96 104 103 64 48 0.1\n")
    with pytest.raises(ValueError, match=r"cameras\.txt: COLMAP OPENCV takes 8 parameters, got 5"):
        Intrinsics.from_file(path)


@pytest.mark.parametrize("name, write", [
    ("intrinsics.yml", lambda p: _write_storage(p, {"M1": K, "D1": RATIONAL_D, "M2": K, "D2": RATIONAL_D})),
    ("left.ini", lambda p: p.write_text("# oST version 5.0 parameters\n\n\n[image]\n\nwidth\n64\n\nheight\n48\n\n"
                                        "[narrow_stereo]\n\ncamera matrix\n52 0 31.25\n0 51.5 23.75\n0 0 1\n")),
])
def test_an_unsupported_format_is_refused_naming_the_supported_ones(tmp_path, name, write):
    """OpenCV's stereo_calib sample output (M1, D1, M2, D2) and ROS's Videre INI. Catches errors that left the user
    guessing ("expected a 3x3 'camera_matrix', got nothing", "found a non-number: 'image'"): one line naming the
    file and the formats that are read."""
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=rf"^intrinsics file .*{name}.*; supported: OpenCV FileStorage .*Kalibr "
                                         r"camchain, COLMAP cameras\.txt") as err:
        Intrinsics.from_file(path)
    assert "\n" not in str(err.value)
