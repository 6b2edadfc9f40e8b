"""Writing and reading point clouds and meshes (``vtkPolyData``) by file suffix.

Suffixes: ``.ply`` (binary, per-point colours from the "RGB" array), ``.vtp`` (VTK XML, all arrays),
``.vtk`` (legacy VTK, binary, all arrays), ``.stl`` (binary, triangles only — meshes), ``.obj`` (Wavefront:
geometry, normals and per-vertex colours ``v x y z r g b`` from the "RGB" array where VTK writes them). Every
write goes through :func:`SurgicalDepthLib.atomic_io.atomic_path`: a failed write leaves no file behind.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .atomic_io import atomic_path

logger = logging.getLogger(__name__)

MESH_SUFFIXES = (".ply", ".vtp", ".vtk", ".stl", ".obj")
POINT_SUFFIXES = (".ply", ".vtp", ".vtk", ".obj")


def _polydata_format(path: Path, valid: tuple[str, ...], what: str) -> str:
    """The lower-case suffix of ``path`` that selects the VTK reader/writer, checked against ``valid``."""
    suffix = path.suffix.lower()
    if suffix not in valid:
        raise ValueError(f"cannot save {what} to {path}: suffix {suffix or '(none)'!r} is not one of "
                         f"{', '.join(valid)}")
    return suffix


def _check_polydata(polydata: Any) -> None:
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    if not isinstance(polydata, vtkPolyData):
        raise TypeError(f"polydata must be a vtkPolyData, got {type(polydata).__name__}")
    if polydata.GetNumberOfPoints() == 0:
        raise ValueError("polydata has no points; nothing to save")


def _writer(suffix: str, polydata: Any) -> Any:
    if suffix == ".ply":
        from vtkmodules.vtkIOPLY import vtkPLYWriter

        w = vtkPLYWriter()
        w.SetFileTypeToBinary()
        if polydata.GetPointData().GetArray("RGB") is not None:
            w.SetArrayName("RGB")
            w.SetColorModeToDefault()  # write the uint8 RGB array as-is (red/green/blue properties)
        else:
            w.SetColorModeToOff()
        return w
    if suffix == ".vtp":
        from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

        w = vtkXMLPolyDataWriter()
        w.SetDataModeToAppended()
        w.SetCompressorTypeToZLib()
        return w
    if suffix == ".vtk":
        from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

        w = vtkPolyDataWriter()
        w.SetFileTypeToBinary()
        return w
    if suffix == ".stl":
        from vtkmodules.vtkIOGeometry import vtkSTLWriter

        w = vtkSTLWriter()
        w.SetFileTypeToBinary()
        return w
    from vtkmodules.vtkIOGeometry import vtkOBJWriter

    w = vtkOBJWriter()
    # per-vertex colours as "v x y z r g b" (r, g, b in [0, 1]), the extension MeshLab, Open3D and recent VTK readers
    # read; older VTK writers have no such option and write geometry only
    if polydata.GetPointData().GetArray("RGB") is not None and hasattr(w, "SetWriteColorArray"):
        w.SetWriteColorArray(True)
        w.SetColorArrayName("RGB")
    return w


def _write(path: Path, polydata: Any, suffix: str) -> Path:
    writer = _writer(suffix, polydata)
    # the temporary file takes the lower-case suffix: VTK's PLY writer appends ".ply" to any other name (a
    # "cloud.PLY" would be written elsewhere and left behind)
    with atomic_path(path, suffix=suffix) as tmp:
        writer.SetFileName(str(tmp))
        writer.SetInputData(polydata)
        ok = writer.Write()
        if ok != 1 or writer.GetErrorCode() != 0 or not tmp.stat().st_size:
            raise OSError(f"VTK {type(writer).__name__} failed to write {path} (error code {writer.GetErrorCode()})")
    logger.info("wrote %s (%d points, %d cells)", path, polydata.GetNumberOfPoints(), polydata.GetNumberOfCells())
    return path


def save_points(path: str | os.PathLike, polydata: Any) -> Path:
    """Save a point cloud (``vtkPolyData`` with vertices) by suffix: .ply, .vtp, .vtk or .obj.

    .stl is refused (it stores triangles only). Returns the path written.
    """
    path = Path(path)
    suffix = _polydata_format(path, POINT_SUFFIXES, "points")
    _check_polydata(polydata)
    return _write(path, polydata, suffix)


def save_mesh(path: str | os.PathLike, polydata: Any) -> Path:
    """Save a mesh (``vtkPolyData`` with triangles) by suffix: .ply, .vtp, .vtk, .stl or .obj.

    Returns the path written.
    """
    path = Path(path)
    suffix = _polydata_format(path, MESH_SUFFIXES, "mesh")
    _check_polydata(polydata)
    if suffix == ".stl" and polydata.GetNumberOfPolys() == 0:
        raise ValueError(f"cannot save {path}: STL stores triangles only and the polydata has none "
                         f"(use save_points with .ply/.vtp/.vtk for point clouds)")
    return _write(path, polydata, suffix)


def load_mesh(path: str | os.PathLike) -> Any:
    """Read a .ply, .vtp, .vtk, .stl or .obj file into ``vtkPolyData`` (PLY colours come back as "RGB")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    suffix = _polydata_format(path, MESH_SUFFIXES, "mesh")
    if suffix == ".ply":
        from vtkmodules.vtkIOPLY import vtkPLYReader as Reader
    elif suffix == ".vtp":
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader as Reader
    elif suffix == ".vtk":
        from vtkmodules.vtkIOLegacy import vtkPolyDataReader as Reader
    elif suffix == ".stl":
        from vtkmodules.vtkIOGeometry import vtkSTLReader as Reader
    else:
        from vtkmodules.vtkIOGeometry import vtkOBJReader as Reader
    reader = Reader()
    reader.SetFileName(str(path))
    reader.Update()
    if reader.GetErrorCode() != 0:
        raise ValueError(f"VTK {Reader.__name__} could not read {path} (error code {reader.GetErrorCode()})")
    out = reader.GetOutput()
    if out.GetNumberOfCells() == 0 and out.GetNumberOfPoints() > 0:
        # PLY/OBJ point clouds carry no vertex cells; add them so the cloud renders and counts as cells
        import numpy as np

        from .polydata import vtk_cell_array

        out.SetVerts(vtk_cell_array(np.arange(out.GetNumberOfPoints()), 1))
    if suffix == ".ply":
        colors = out.GetPointData().GetArray("RGB")
        if colors is not None:
            out.GetPointData().SetActiveScalars("RGB")
    return out
