"""Tests of SurgicalDepthLib.slicer_helpers: the Slicer-free part of the Surgical Depth module."""
from __future__ import annotations

import json
import logging
from importlib import metadata

import numpy as np
import pytest

import SurgicalDepthLib as sd
from SurgicalDepthLib import slicer_helpers as sh


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = q, rng.normal(size=3) * 20
    return pose


def test_camera_to_ras_axes():
    assert np.allclose(np.linalg.det(sh.CAMERA_TO_RAS), 1.0)
    assert np.allclose(sh.CAMERA_TO_RAS @ sh.CAMERA_TO_RAS.T, np.eye(3))
    pts = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 3, 50]], dtype=np.float32)
    out = sh.camera_to_ras(pts)
    assert out.dtype == np.float32
    # x right -> Left (R = -x); y down -> Inferior (S = -y); z forward -> Posterior (A = -z)
    assert np.array_equal(out, [[-1, 0, 0], [0, 0, -1], [0, -1, 0], [-2, -50, -3]])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        sh.camera_to_ras(np.zeros((3, 2)))


def test_pose_to_ras_forward_motion_and_consistency(rng):
    forward = np.eye(4)
    forward[2, 3] = 10.0  # camera moves 10 mm along its viewing direction
    assert np.allclose(sh.pose_to_ras(forward)[:3, 3], [0, -10, 0])  # = 10 mm posterior
    pose = _random_pose(rng)
    p = rng.normal(size=3)
    world_ras = sh.camera_to_ras((pose[:3, :3] @ p + pose[:3, 3])[None])[0]
    t = sh.pose_to_ras(pose)
    assert np.allclose(t[:3, :3] @ sh.camera_to_ras(p[None])[0] + t[:3, 3], world_ras, atol=1e-4)
    assert np.allclose(t[3], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="4x4"):
        sh.pose_to_ras(np.eye(3))


def test_image_ijk_to_ras_layout():
    m = sh.image_ijk_to_ras(5, 3, spacing=0.5)
    ras = lambda i, j, k: (m @ [i, j, k, 1])[:3]  # noqa: E731
    assert np.allclose(ras(2, 1, 0), [0, 0, 0])  # image centre at the origin
    assert np.allclose(ras(0, 0, 0), [1.0, 0, 0.5])  # top-left pixel: patient Right (screen left), Superior
    assert np.allclose(ras(4, 0, 0) - ras(3, 0, 0), [-0.5, 0, 0])  # u -> Left, 0.5 mm per pixel
    assert np.allclose(ras(0, 1, 0) - ras(0, 0, 0), [0, 0, -0.5])  # v -> Inferior
    assert np.allclose(np.linalg.det(m[:3, :3]), 0.125)
    with pytest.raises(ValueError, match="spacing"):
        sh.image_ijk_to_ras(5, 3, spacing=0)
    with pytest.raises(ValueError, match="width and height"):
        sh.image_ijk_to_ras(0, 3)


def test_intrinsics_from_fields():
    assert sh.intrinsics_from_fields(0, 0, 0, 0, 640, 480) is None
    intr = sh.intrinsics_from_fields(500, 510, 319.5, 239.5, 640, 480)
    assert intr == sd.Intrinsics(500, 510, 319.5, 239.5, 640, 480)
    with pytest.raises(ValueError, match="cx, cy = 0"):
        sh.intrinsics_from_fields(500, 500, 0, 0, 640, 480)


