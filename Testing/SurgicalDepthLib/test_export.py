"""save_points / save_mesh / load_mesh: every format re-read with VTK's own readers."""
from __future__ import annotations

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOPLY import vtkPLYReader

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.export import load_mesh, save_mesh, save_points
from SurgicalDepthLib.polydata import depth_to_mesh, to_polydata


@pytest.fixture
def cloud():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-50, 50, (2000, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (2000, 3), dtype=np.uint8)
    return pts, colors, to_polydata(pts, colors)


@pytest.fixture
def mesh():
    yy, xx = np.mgrid[0:40, 0:50]
    depth = (80.0 + 0.2 * xx + 0.1 * yy).astype(np.float32)
    rgb = np.stack([xx * 5, yy * 6, np.full_like(xx, 77)], -1).astype(np.uint8)
    return rgb, depth_to_mesh(depth, Intrinsics(60.0, 60.0, 24.5, 19.5, 50, 40), rgb)


@pytest.mark.parametrize("suffix", [".ply", ".vtp", ".vtk", ".obj"])
def test_points_round_trip(tmp_path, cloud, suffix):
    pts, colors, poly = cloud
    path = save_points(tmp_path / f"cloud{suffix}", poly)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    back = load_mesh(path)
    assert back.GetNumberOfPoints() == 2000 and back.GetNumberOfVerts() == 2000
    np.testing.assert_allclose(vtk_to_numpy(back.GetPoints().GetData()), pts, atol=1e-4)
    if suffix != ".obj":  # OBJ stores geometry only
        np.testing.assert_array_equal(vtk_to_numpy(back.GetPointData().GetArray("RGB")), colors)


@pytest.mark.parametrize("name", ["cloud.PLY", "cloud.Vtp", "mesh.STL", "mesh.OBJ"])
def test_upper_case_suffixes_write_the_named_file_and_nothing_else(tmp_path, cloud, mesh, name):
    """Bug caught: "cloud.PLY" written through a temporary ".cloud.XXXX.PLY" to which VTK's PLY writer appends
    ".ply": the writer's file is left behind as a stray hidden file and the save fails."""
    data = mesh[1] if name.startswith("mesh") else cloud[2]
    (save_mesh if name.startswith("mesh") else save_points)(tmp_path / name, data)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert load_mesh(tmp_path / name).GetNumberOfPoints() == data.GetNumberOfPoints()


def test_ply_is_binary_with_colour_properties(tmp_path, cloud):
    _, colors, poly = cloud
    path = save_points(tmp_path / "c.ply", poly)
    header = path.read_bytes()[:400].decode("latin-1")
    assert "format binary" in header and "property uchar red" in header and "property uchar blue" in header
    reader = vtkPLYReader()  # VTK's own reader, not ours
    reader.SetFileName(str(path))
    reader.Update()
    np.testing.assert_array_equal(vtk_to_numpy(reader.GetOutput().GetPointData().GetArray("RGB")), colors)


@pytest.mark.parametrize("suffix", [".ply", ".vtp", ".vtk", ".stl", ".obj"])
def test_mesh_round_trip(tmp_path, mesh, suffix):
    rgb, poly = mesh
    path = save_mesh(tmp_path / f"mesh{suffix}", poly)
    back = load_mesh(path)
    assert back.GetNumberOfPoints() == poly.GetNumberOfPoints() == 2000
    assert back.GetNumberOfPolys() == poly.GetNumberOfPolys() == 2 * 39 * 49
    got, want = vtk_to_numpy(back.GetPoints().GetData()), vtk_to_numpy(poly.GetPoints().GetData())
    if suffix == ".stl":  # STL stores triangle corners; the reader merges them back in its own order
        got, want = got[np.lexsort(got.T)], want[np.lexsort(want.T)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    if suffix in (".ply", ".vtp", ".vtk"):
        np.testing.assert_array_equal(vtk_to_numpy(back.GetPointData().GetArray("RGB")), rgb.reshape(-1, 3))
    if suffix == ".vtk":
        assert b"BINARY" in path.read_bytes()[:300]


def test_errors(tmp_path, cloud):
    _, _, poly = cloud
    with pytest.raises(ValueError, match=r"suffix '.xyz' is not one of .ply, .vtp, .vtk, .obj"):
        save_points(tmp_path / "a.xyz", poly)
    with pytest.raises(ValueError, match=r"suffix '.stl' is not one of"):
        save_points(tmp_path / "a.stl", poly)
    with pytest.raises(ValueError, match="STL stores triangles only"):
        save_mesh(tmp_path / "a.stl", poly)
    with pytest.raises(ValueError, match=r"suffix '\(none\)'"):
        save_mesh(tmp_path / "noext", poly)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_mesh(tmp_path / "missing" / "a.ply", poly)
    with pytest.raises(TypeError, match="polydata must be a vtkPolyData, got ndarray"):
        save_mesh(tmp_path / "a.ply", np.zeros((3, 3)))
    with pytest.raises(FileNotFoundError, match="mesh file not found"):
        load_mesh(tmp_path / "nope.ply")
    assert list(tmp_path.iterdir()) == []
