"""Pure-Python helpers of the Surgical Depth Slicer module (no ``slicer``/``qt``/``ctk``/``mrml`` imports).

Camera frame → Slicer world (RAS, mm)
-------------------------------------
The project's camera frame is OpenCV's: x right, y down, z forward (see ``camera.py``). Slicer's world frame is RAS
(x = Right, y = Anterior, z = Superior). We map::

    R = -x      (image right  -> patient Left)
    A = -z      (viewing ray  -> Posterior)
    S = -y      (image down   -> Inferior)

i.e. ``ras = CAMERA_TO_RAS @ cam`` with ``CAMERA_TO_RAS = [[-1, 0, 0], [0, 0, -1], [0, -1, 0]]``, a proper rotation
(det +1, so handedness and triangle winding survive). Why this one: Slicer's default 3D view looks from Anterior
towards Posterior with Superior up and the patient's Left on the screen's right, so with this mapping the default
3D view looks along the endoscope (image right on screen right, image up on screen up), and the frame/depth
volumes (``image_ijk_to_ras``) lie in a coronal plane that the Green slice view shows upright.

Camera-to-world poses (camera convention, 4×4) become ``T_ras = C @ pose @ C⁻¹`` with ``C`` the homogeneous
``CAMERA_TO_RAS``: a model whose points are ``C @ p_cam`` and that observes ``T_ras`` lands at ``C @ pose @ p_cam``,
the RAS position of the world point.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: 3×3 rotation from the camera frame (x right, y down, z forward) to RAS; see the module docstring.
CAMERA_TO_RAS = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])

#: Display threshold of depth volumes (mm): NaN (invalid) pixels fail ``lower <= value <= upper`` in
#: vtkImageThreshold, so with ApplyThreshold they get alpha 0 and are not drawn (instead of the "near" colour).
DEPTH_THRESHOLD_MM = (0.0, 1.0e9)

#: What the "Model" selector of the module may hold.
MODEL_CHOICES = ("default", "file", "registry")
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def camera_to_ras_matrix() -> np.ndarray:
    """Homogeneous 4×4 float64 form of :data:`CAMERA_TO_RAS`."""
    m = np.eye(4)
    m[:3, :3] = CAMERA_TO_RAS
    return m


def camera_to_ras(points: np.ndarray) -> np.ndarray:
    """Points ``[N, 3]`` in the camera frame (any unit) → ``float32 [N, 3]`` in RAS (same unit; mm in Slicer)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {pts.shape}")
    return np.ascontiguousarray(pts.astype(np.float64) @ CAMERA_TO_RAS.T, dtype=np.float32)


def pose_to_ras(pose: np.ndarray) -> np.ndarray:
    """Camera-to-world pose (camera convention, 4×4) → the equivalent 4×4 float64 transform in RAS."""
    p = np.asarray(pose, dtype=np.float64)
    if p.shape != (4, 4):
        raise ValueError(f"pose must be a 4x4 matrix, got shape {p.shape}")
    c = camera_to_ras_matrix()
    return c @ p @ c.T  # C is orthonormal: C⁻¹ = Cᵀ


def image_ijk_to_ras(width: int, height: int, spacing: float = 1.0) -> np.ndarray:
    """4×4 ``ijkToRAS`` of a one-slice volume holding a ``height × width`` frame (array ``[1, H, W]``).

    Voxel (i, j, k) = pixel (u, v) of slice k. The pixel grid is laid out like the camera frame mapped through
    :data:`CAMERA_TO_RAS` (u → Left, v → Inferior, slice axis → Posterior), centred on the RAS origin, with
    ``spacing`` mm per pixel, so the frame shows upright in the coronal (Green) view.
    """
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    m = np.eye(4)
    m[:3, :3] = CAMERA_TO_RAS * float(spacing)
    centre = np.array([(int(width) - 1) / 2.0, (int(height) - 1) / 2.0, 0.0]) * float(spacing)
    m[:3, 3] = -CAMERA_TO_RAS @ centre
    return m


def intrinsics_from_fields(fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> Any:
    """``SurgicalDepthLib.Intrinsics`` from the GUI fields, or None when all four are 0 ("unknown").

    ``fx, fy, cx, cy`` are pixels of a ``width × height`` frame. Some but not all zero is an error naming them.
    """
    from .camera import Intrinsics

    values = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    zero = [k for k, v in values.items() if float(v) == 0.0]
    if len(zero) == 4:
        return None
    if zero:
        raise ValueError(f"camera intrinsics: {', '.join(zero)} = 0 while the others are set; give all four "
                         f"(pixels of the {width}x{height} frame) or leave all four at 0 for unknown")
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(width), int(height))