def test_resolve_intrinsics_sources(tmp_path, caplog):
    given = sd.Intrinsics(400, 400, 319.5, 239.5, 640, 480)
    assert sh.resolve_intrinsics(640, 480, given) is given
    half = sh.resolve_intrinsics(320, 240, given)
    assert (half.fx, half.cx, half.cy, half.size) == (200, 159.5, 119.5, (320, 240))
    with pytest.raises(ValueError, match="aspect ratio"):
        sh.resolve_intrinsics(640, 640, given)
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 300, "fy": 301, "cx": 100, "cy": 80, "width": 200, "height": 160}))
    from_file = sh.resolve_intrinsics(200, 160, None, str(calib), (500, 500, 1, 1))
    assert (from_file.fx, from_file.fy, from_file.cx, from_file.cy) == (300, 301, 100, 80)
    resized = sh.resolve_intrinsics(100, 80, None, str(calib))  # a file for the full-size video: rescaled
    assert (resized.fx, resized.cx, resized.size) == (150, 49.75, (100, 80))
    from_fields = sh.resolve_intrinsics(200, 160, None, None, (500, 501, 99.5, 79.5))
    assert (from_fields.fx, from_fields.fy) == (500, 501)
    with caplog.at_level(logging.WARNING):
        fov = sh.resolve_intrinsics(200, 160, None, ".", (0, 0, 0, 0))
    assert fov == sd.Intrinsics.from_fov(200, 160, 70.0) and "field of view" in caplog.text


def test_model_source():
    assert sh.model_source("default") == "default"
    assert sh.model_source("file", " /tmp/model.pth ") == "/tmp/model.pth"
    assert sh.model_source("registry", registry_name="depth-anything-v2-small") == "depth-anything-v2-small"
    with pytest.raises(ValueError, match="no checkpoint path"):
        sh.model_source("file", ".")
    with pytest.raises(ValueError, match="no registry name"):
        sh.model_source("registry", registry_name=" ")
    with pytest.raises(ValueError, match="one of"):
        sh.model_source("url")


def test_path_or_none():
    from pathlib import Path

    assert sh.path_or_none(Path()) is None and sh.path_or_none("") is None and sh.path_or_none(None) is None
    assert sh.path_or_none(Path("/a/b.mp4")) == "/a/b.mp4"


def test_index_value_and_sequence_index_values():
    """Catches output sequences indexed differently from the frames they come from (a stride or a start frame
    must give the source frame's own index value, e.g. frame 50 at 25 fps -> "2.000")."""
    assert sh.index_value(50, 25) == "2.000" == sh.sequence_index_values(51, 25)[50]
    assert sh.index_value(7, None) == "7" and sh.index_value(7, float("nan")) == "7"
    with pytest.raises(ValueError, match="frame index"):
        sh.index_value(-1, 25)
    assert sh.sequence_index_values(3, None) == ["0", "1", "2"]
    assert sh.sequence_index_values(3, 0) == ["0", "1", "2"]
    assert sh.sequence_index_values(3, 25) == ["0.000", "0.040", "0.080"]
    assert sh.sequence_index_values(2, 1000) == ["0.0000", "0.0010"]
    values = sh.sequence_index_values(300, 29.97)
    assert len(set(values)) == 300 and [float(v) for v in values] == sorted(float(v) for v in values)
    with pytest.raises(ValueError):
        sh.sequence_index_values(-1, 25)


