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


def test_sequence_index_values():
    assert sh.sequence_index_values(3, None) == ["0", "1", "2"]
    assert sh.sequence_index_values(3, 0) == ["0", "1", "2"]
    assert sh.sequence_index_values(3, 25) == ["0.000", "0.040", "0.080"]
    assert sh.sequence_index_values(2, 1000) == ["0.0000", "0.0010"]
    values = sh.sequence_index_values(300, 29.97)
    assert len(set(values)) == 300 and [float(v) for v in values] == sorted(float(v) for v in values)
    with pytest.raises(ValueError):
        sh.sequence_index_values(-1, 25)


def test_chunks():
    assert [list(r) for r in sh.chunks(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(sh.chunks(0, 4)) == []
    with pytest.raises(ValueError, match="chunk_size"):
        list(sh.chunks(3, 0))


def test_depth_display_range():
    depth = np.arange(101, dtype=np.float32).reshape(1, 101)  # 0 is invalid -> values 1..100
    depth2 = np.array([[np.nan, np.inf, -5.0]], dtype=np.float32)
    lo, hi = sh.depth_display_range([depth, depth2])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(np.arange(1, 101), [2, 98])))
    assert sh.depth_display_range([np.full((2, 2), 7.0)])[0] == 7.0
    assert sh.depth_display_range([np.full((2, 2), 7.0)])[1] > 7.0
    with pytest.raises(ValueError, match="no finite positive"):
        sh.depth_display_range([np.zeros((2, 2))])


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
    with pytest.raises(ValueError, match="frame: expected a one-slice"):
        sh.rgb_from_volume_array(np.zeros((2, 2, 3, 3)), "frame")


def test_predict_depth_mm_maps_disparity_into_range():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = sd.load_model("random:surgical-depth-tiny", device="cpu")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (28, 42, 3), dtype=np.uint8) for _ in range(3)]
    calls = []
    depths = sh.predict_depth_mm(model, frames, 28, 5.0, 80.0, chunk_size=2,
                                 progress=lambda n: calls.append(n) or True)
    assert calls == [2, 3] and len(depths) == 3
    for frame, depth in zip(frames, depths):
        assert depth.shape == (28, 42) and depth.dtype == np.float32
        # relative model: disparity percentiles 2/98 mapped linearly in inverse depth onto [5, 80] mm
        assert model.output_kind == "disparity"
        expected = sd.disparity_to_depth(model.infer_image(frame, 28), depth_range=(5.0, 80.0),
                                         percentiles=(2.0, 98.0))
        # batched vs single-image inference differ by float32 rounding only
        assert np.allclose(depth, np.nan_to_num(expected, nan=0.0), rtol=1e-4, atol=1e-4)
        assert depth.min() >= 5.0 - 1e-4 and depth.max() <= 80.0 + 1e-4
    stopped = sh.predict_depth_mm(model, frames, 28, 5.0, 80.0, chunk_size=1, progress=lambda n: False)
    assert len(stopped) == 1
    with pytest.raises(ValueError, match="near_mm < far_mm"):
        sh.predict_depth_mm(model, frames, 28, 80.0, 5.0)


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
