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
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


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


def render_mesh_view(polydata, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` off-screen VTK rendering of a coloured mesh, seen from behind the first camera."""
    import vtk
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


def run_demo(config: DemoConfig, progress=None) -> DemoResult:
    """Render, predict, reconstruct and measure; write everything into ``config.output``."""
    import SurgicalDepthLib as sd
    from SurgicalDepthLib._atomic import atomic_path
    from SurgicalDepthLib.video import write_image

    from .evaluation import evaluate_predictions
    from .reports import label_tile
    from .synthetic import SceneConfig, render_clip

    t0 = time.perf_counter()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    clip = render_clip(config.organ, n_frames=config.frames, seed=config.seed, height=config.height,
                       width=config.width)
    model = sd.load_model(config.model, device=config.device)
    kind = model.output_kind
    preds = []
    # the one inference loop; the renderer's exact valid masks are the field of view here
    for frame in sd.depth_stream(model, [f["image"] for f in clip], input_size=config.input_size, fov_mask=None):
        preds.append(frame.prediction)
        if progress is not None:
            progress(len(preds), len(clip))

    cap = float(SceneConfig().max_depth_mm)  # the renderer's depth range: farther pixels are invalid
    body = evaluate_predictions(((f["name"], p, f["depth"], f["valid"]) for f, p in zip(clip, preds)),
                                alignment="median", pred_kind=kind, max_depth=cap)
    depths_mm = []
    for frame, pred in zip(clip, preds):
        if kind == "disparity":
            depth_mm = sd.disparity_to_depth(pred, reference=frame["depth"], mask=frame["valid"], mode="scale_shift")
        else:
            depth_mm = pred
        depth_mm = np.nan_to_num(depth_mm, nan=0.0, posinf=0.0)
        depths_mm.append(np.where(depth_mm <= cap, depth_mm, 0.0).astype(np.float32))  # beyond the scene: invalid
    mean = {k: float(v) for k, v in body["metrics"].items()}

    intr = clip[0]["intrinsics"]
    cloud = sd.to_polydata(sd.backproject(depths_mm[0], intr, mask=clip[0]["valid"]),
                           colors=clip[0]["image"][clip[0]["valid"] & (depths_mm[0] > 0)])
    files["point_cloud"] = sd.save_points(out / "frame000_points.ply", cloud)
    volume = sd.TSDFVolume(voxel_size=config.voxel_mm, truncation=4 * config.voxel_mm, max_depth=cap)
    for frame, depth_mm in zip(clip, depths_mm):
        volume.integrate(depth_mm, frame["image"], frame["intrinsics"], frame["pose"])
    mesh = volume.extract_mesh()
    files["fused_mesh"] = sd.save_mesh(out / "fused_mesh.ply", mesh)

    # depth video: input | colour-mapped prediction (red = near, blue = far), one colour range for the clip
    vrange = sd.robust_range(np.stack(preds), kind)
    video = out / "depth_video.mp4"
    with atomic_path(video) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (2 * config.width, config.height))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write mp4v video {video}")
        try:
            for frame, pred in zip(clip, preds):
                color = sd.colorize(pred, kind, *vrange)
                writer.write(cv2.cvtColor(np.hstack([frame["image"], color]), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    files["depth_video"] = video

    f0 = clip[0]
    gt_vis = sd.colorize(f0["depth"], "depth", mask=f0["valid"])
    near, far = np.percentile(f0["depth"][f0["valid"]], [2, 98])
    panels = [label_tile(f0["image"], "input frame"),
              label_tile(gt_vis, "ground truth"),
              label_tile(sd.colorize(depths_mm[0], "depth", near, far, mask=f0["valid"]), "prediction (aligned, mm)"),
              label_tile(_error_map(depths_mm[0], f0["depth"], f0["valid"]), "abs. rel. error (0-0.5)")]
    try:
        view = render_mesh_view(mesh, (config.height, config.width))
        panels.append(label_tile(view, "fused surface (VTK)"))
    except Exception as exc:  # no OpenGL context on this machine: the summary keeps the other panels
        log.warning("3D view not rendered (VTK off-screen rendering failed: %s)", exc)
    summary = np.hstack(panels)
    files["summary"] = write_image(out / "summary.png", summary)

    report = {"model": model.source, "model_config": model.config.to_dict(), "output_kind": kind,
              "organ": config.organ, "frames": config.frames, "size": [config.height, config.width],
              "input_size": config.input_size or model.config.input_size, "alignment": body["alignment"],
              "notes": body["notes"] + ("; 3D outputs: scale+shift fitted in disparity space to the ground truth "
                                        "(demo only: it has ground truth)" if kind == "disparity" else ""),
              "metrics": mean, "per_frame": body["per_image"],
              "poses": "exact camera poses of the renderer"}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    files["metrics"] = out / "metrics.json"
    return DemoResult(model=model.source, metrics=mean, files=files, seconds=time.perf_counter() - t0)
