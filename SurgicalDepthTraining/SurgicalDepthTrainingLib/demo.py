"""The offline demo: a synthetic colonoscopy clip with exact ground truth → depth, 3D and metrics.

Everything runs locally on real computations: the procedural renderer makes the clip (exact z-depth, intrinsics
and camera poses), the default model predicts depth, and the outputs are written to one folder.
Relative predictions (disparity) are turned into millimetres by a scale-and-shift fit to the ground truth — the
demo has ground truth; a clinical clip would use a known depth range or a metric model instead.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """``frames`` × ``height`` × ``width`` colon clip; ``input_size`` is the network input lower bound (×14)."""

    output: Path = Path("surgical-depth-demo")
    model: str = "default"
    organ: str = "colon"
    frames: int = 24
    height: int = 256
    width: int = 320
    seed: int = 7
    input_size: int | None = None  # None: the model's own (config.input_size)
    voxel_mm: float = 1.0
    device: str = "auto"


@dataclass
class DemoResult:
    model: str
    metrics: dict
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def _error_map(pred_mm: np.ndarray, gt_mm: np.ndarray, valid: np.ndarray, cap: float = 0.5) -> np.ndarray:
    """Absolute relative error |p - g| / g, black (0) → white (≥ cap), invalid pixels dark red."""
    err = np.zeros(gt_mm.shape, np.float32)
    err[valid] = np.abs(pred_mm[valid] - gt_mm[valid]) / gt_mm[valid]
    grey = (np.clip(err / cap, 0, 1) * 255).astype(np.uint8)
    img = np.repeat(grey[..., None], 3, axis=2)
    img[~valid] = (80, 0, 0)
    return img


def _import_vtk() -> Any:
    """The ``vtk`` package (all of VTK), imported with SIGINT and SIGTERM held until the import is complete.

    A ``KeyboardInterrupt`` raised inside VTK's module initialisation is swallowed there and the import goes on with
    half-initialised modules, which crashes the interpreter (segmentation fault, VTK 9.x): a Ctrl-C or a Cancel
    during this ~0.5 s import ended the demo without its clean-up, its ``error`` event or exit code 130. A signal
    that arrives meanwhile is raised again, to the handler in place before, once the import is done or has failed."""
    import signal
    import threading

    held: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # Python handles signals in the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not None:  # None: a handler not set from Python, which cannot be put back
                previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        import vtk
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:  # also when the import failed: the user's Ctrl-C is not lost with it
            signal.raise_signal(held[0])
    return vtk


def render_mesh_view(polydata, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` off-screen VTK rendering of a coloured mesh, seen from behind the first camera."""
    vtk = _import_vtk()
    from vtk.util.numpy_support import vtk_to_numpy

    h, w = size
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(polydata)
    if polydata.GetPointData().GetArray("RGB") is not None:
        mapper.SetScalarModeToUsePointFieldData()
        mapper.SelectColorArray("RGB")
        mapper.SetColorModeToDirectScalars()
        mapper.ScalarVisibilityOn()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    renderer = vtk.vtkRenderer()
    renderer.AddActor(actor)
    renderer.SetBackground(0.08, 0.08, 0.12)
    # without an X server VTK logs a warning when the window is made, then renders through EGL/OSMesa: keep that
    # line off the console (vtkLogger's stderr level is process-wide; it is put back afterwards)
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    try:
        window = vtk.vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.AddRenderer(renderer)
        window.SetSize(w, h)
        camera = renderer.GetActiveCamera()
        bounds = polydata.GetBounds()
        centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
        size = max(bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4])
        camera.SetFocalPoint(*centre)  # oblique view from the side and above (camera frame: y down, z forward)
        camera.SetPosition(centre[0] - 0.9 * size, centre[1] - 0.6 * size, centre[2] - 0.5 * size)
        camera.SetViewUp(0, -1, 0)
        renderer.ResetCameraClippingRange()
        window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.Update()
        image = grab.GetOutput()
        arr = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
        window.Finalize()
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
    return np.ascontiguousarray(arr[::-1])  # VTK images start at the bottom row