def test_requirements_helpers():
    text = "# comment\ntorch>=2.1  # cuda via SlicerPyTorch\n\n-r other.txt\nscipy>=1.10\n"
    reqs = sh.parse_requirements(text)
    assert reqs == ["torch>=2.1", "scipy>=1.10"]
    assert sh.torch_requirement(reqs) == "torch>=2.1"
    assert sh.torch_requirement(["scipy"]) is None
    installed = {"torch": "2.0.1", "scipy": "1.11.0"}

    def version_of(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    assert sh.missing_requirements(reqs + ["tqdm"], version_of) == ["torch>=2.1", "tqdm"]
    assert sh.missing_requirements(['pywin32; sys_platform == "nonexistent"'], version_of) == []
    # real lookup in this Python
    assert sh.missing_requirements(["pytest>=1", "surely-not-installed-package-xyz"]) == \
        ["surely-not-installed-package-xyz"]


def test_format_bytes():
    assert sh.format_bytes(512) == "512 B"
    assert sh.format_bytes(1536) == "1.5 KiB"
    assert sh.format_bytes(3 * 1024 ** 3) == "3.0 GiB"


def test_rgb_from_volume_array():
    arr = np.arange(1 * 2 * 3 * 4, dtype=np.uint8).reshape(1, 2, 3, 4)
    rgb = sh.rgb_from_volume_array(arr)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and np.array_equal(rgb, arr[0, :, :, :3])
    rgb[0, 0, 0] = 255
    assert arr[0, 0, 0, 0] == 0  # a copy, not a view of the volume
    three = np.zeros((1, 2, 3, 3), np.uint8)  # exactly RGB and contiguous: still a copy, not a view
    assert not np.shares_memory(sh.rgb_from_volume_array(three), three)
    with pytest.raises(ValueError, match="frame: expected a one-slice"):
        sh.rgb_from_volume_array(np.zeros((2, 2, 3, 3)), "frame")


def test_rgb_from_volume_array_scales_16_bit_and_refuses_other_types():
    """Catches 16-bit RGB frames (16-bit PNG / TIFF, which Slicer loads as unsigned short) cast to uint8 modulo 256:
    (65535, 32768, 256) became (255, 0, 0), a silently wrong image for the model, or read otherwise than predict
    reads the same 16-bit file (its high byte); float or signed voxels are refused with the volume's name and type
    instead of being truncated to (almost) black."""
    arr = np.array([[[[65535, 32768, 256], [1000, 0, 300]]]], np.uint16)
    assert sh.rgb_from_volume_array(arr).tolist() == [[[255, 128, 1], [3, 0, 1]]]
    for dtype in (np.float32, np.int16):
        with pytest.raises(ValueError, match=f"frame: RGB voxels .* got {np.dtype(dtype)}"):
            sh.rgb_from_volume_array(np.ones((1, 2, 2, 3), dtype), "frame")
    from SurgicalDepthLib.slicer_source import array_source

    with pytest.raises(ValueError, match="seq: RGB voxels .* got float64"):  # before any model is loaded
        array_source("seq", [np.ones((1, 2, 2, 3))], range(1), str, lambda i: np.eye(4))


@pytest.mark.parametrize("fps", [25.0, 29.97, 1000.0, 90000.0])
def test_index_tolerance_keeps_consecutive_frames_apart(fps):
    """Catches two frames made one sequence item: at 1000 fps (what OpenCV reports for many browser-recorded webm
    files) the frame times 0.0000 and 0.0010 differed by no more than Slicer's default NumericIndexValueTolerance
    (0.001), so SetDataNodeAtValue overwrote every other frame."""
    values = [float(v) for v in sh.sequence_index_values(4, fps)]
    tolerance = sh.index_tolerance(fps)
    assert 0 < tolerance <= sh.SLICER_INDEX_TOLERANCE == 0.001
    assert min(b - a for a, b in zip(values, values[1:])) > 2 * tolerance
    assert sh.index_tolerance(None) == 0.001


def test_polydata_to_ras_points_and_normals():
    intr = sd.Intrinsics(20, 20, 4.5, 3.5, 10, 8)
    depth = np.full((8, 10), 50.0, dtype=np.float32)  # a wall facing the camera
    mesh = sd.depth_to_mesh(depth, intr)
    from vtkmodules.util.numpy_support import vtk_to_numpy

    before = vtk_to_numpy(mesh.GetPoints().GetData()).copy()
    out = sh.polydata_to_ras(mesh)
    assert out is mesh
    assert np.allclose(vtk_to_numpy(mesh.GetPoints().GetData()), sh.camera_to_ras(before))
    normals = vtk_to_numpy(mesh.GetPointData().GetNormals())
    # camera-facing normal (0, 0, -1) in the camera frame points Anterior (towards the camera) in RAS
    assert np.allclose(normals, [0, 1, 0], atol=1e-5)
    assert mesh.GetPointData().GetArray("Depth") is not None  # other arrays untouched


def test_weights_cached_is_bool_and_checks_name():
    assert isinstance(sh.weights_cached("depth-anything-v2-small"), bool)
    with pytest.raises((KeyError, ValueError)):
        sh.weights_cached("no-such-model")


def test_nodes_record_defaults():
    a, b = sh.SurgicalDepthNodes(), sh.SurgicalDepthNodes()
    assert a.browser is None and a.frameCount == 0 and a.proxies == {}
    a.proxies["x"] = 1
    assert b.proxies == {}  # no shared mutable default


def test_copy_ijk_to_ras_gives_the_input_frames_geometry():
    """Catches a depth overlay misplaced in sequence mode: the depth volume must get the input frame's own IJK to
    RAS (spacing, origin, directions), not the fixed image_ijk_to_ras of a video, and a copy of it."""
    given = np.array([[0.5, 0, 0, 10.0], [0, 0, -0.5, -20.0], [0, 2.0, 0, 30.0], [0, 0, 0, 1]])
    got = sh.copy_ijk_to_ras(given)
    assert np.array_equal(got, given) and got is not given and got.dtype == np.float64
    got[0, 3] = 99.0
    assert given[0, 3] == 10.0
    assert not np.allclose(got, sh.image_ijk_to_ras(70, 56))
    for bad in (np.eye(3), np.full((4, 4), np.nan), np.zeros((4, 4)), np.ones((4, 4))):
        with pytest.raises(ValueError, match="IJK to RAS"):
            sh.copy_ijk_to_ras(bad)


def test_depth_threshold_hides_nan_only():
    """Catches invalid depth drawn in the "near" colour: vtkImageThreshold keeps a pixel when
    ``lower <= value <= upper`` (Imaging/Core/vtkImageThreshold.cxx), false for NaN, so with ApplyThreshold the
    NaN pixels get alpha 0 while every valid depth (mm) stays visible."""
    lo, hi = sh.DEPTH_THRESHOLD_MM
    kept = lambda v: bool(lo <= v <= hi)  # noqa: E731  (the filter's comparison)
    assert not kept(float("nan"))
    assert all(kept(v) for v in (1e-3, 5.0, 120.0, 5000.0))


def test_default_intrinsics_are_the_cli_default():
    """Catches Slicer and the CLI assuming different cameras when none is given (one default field of view)."""
    from SurgicalDepthLib.camera import DEFAULT_FOV_DEG, parse_intrinsics

    assert sh.resolve_intrinsics(640, 480) == parse_intrinsics(None, 640, 480) == \
        sd.Intrinsics.from_fov(640, 480, DEFAULT_FOV_DEG)


def test_missing_requirements_any_opencv_distribution_satisfies_opencv():
    """Catches opencv-python-headless installed on top of a user's opencv-python (two cv2 packages overwrite each
    other's files): any OpenCV distribution at a matching version satisfies the OpenCV requirement."""
    installed = {"opencv-contrib-python": "4.10.0"}

    def version_of(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    assert sh.missing_requirements(["opencv-python-headless>=4.8"], version_of) == []
    assert sh.missing_requirements(["opencv-python-headless>=4.11"], version_of) == ["opencv-python-headless>=4.11"]
    assert sh.missing_requirements(["opencv_python_headless>=4.8"], version_of) == []  # canonical names
    installed.clear()
    assert sh.missing_requirements(["opencv-python-headless>=4.8"], version_of) == ["opencv-python-headless>=4.8"]


def test_imported_requirements():
    """Catches a missing restart prompt: a package upgraded while its old version is loaded needs a restart."""
    packages = {"cv2": ["opencv-python"], "yaml": ["PyYAML"], "torch": ["torch"]}
    reqs = ["torch>=2.1", "pyyaml>=6.0", "opencv-python-headless>=4.8", "timm"]
    assert sh.imported_requirements(reqs, ["yaml", "sys"], packages) == ["pyyaml>=6.0"]
    assert sh.imported_requirements(reqs, [], packages) == []


class _Slicer:
    """Records the calls ensure_requirements makes to the functions Slicer would pass."""

    def __init__(self, *, torch_ok=True, confirm=True):
        self.calls, self.torch_ok, self.answer = [], torch_ok, confirm

    def install_torch(self, spec):
        self.calls.append(("torch", spec))
        return self.torch_ok

    def pip_ensure(self, reqs):
        self.calls.append(("pip_ensure", list(reqs)))

    def pip_install(self, reqs):
        self.calls.append(("pip_install", list(reqs)))

    def confirm(self, text):
        self.calls.append(("confirm", text))
        return self.answer

    def restart(self):
        self.calls.append(("restart",))

    def run(self, reqs, installed, *, testing=False, modules=(), torch=True, ensure=True, ask=True):
        def version_of(name):
            if name not in installed:
                raise metadata.PackageNotFoundError(name)
            return installed[name]

        return sh.ensure_requirements(reqs, testing=testing, modules=modules, ask=ask, confirm=self.confirm,
                                      install_torch=self.install_torch if torch else None,
                                      pip_ensure=self.pip_ensure if ensure else None, pip_install=self.pip_install,
                                      restart=self.restart, version_of=version_of)


REQS = ["torch>=2.1", "timm>=1.0.3", "opencv-python-headless>=4.8", "scipy>=1.10"]


def test_ensure_requirements_testing_mode_installs_nothing():
    """Catches self-tests that crash (or install) on extension build machines: testing mode raises
    MissingRequirements naming what is missing, and nothing is installed."""
    fake = _Slicer()
    with pytest.raises(sh.MissingRequirements, match="testing mode.*torch>=2.1") as info:
        fake.run(REQS, {"scipy": "1.11"}, testing=True)
    assert info.value.missing == REQS[:3] and fake.calls == []
    assert fake.run(REQS, {"torch": "2.3", "timm": "1.0.9", "opencv-python": "4.9", "scipy": "1.11"},
                    testing=True) == []  # nothing missing: fine even in testing mode


def test_ensure_requirements_torch_through_slicer_pytorch_rest_in_one_call():
    """Catches one pip call per package (inconsistent resolution, N prompts) and torch from PyPI when SlicerPyTorch
    can pick the CUDA build: torch goes to SlicerPyTorch with its specifier, the rest in ONE pip_ensure call."""
    fake = _Slicer()
    missing = fake.run(REQS, {"opencv-python": "4.9"})
    assert missing == ["torch>=2.1", "timm>=1.0.3", "scipy>=1.10"]
    assert fake.calls == [("torch", ">=2.1"), ("pip_ensure", ["timm>=1.0.3", "scipy>=1.10"])]
    fake = _Slicer(torch_ok=False)
    with pytest.raises(sh.MissingRequirements, match="PyTorch installation was declined"):
        fake.run(REQS, {})
    assert fake.calls == [("torch", ">=2.1")]


def test_ensure_requirements_before_slicer_packaging():
    """Catches installing without asking, or one pip process per package, on Slicer < 5.12 (no slicer.packaging):
    one confirmation, then one pip_install call with the whole list; declining installs nothing."""
    fake = _Slicer()
    fake.run(REQS, {}, torch=False, ensure=False)
    assert [c[0] for c in fake.calls] == ["confirm", "pip_install"]
    assert fake.calls[1] == ("pip_install", REQS)  # one call, the whole list
    assert "torch>=2.1" in fake.calls[0][1]
    fake = _Slicer(confirm=False)
    with pytest.raises(sh.MissingRequirements, match="declined"):
        fake.run(REQS, {}, torch=False, ensure=False)
    assert [c[0] for c in fake.calls] == ["confirm"]
    fake = _Slicer()
    fake.run(REQS, {}, torch=False, ensure=False, ask=False)
    assert [c[0] for c in fake.calls] == ["pip_install"]


def test_ensure_requirements_offers_a_restart_for_loaded_old_versions(monkeypatch):
    """Catches an upgraded package used in its old, already imported version: a restart is offered (pip_ensure
    offers its own for what it installs, so only torch, installed by SlicerPyTorch, is left to this prompt)."""
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"torch": ["torch"], "scipy": ["scipy"]})
    old = {"torch": "2.0", "scipy": "1.9", "timm": "1.0.9", "opencv-python": "4.9"}
    fake = _Slicer()
    fake.run(REQS, old, modules=["torch", "scipy"])
    assert [c[0] for c in fake.calls] == ["torch", "pip_ensure", "confirm", "restart"]
    assert "torch>=2.1" in fake.calls[2][1] and "scipy" not in fake.calls[2][1]
    fake = _Slicer()
    fake.run(REQS, old, modules=["scipy"], torch=False, ensure=False)
    assert [c[0] for c in fake.calls] == ["confirm", "pip_install", "confirm", "restart"]


