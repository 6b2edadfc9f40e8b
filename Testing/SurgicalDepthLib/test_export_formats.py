"""save_points / save_mesh read back by readers other than load_mesh: the PLY bytes parsed with numpy (binary
little endian), VTK's own readers for the "Depth" array, and Open3D (when installed) for every format it reads."""
from __future__ import annotations

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.export import load_mesh, save_mesh, save_points
from SurgicalDepthLib.polydata import depth_to_mesh, to_polydata


def _cloud() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.uniform(-50, 50, (300, 3)).astype(np.float32), rng.integers(0, 256, (300, 3), dtype=np.uint8),
            rng.uniform(1, 200, 300).astype(np.float32))


def _mesh():
    """A depth mesh of a tilted plane, 30×20 pixels, with per-pixel colours."""
    yy, xx = np.mgrid[0:20, 0:30]
    rgb = np.stack([xx * 8, yy * 12, np.full_like(xx, 201)], -1).astype(np.uint8)
    depth = (90.0 + 0.3 * xx - 0.2 * yy).astype(np.float32)
    return rgb, depth_to_mesh(depth, Intrinsics(40.0, 40.0, 14.5, 9.5, 30, 20), rgb)


def _read_ply(path) -> tuple[str, np.ndarray, np.ndarray]:
    """(header, vertex records, triangles int32 [T, 3]) of a binary little-endian PLY, parsed from its header."""
    raw = path.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    header = head.decode("ascii")
    types = {"float": "<f4", "uchar": "u1", "int": "<i4"}
    props, n_vertex, n_face = [], 0, 0
    for line in header.splitlines():
        words = line.split()
        if words[:2] == ["element", "vertex"]:
            n_vertex = int(words[2])
        elif words[:2] == ["element", "face"]:
            n_face = int(words[2])
        elif words[:1] == ["property"] and words[1] != "list" and not n_face:
            props.append((words[2], types[words[1]]))
    vertices = np.frombuffer(body, np.dtype(props), n_vertex)
    faces = np.frombuffer(body, np.dtype([("n", "u1"), ("ids", "<i4", 3)]), n_face, vertices.nbytes)
    assert (faces["n"] == 3).all() and len(body) == vertices.nbytes + faces.nbytes  # nothing else in the file
    return header, vertices, faces["ids"]


def test_ply_bytes_are_little_endian_records_of_the_points_colours_and_triangles(tmp_path):
    """Parsed with numpy, not VTK: catches a big-endian or ASCII PLY, colours written as floats or in BGR order,
    and triangles other than the mesh's own (winding included)."""
    pts, colors, _ = _cloud()
    header, vertices, faces = _read_ply(save_points(tmp_path / "c.ply", to_polydata(pts, colors)))
    assert "format binary_little_endian 1.0" in header and len(faces) == 0
    np.testing.assert_array_equal(np.stack([vertices["x"], vertices["y"], vertices["z"]], 1), pts)
    np.testing.assert_array_equal(np.stack([vertices["red"], vertices["green"], vertices["blue"]], 1), colors)
    rgb, mesh = _mesh()
    header, vertices, faces = _read_ply(save_mesh(tmp_path / "m.ply", mesh))
    np.testing.assert_array_equal(faces, vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3))
    np.testing.assert_array_equal(np.stack([vertices["red"], vertices["green"], vertices["blue"]], 1),
                                  rgb.reshape(-1, 3))
    np.testing.assert_allclose(np.stack([vertices["nx"], vertices["ny"], vertices["nz"]], 1),
                               vtk_to_numpy(mesh.GetPointData().GetNormals()), atol=1e-7)


@pytest.mark.parametrize("suffix", [".vtp", ".vtk"])
def test_depth_array_round_trips_exactly(tmp_path, suffix):
    """The "Depth" point array (here other scalars than z) and the uint8 "RGB" come back bit for bit, with their
    dtypes, through VTK's XML and legacy formats (the formats that hold arbitrary arrays)."""
    pts, colors, depth = _cloud()
    back = load_mesh(save_points(tmp_path / f"c{suffix}", to_polydata(pts, colors, depth)))
    pd = back.GetPointData()
    got_depth, got_rgb = vtk_to_numpy(pd.GetArray("Depth")), vtk_to_numpy(pd.GetArray("RGB"))
    assert got_depth.dtype == np.float32 and got_rgb.dtype == np.uint8
    np.testing.assert_array_equal(got_depth, depth)
    np.testing.assert_array_equal(got_rgb, colors)
    np.testing.assert_array_equal(vtk_to_numpy(back.GetPoints().GetData()), pts)


def test_obj_keeps_per_vertex_colours(tmp_path):
    """Bug caught: .obj files were written without colours ("geometry only") although VTK's OBJ writer can write
    them as ``v x y z r g b``, the extension MeshLab, Open3D and VTK's reader read: a coloured cloud or mesh saved
    as .obj came back grey."""
    from vtkmodules.vtkIOGeometry import vtkOBJWriter

    if not hasattr(vtkOBJWriter(), "SetWriteColorArray"):
        pytest.skip("this VTK's OBJ writer has no colour option")
    pts, colors, _ = _cloud()
    back = load_mesh(save_points(tmp_path / "c.obj", to_polydata(pts, colors)))
    np.testing.assert_array_equal(vtk_to_numpy(back.GetPointData().GetArray("RGB")), colors)
    rgb, mesh = _mesh()
    back = load_mesh(save_mesh(tmp_path / "m.obj", mesh))
    assert back.GetNumberOfPolys() == mesh.GetNumberOfPolys()
    np.testing.assert_array_equal(vtk_to_numpy(back.GetPointData().GetArray("RGB")), rgb.reshape(-1, 3))


def test_open3d_reads_the_files(tmp_path):
    """A second, independent reader: points, uint8 colours, triangle counts and winding as Open3D reads them."""
    o3d = pytest.importorskip("open3d")
    pts, colors, _ = _cloud()
    cloud = o3d.io.read_point_cloud(str(save_points(tmp_path / "c.ply", to_polydata(pts, colors))))
    np.testing.assert_array_equal(np.asarray(cloud.points, np.float32), pts)
    np.testing.assert_array_equal(np.rint(np.asarray(cloud.colors) * 255).astype(np.uint8), colors)
    rgb, mesh = _mesh()
    tris = vtk_to_numpy(mesh.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    points = vtk_to_numpy(mesh.GetPoints().GetData())
    for suffix in (".ply", ".obj", ".stl"):
        got = o3d.io.read_triangle_mesh(str(save_mesh(tmp_path / f"m{suffix}", mesh)))
        got_pts, got_tris = np.asarray(got.vertices), np.asarray(got.triangles)
        assert len(got_tris) == len(tris), suffix
        # same triangles, same winding: compare corner coordinates (STL repeats the vertices of every triangle)
        np.testing.assert_allclose(got_pts[got_tris], points[tris], atol=1e-4, err_msg=suffix)
        if suffix != ".stl":  # colours of the triangles' corners (Open3D may renumber an OBJ's vertices)
            got_rgb = np.rint(np.asarray(got.vertex_colors) * 255).astype(np.uint8)
            np.testing.assert_array_equal(got_rgb[got_tris], rgb.reshape(-1, 3)[tris], err_msg=suffix)