def model_source(choice: str, path: str = "", registry_name: str = "") -> str:
    """The ``sd.load_model`` source for the GUI's model choice (``default`` | ``file`` | ``registry``)."""
    if choice == "default":
        return "default"
    if choice == "file":
        if not str(path).strip() or str(path).strip() == ".":
            raise ValueError("model: 'file' was chosen but no checkpoint path was given")
        return str(path).strip()
    if choice == "registry":
        if not registry_name.strip():
            raise ValueError("model: 'registry' was chosen but no registry name was given "
                             "(e.g. depth-anything-v2-small)")
        return registry_name.strip()
    raise ValueError(f"model choice must be one of {MODEL_CHOICES}, got {choice!r}")


def index_value(index: int, fps: float | None) -> str:
    """Sequence index value (a string, as ``vtkMRMLSequenceNode`` stores it) of source frame ``index``.

    With a known ``fps`` > 0: the frame time in seconds with enough decimals to stay unique and sortable
    (``"0.000", "0.040", ...``); otherwise the frame number (``"0", "1", ...``).
    """
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    if fps is None or not (fps > 0 and math.isfinite(fps)):
        return str(int(index))
    decimals = max(3, math.ceil(math.log10(fps)) + 1)
    return f"{index / fps:.{decimals}f}"


#: vtkMRMLSequenceNode's default NumericIndexValueTolerance: index values this close are one item to Slicer
SLICER_INDEX_TOLERANCE = 0.001


def index_tolerance(fps: float | None) -> float:
    """``NumericIndexValueTolerance`` of a run's sequences indexed by :func:`index_value`: Slicer's default (0.001),
    or a quarter of the frame interval when that is shorter, so that two frames never become one item (at the 1000
    fps that OpenCV reports for many browser-recorded webm files, frame times 0.0000 and 0.0010 were one item to
    Slicer's default and ``SetDataNodeAtValue`` overwrote every other frame)."""
    if fps is None or not (fps > 0 and math.isfinite(fps)):
        return SLICER_INDEX_TOLERANCE
    return min(SLICER_INDEX_TOLERANCE, 0.25 / fps)


def sequence_index_values(n_frames: int, fps: float | None) -> list[str]:
    """:func:`index_value` of frames ``0 .. n_frames - 1``."""
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    return [index_value(i, fps) for i in range(n_frames)]


def copy_ijk_to_ras(matrix: Any) -> np.ndarray:
    """A validated float64 copy of a volume's 4×4 IJK→RAS matrix (the input frame's geometry, given to the
    depth volume so that the depth overlay lies exactly on the frame it was computed from)."""
    m = np.array(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"IJK to RAS must be a finite 4x4 matrix, got {m.tolist() if m.size <= 16 else m.shape}")
    if not np.allclose(m[3], [0, 0, 0, 1]) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError(f"IJK to RAS must be an invertible affine matrix (last row 0 0 0 1), got {m.tolist()}")
    return m


def parse_requirements(text: str) -> list[str]:
    """Requirement lines of a ``requirements.txt`` text (comments, blank lines and pip options dropped)."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


#: Interchangeable OpenCV distributions (all provide ``cv2``): any one satisfies a requirement on another, so
#: ``opencv-python-headless`` is never installed on top of a user's ``opencv-python`` (two ``cv2`` packages in one
#: site-packages overwrite each other's files).
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")


class MissingRequirements(RuntimeError):
    """Required Python packages are not installed and were not installed (testing mode, or declined)."""

    def __init__(self, missing: list[str], why: str):
        super().__init__(f"{why}: {', '.join(missing)}")
        self.missing = list(missing)


class Cancelled(RuntimeError):
    """The user cancelled a run (its progress callback returned False); nothing it made is left."""


def missing_requirements(requirements: Iterable[str],
                         version_of: Callable[[str], str] | None = None) -> list[str]:
    """The requirement strings that the running Python does not satisfy (absent or wrong version).

    A requirement on one of :data:`OPENCV_DISTRIBUTIONS` is satisfied by any of them at a matching version.
    ``version_of(name)`` returns an installed distribution's version or raises
    ``importlib.metadata.PackageNotFoundError``; default ``importlib.metadata.version``.
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    version_of = version_of or metadata.version
    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        names = OPENCV_DISTRIBUTIONS if canonicalize_name(req.name) in OPENCV_DISTRIBUTIONS else (req.name,)
        found = False
        for name in names:
            try:
                installed = version_of(name)
            except metadata.PackageNotFoundError:
                continue
            if not req.specifier or req.specifier.contains(installed, prereleases=True):
                found = True
                break
        if not found:
            missing.append(text)
    return missing