def _predict_clip(config: DemoConfig, clip: list[dict], progress=None) -> tuple[Any, list[np.ndarray]]:
    """The model of ``config`` and its raw prediction of every frame (``progress(done, total)`` after each)."""
    import SurgicalDepthLib as sd

    model = sd.load_model(config.model, device=config.device)
    preds = []
    # the one inference loop; the renderer's exact valid masks are the field of view here
    for frame in sd.depth_stream(model, [f["image"] for f in clip], input_size=config.input_size, fov_mask=None):
        preds.append(frame.prediction)
        if progress is not None:
            progress(len(preds), len(clip))
    return model, preds


def _depths_mm(clip: list[dict], preds: list[np.ndarray], kind: str, cap: float) -> list[np.ndarray]:
    """float32 mm depth of each frame for the 3D outputs, 0 where invalid or beyond ``cap``; disparity is
    scale+shift fitted to the ground truth (the demo has it)."""
    import SurgicalDepthLib as sd

    depths = []
    for frame, pred in zip(clip, preds):
        if kind == "disparity":
            depth_mm = sd.disparity_to_depth(pred, reference=frame["depth"], mask=frame["valid"], mode="scale_shift")
        else:
            depth_mm = pred
        depth_mm = np.nan_to_num(depth_mm, nan=0.0, posinf=0.0)
        depths.append(np.where(depth_mm <= cap, depth_mm, 0.0).astype(np.float32))  # beyond the scene: invalid
    return depths


def _write_3d(claim: Callable[[str], Path], clip: list[dict], depths_mm: list[np.ndarray], config: DemoConfig,
              cap: float) -> tuple[Path, Path, Any]:
    """The first frame's point cloud and the TSDF fusion of all frames at the renderer's exact poses:
    ``(cloud file, mesh file, mesh)``."""
    import SurgicalDepthLib as sd

    first, depth0 = clip[0], depths_mm[0]
    cloud = sd.to_polydata(sd.backproject(depth0, first["intrinsics"], mask=first["valid"]),
                           colors=first["image"][first["valid"] & (depth0 > 0)])
    cloud_path = sd.save_points(claim("frame000_points.ply"), cloud)
    volume = sd.TSDFVolume(voxel_size=config.voxel_mm, truncation=4 * config.voxel_mm, max_depth=cap)
    for frame, depth_mm in zip(clip, depths_mm):
        volume.integrate(depth_mm, frame["image"], frame["intrinsics"], frame["pose"])
    mesh = volume.extract_mesh()
    return cloud_path, sd.save_mesh(claim("fused_mesh.ply"), mesh), mesh