def test_download_weights_cancel_keeps_a_resumable_partial_file(tmp_path, monkeypatch):
    """Catches a download dialog whose Cancel does nothing: False from the progress callback raises Cancelled
    inside weights.download; nothing is left under the final name (nor a recorded digest), only the partial file
    that the next download resumes."""
    import dataclasses
    import hashlib
    import io
    import urllib.request

    from SurgicalDepthLib import weights

    class Response(io.BytesIO):
        headers = {"Content-Length": str(3 << 20)}

    content = b"x" * (3 << 20)  # stands in for the official file: the registry entry pinned to its digest and size
    name = "depth-anything-v2-small"
    monkeypatch.setitem(weights.WEIGHTS, name, dataclasses.replace(
        weights.WEIGHTS[name], sha256=hashlib.sha256(content).hexdigest(), size=len(content)))
    monkeypatch.setattr(weights, "cache_dir", lambda root=None: tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(content))  # ignores Range: 200
    seen = []
    with pytest.raises(sh.Cancelled, match="cancelled"):
        sh.download_weights(name, lambda fraction, text: seen.append(fraction) or len(seen) < 2)
    assert seen == pytest.approx([0, 1 / 3])
    (partial,) = tmp_path.iterdir()
    assert partial.name.startswith(".depth_anything_v2_vits.pth.") and partial.name.endswith(".partial")
    assert partial.stat().st_size == 1 << 20
    path = sh.download_weights(name, lambda fraction, text: True)
    assert path.read_bytes() == content and list(tmp_path.iterdir()) == [path]  # pinned: no recorded digest