def imported_requirements(requirements: Iterable[str], modules: Iterable[str],
                          packages: dict[str, list[str]] | None = None) -> list[str]:
    """The requirements whose installed distribution already has a top-level module in ``modules`` (e.g.
    ``sys.modules``): installing another version of them takes effect only after a restart.

    ``packages``: ``{import name: [distribution names]}``, default ``importlib.metadata.packages_distributions()``.
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    packages = metadata.packages_distributions() if packages is None else packages
    modules = set(modules)
    loaded = {canonicalize_name(dist) for name, dists in packages.items() if name in modules for dist in dists}
    return [text for text in requirements if canonicalize_name(Requirement(text).name) in loaded]


def torch_requirement(requirements: Iterable[str]) -> str | None:
    """The ``torch`` line of a requirement list (installed through SlicerPyTorch when available), or None."""
    from packaging.requirements import Requirement

    for text in requirements:
        if Requirement(text).name.lower() == "torch":
            return text
    return None


def ensure_requirements(requirements: Iterable[str], *, testing: bool, modules: Iterable[str], ask: bool,
                        confirm: Callable[[str], bool], install_torch: Callable[[str], bool] | None,
                        pip_ensure: Callable[[list[str]], Any] | None, pip_install: Callable[[list[str]], Any],
                        restart: Callable[[], Any], version_of: Callable[[str], str] | None = None) -> list[str]:
    """Install the unsatisfied ``requirements`` the Slicer way (the module passes Slicer's functions in); returns
    what was missing.

    - testing mode (``testing``) installs nothing: :class:`MissingRequirements` (self-tests skip on it);
    - torch through ``install_torch(specifier)`` when given (SlicerPyTorch: the CUDA build for the driver; False =
      declined), else with the rest;
    - the rest in ONE call: ``pip_ensure(list)`` when given (``slicer.packaging``: asks, installs, offers a
      restart), else ``pip_install(list)`` after ``confirm(question)`` (when ``ask``);
    - ``confirm(question)`` then ``restart()`` when requirements installed here were already imported in an older
      version (``modules``: names of the imported modules, e.g. ``sys.modules``) and ``pip_ensure`` did not ask.
    """
    missing = missing_requirements(requirements, version_of)
    if not missing:
        return []
    if testing:
        raise MissingRequirements(missing, "testing mode installs no Python packages; missing")
    stale, rest, torch = imported_requirements(missing, modules), list(missing), torch_requirement(missing)
    if torch is not None and install_torch is not None:
        from packaging.requirements import Requirement

        if not install_torch(str(Requirement(torch).specifier)):
            raise MissingRequirements([torch], "the PyTorch installation was declined")
        rest.remove(torch)
    if rest and pip_ensure is not None:
        pip_ensure(rest)
        stale = [r for r in stale if r not in rest]
    elif rest:
        if ask and not confirm("Surgical Depth needs these Python packages:\n" + "\n".join(rest)
                               + "\nInstall them now?"):
            raise MissingRequirements(rest, "the installation was declined")
        pip_install(rest)
    if stale and confirm(f"Updated packages ({', '.join(stale)}) were already loaded. Restart Slicer now to use "
                         "them?"):
        restart()
    return missing


def download_weights(name: str, progress: Callable[[float, str], bool]) -> Any:
    """Download the official weights ``name`` after the user agreed (:func:`~weights.download`: checked against the
    registry's pinned SHA256, or recorded on first use where none is pinned), reporting ``progress(fraction,
    text)``. False from ``progress`` cancels: :class:`Cancelled` is raised inside the download, which keeps the bytes
    received in a partial file (never under the final name) that the next download resumes."""
    from .weights import download

    def report(done: int, total: int) -> None:
        if not progress(done / total if total else 0.0, f"{name}: {format_bytes(done)}"):
            raise Cancelled(f"download of model {name!r} cancelled")
    return download(name, progress=report, trust_on_first_use=True)


def format_bytes(n: int) -> str:
    """``1536 -> '1.5 KiB'`` for progress labels."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def has_calibration(intrinsics: Any = None, calibration: str = "", fx: float = 0.0) -> bool:
    """Whether :func:`resolve_intrinsics` gets a real camera (an ``Intrinsics``, a calibration file or GUI fields;
    ``fx`` = 0 means the fields are unset) rather than the default field of view: only then is the depth corrected
    to the lens (:mod:`.lens`)."""
    return intrinsics is not None or bool(calibration and str(calibration) != ".") or float(fx) != 0.0


def resolve_intrinsics(width: int, height: int, intrinsics: Any = None, calibration: str = "",
                       fields: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> Any:
    """Intrinsics for a ``width × height`` frame, from the first source given: ``intrinsics``
    (``Intrinsics``, rescaled if calibrated at another size), a ``calibration`` file, the GUI ``fields``
    ``(fx, fy, cx, cy)`` in pixels (all 0 = unknown), else :data:`camera.DEFAULT_FOV_DEG` (70°) horizontal field
    of view (logged warning), the CLI's default too."""
    from .camera import Intrinsics, parse_intrinsics

    if intrinsics is None and calibration and str(calibration) != ".":  # a file of another size is rescaled
        intrinsics = parse_intrinsics(str(calibration), width, height)
    if intrinsics is None:
        intrinsics = intrinsics_from_fields(*fields, width, height)
    if intrinsics is None:
        intrinsics = Intrinsics.from_fov(width, height)
    return intrinsics.fitted(width, height)


def polydata_to_ras(polydata: Any) -> Any:
    """Rotate a camera-frame ``vtkPolyData`` (points and the "Normals" point array) into RAS in place."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    points = polydata.GetPoints()
    if points is not None and points.GetNumberOfPoints():
        points.SetData(numpy_to_vtk(camera_to_ras(vtk_to_numpy(points.GetData())), deep=True))
    normals = polydata.GetPointData().GetArray("Normals")
    if normals is not None:
        rotated = numpy_to_vtk(camera_to_ras(vtk_to_numpy(normals)), deep=True)
        rotated.SetName("Normals")
        polydata.GetPointData().RemoveArray("Normals")
        polydata.GetPointData().SetNormals(rotated)
    return polydata


def rgb_from_volume_array(array: np.ndarray, name: str = "volume") -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` (a copy) from the ``[1, H, W, C>=3]`` array of a one-slice vector volume.

    uint8 is copied as it is; uint16 (16-bit PNG / TIFF frames, which Slicer keeps as unsigned short) keeps its high
    byte, as ``predict`` reads such files (:func:`~.video.high_byte`), instead of wrapping modulo 256; other types
    are refused (ValueError naming it)."""
    arr = np.asarray(array)
    if arr.ndim != 4 or arr.shape[0] != 1 or arr.shape[3] < 3:
        raise ValueError(f"{name}: expected a one-slice RGB vector volume [1, H, W, 3], got shape {arr.shape}")
    check_rgb_dtype(arr.dtype, name)
    rgb = arr[0, :, :, :3]
    if rgb.dtype == np.uint16:
        from .video import high_byte  # lazy: OpenCV is installed with the module's requirements

        return high_byte(rgb)
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)  # never a view of the volume


def check_rgb_dtype(dtype: Any, name: str = "volume") -> None:
    """ValueError naming ``name`` and ``dtype`` unless RGB voxels of that type can be read (uint8 or uint16)."""
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        raise ValueError(f"{name}: RGB voxels must be unsigned 8-bit (or 16-bit) integers, got {np.dtype(dtype)}")


@dataclass
class SurgicalDepthNodes:
    """MRML nodes created by one ``SurgicalDepthLogic.process`` run (Slicer objects, typed ``Any`` here).

    ``browser``: vtkMRMLSequenceBrowserNode playing all sequences in sync; sequences (vtkMRMLSequenceNode) of
    ``frames`` (RGB vtkMRMLVectorVolumeNode), ``depth`` (vtkMRMLScalarVolumeNode, mm), ``points`` (point-cloud
    vtkMRMLModelNode), ``meshes`` (per-frame depth mesh), ``poses`` (vtkMRMLLinearTransformNode, camera-to-world
    in RAS; only when fused); ``fused``: vtkMRMLModelNode of the TSDF surface; ``fov``: the field of view the
    run used, a vtkMRMLLabelMapVolumeNode (1 = tissue) with the depth volumes' geometry, or None (every pixel);
    ``proxies``: the browser's proxy node of each sequence, by the same keys (live depth updates them in place);
    ``frameCount``: frames processed; ``folder``: the subject-hierarchy folder item holding the run's nodes.
    ``frames`` is the input browser's own sequence when the input was a browser (shared, not copied). ``model``: the
    depth model the run used (``slicer_model.load_cached``; live depth goes on with it).
    """

    browser: Any = None
    frames: Any = None
    depth: Any = None
    points: Any = None
    meshes: Any = None
    poses: Any = None
    fused: Any = None
    fov: Any = None
    proxies: dict = field(default_factory=dict)
    frameCount: int = 0
    folder: int = 0
    model: Any = None

    def roots(self) -> list[Any]:
        """The nodes the run made itself (sequences, browser, field of view, fused surface, proxies), where set:
        where :func:`run_nodes` starts."""
        return [n for n in (self.browser, self.frames, self.depth, self.points, self.meshes, self.poses, self.fused,
                            self.fov, *self.proxies.values()) if n is not None]


def weights_cached(name: str) -> bool:
    """Whether the official weights ``name`` are in the local cache (downloading needs the user's consent)."""
    from .weights import cached_path

    try:
        cached_path(name, verify=False)
    except FileNotFoundError:
        return False
    return True


def path_or_none(path: Any) -> str | None:
    """A GUI path value as ``str``, or None when unset (parameterNodeWrapper's empty ``Path()`` is ``"."``)."""
    text = "" if path is None else str(path).strip()
    return None if text in ("", ".") else text


def run_nodes(roots: Iterable[Any], new_ids: set[str]) -> list[Any]:
    """A run's own MRML nodes: those of ``roots`` and of the nodes they reference, directly or through others
    (display, storage, proxy and transform nodes, a browser's sequences), that are among ``new_ids`` (the IDs of
    the nodes added to the scene since the run began). Nodes that the user or another module (an OpenIGTLink
    connector's new device) added meanwhile are not reached: a cancel does not remove them, and the run's folder
    does not take them. Nodes that were there before (an input browser's sequence) are never the run's."""
    found: dict[str, Any] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is None or node.GetID() not in new_ids or node.GetID() in found:
            continue
        found[node.GetID()] = node
        for r in range(node.GetNumberOfNodeReferenceRoles()):
            role = node.GetNthNodeReferenceRole(r)
            stack += [node.GetNthNodeReference(role, i) for i in range(node.GetNumberOfNodeReferences(role))]
    return list(found.values())


#: MRML classes that no subject-hierarchy plugin claims, so Slicer gives them no item: a run's sequences and browser
UNCLAIMED_CLASSES = ("vtkMRMLSequenceNode", "vtkMRMLSequenceBrowserNode")


def file_run_nodes(sh: Any, folder: int, nodes: Iterable[Any]) -> None:
    """Put a run's new MRML ``nodes`` under its subject-hierarchy ``folder`` item (``sh``: the scene's
    ``vtkMRMLSubjectHierarchyNode``): items at the scene's top level move into it, and nodes of
    :data:`UNCLAIMED_CLASSES`, which have no item, get one there — without it, deleting the folder in the Data
    module left every sequence of the run in the scene, unseen, holding its memory. Other nodes without an item
    (display, storage) stay without one."""
    scene = sh.GetSceneItemID()
    for node in nodes:
        item = sh.GetItemByDataNode(node)  # 0: no item
        if item and sh.GetItemParent(item) == scene:
            sh.SetItemParent(item, folder)
        elif not item and any(node.IsA(name) for name in UNCLAIMED_CLASSES):
            sh.CreateItem(folder, node)


def logic_self_test(module_folder: Any, name: str, case: Any) -> None:
    """Run a module's logic self-tests, ``<module_folder>/Testing/Python/<name>.py`` (the source tree's; ctest runs
    that file too), for its "Reload and Test" and self-test: ``case`` (the module's ``ScriptedLoadableModuleTest``)
    fails if any of them fails or errs. Where the file is not there (an installed extension ships no tests) it says
    so in the log and returns."""
    import importlib.util
    import unittest
    from pathlib import Path

    path = Path(module_folder) / "Testing" / "Python" / f"{name}.py"
    if not path.is_file():
        logger.warning("%s not found: the logic self-tests run from the extension's source tree", path)
        return
    spec = importlib.util.spec_from_file_location(name, path)
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    result = unittest.TextTestRunner(verbosity=2).run(unittest.defaultTestLoader.loadTestsFromModule(tests))
    case.assertTrue(result.wasSuccessful(), f"{name}: {len(result.failures)} failed, {len(result.errors)} errors "
                                            f"of {result.testsRun}")