def _write_depth_video(path: Path, clip: list[dict], preds: list[np.ndarray], kind: str) -> Path:
    """Input | colour-mapped prediction (red = near, blue = far) side by side, one colour range for the clip."""
    import SurgicalDepthLib as sd
    from SurgicalDepthLib.atomic_io import atomic_path

    vrange = sd.robust_range(np.stack(preds), kind)
    height, width = clip[0]["image"].shape[:2]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (2 * width, height))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write mp4v video {path}")
        try:
            for frame, pred in zip(clip, preds):
                color = sd.colorize(pred, kind, *vrange)
                writer.write(cv2.cvtColor(np.hstack([frame["image"], color]), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return path


def _write_summary(path: Path, first: dict, depth_mm: np.ndarray, mesh: Any, kind: str) -> Path:
    """One PNG: input, ground truth, prediction in mm (a relative model's aligned to the ground truth), relative
    error and (where VTK can render off-screen) the fused surface."""
    import SurgicalDepthLib as sd
    from SurgicalDepthLib.video import write_image

    from .reports import label_tile

    near, far = np.percentile(first["depth"][first["valid"]], [2, 98])
    panels = [label_tile(first["image"], "input frame"),
              label_tile(sd.colorize(first["depth"], "depth", mask=first["valid"]), "ground truth"),
              label_tile(sd.colorize(depth_mm, "depth", near, far, mask=first["valid"]),
                         "prediction (aligned, mm)" if kind == "disparity" else "prediction (mm)"),
              label_tile(_error_map(depth_mm, first["depth"], first["valid"]), "abs. rel. error (0-0.5)")]
    try:
        panels.append(label_tile(render_mesh_view(mesh, first["image"].shape[:2]), "fused surface (VTK)"))
    except Exception as exc:  # no OpenGL context on this machine: the summary keeps the other panels
        logger.warning("3D view not rendered (VTK off-screen rendering failed: %s)", exc)
    return write_image(path, np.hstack(panels))


def _write_report(path: Path, config: DemoConfig, model: Any, body: dict, mean: dict) -> Path:
    """``metrics.json``: the model, the clip, the evaluation (per frame and mean) and how 3D depth was scaled."""
    from SurgicalDepthLib.atomic_io import atomic_path

    kind = model.output_kind
    report = {"model": model.source, "model_config": model.config.to_dict(), "output_kind": kind,
              "organ": config.organ, "frames": config.frames, "size": [config.height, config.width],
              "input_size": config.input_size or model.config.input_size, "alignment": body["alignment"],
              "notes": body["notes"] + ("; 3D outputs: scale+shift fitted in disparity space to the ground truth "
                                        "(demo only: it has ground truth)" if kind == "disparity" else ""),
              "metrics": mean, "per_frame": body["per_image"],
              "poses": "exact camera poses of the renderer"}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    return path


def run_demo(config: DemoConfig, progress=None, claim: Callable[[str], Path] | None = None) -> DemoResult:
    """Render, predict, reconstruct and measure; write everything into ``config.output``.

    ``claim`` gives the path of each output file by name (the CLI passes its ``RunFolder.path``, so a folder holding
    another run's outputs is refused and the run's files are listed in its manifest); None: ``config.output / name``
    in a folder created if missing."""
    from .evaluation import evaluate_predictions, output_to_mm
    from .synthetic import SceneConfig, render_clip

    t0 = time.perf_counter()
    if claim is None:
        Path(config.output).mkdir(parents=True, exist_ok=True)
        claim = Path(config.output).joinpath
    clip = render_clip(config.organ, n_frames=config.frames, seed=config.seed, height=config.height,
                       width=config.width)
    model, preds = _predict_clip(config, clip, progress)
    kind = model.output_kind
    # as evaluate() does: a metric model's output in its own unit (the official metric models predict metres) ->
    # the renderer's millimetres; the 3D outputs read these maps as mm
    to_mm = output_to_mm(model)
    preds = [p * np.float32(to_mm) for p in preds] if to_mm != 1.0 else preds
    cap = float(SceneConfig().max_depth_mm)  # the renderer's depth range: farther pixels are invalid
    body = evaluate_predictions(((f["name"], p, f["depth"], f["valid"]) for f, p in zip(clip, preds)),
                                alignment="median", pred_kind=kind, max_depth=cap)
    mean = {k: float(v) for k, v in body["metrics"].items()}
    depths_mm = _depths_mm(clip, preds, kind, cap)
    files: dict[str, Path] = {}
    files["point_cloud"], files["fused_mesh"], mesh = _write_3d(claim, clip, depths_mm, config, cap)
    files["depth_video"] = _write_depth_video(claim("depth_video.mp4"), clip, preds, kind)
    files["summary"] = _write_summary(claim("summary.png"), clip[0], depths_mm[0], mesh, kind)
    files["metrics"] = _write_report(claim("metrics.json"), config, model, body, mean)
    return DemoResult(model=model.source, metrics=mean, files=files, seconds=time.perf_counter() - t0)