def test_has_calibration_only_for_a_real_camera():
    """Catches: the panel's empty path field ('.' from ctkPathLineEdit) or unset fields (fx = 0) taken for a
    calibration, which would correct the depth to the guessed 70° lens; a given file, Intrinsics or fields not."""
    assert not sh.has_calibration(None, "", 0.0) and not sh.has_calibration(None, ".", 0.0)
    assert not sh.has_calibration(None, None, 0.0)
    assert sh.has_calibration(None, "/data/scope.yaml", 0.0) and sh.has_calibration(None, "", 412.5)
    assert sh.has_calibration(object(), "", 0.0)


def test_logic_self_test_runs_the_tests_beside_the_module(tmp_path, caplog):
    """Catches a module self-test ("Reload and Test", ctest ``py_SurgicalDepth``) that ran nothing and passed: the
    module's test class had no test method, so Slicer's default runTest only logged "No test is defined". A failing
    logic test must fail the module's test; a missing file (an installed extension) is said, not passed silently."""
    import unittest

    folder = tmp_path / "Testing" / "Python"
    folder.mkdir(parents=True)
    (folder / "DemoLogicTest.py").write_text(
        "import unittest\n"
        "class DemoLogicTest(unittest.TestCase):\n"
        "    def test_passes(self):\n"
        "        self.assertTrue(True)\n"
        "    def test_checks(self):\n"
        "        self.assertEqual(open(__file__).read().count('FAIL' + 'S'), 0)\n")

    class Module(unittest.TestCase):
        def runTest(self):
            sh.logic_self_test(tmp_path, "DemoLogicTest", self)

    assert unittest.TextTestRunner().run(Module()).wasSuccessful()
    (folder / "DemoLogicTest.py").write_text((folder / "DemoLogicTest.py").read_text() + "# FAILS\n")
    result = unittest.TextTestRunner().run(Module())
    assert len(result.failures) == 1 and "1 failed, 0 errors of 2" in result.failures[0][1]
    with caplog.at_level(logging.WARNING):
        sh.logic_self_test(tmp_path / "installed", "DemoLogicTest", Module())
    assert "not found" in caplog.text
