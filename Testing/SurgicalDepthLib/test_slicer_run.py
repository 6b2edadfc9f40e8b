"""Tests of SurgicalDepthLib.slicer_run: the frames a Slicer run reads and its per-frame loop, without Slicer
(a real tiny model, real files; the module's MRML writing is checked by its self-tests in Slicer)."""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_model import textured, tiny_model, write_clip

import SurgicalDepthLib as sd
from SurgicalDepthLib import slicer_run as run
from SurgicalDepthLib.alignment import DEFAULT_DEPTH_RANGE_MM
from SurgicalDepthLib.slicer_helpers import Cancelled, camera_to_ras, image_ijk_to_ras, pose_to_ras

REPO = Path(__file__).resolve().parents[2]
SIZE = 70


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


def _array_source(frames, items=None):
    """A FrameSource like the module's for a browser: [1, H, W, 3] volume arrays, items of a longer sequence."""
    items = items or range(len(frames))
    arrays = [np.ascontiguousarray(f[None]) for f in frames]
    return run.array_source("seq", arrays, items, lambda i: f"{i}.5", lambda i: np.eye(4) * (i + 1))


def test_select_frames():
    """Catches a frame range that ignores start / stride / max. frames, or a "current frame" that is item 0."""
    assert run.select_frames(10) == range(10)
    assert run.select_frames(10, start=2, stride=3) == range(2, 10, 3)
    assert list(run.select_frames(10, start=2, stride=3, max_frames=2)) == [2, 5]
    assert run.select_frames(10, start=9, stride=5, max_frames=100) == range(9, 10, 5)
    assert run.select_frames(10, start=4, current=7) == range(7, 8)  # the selected item, not the range
    with pytest.raises(ValueError, match="past the last frame"):
        run.select_frames(10, start=10)
    with pytest.raises(ValueError, match="selected item -1"):
        run.select_frames(10, current=-1)
    with pytest.raises(ValueError, match="frame stride"):
        run.select_frames(10, stride=0)
    with pytest.raises(ValueError, match="no frames"):
        run.select_frames(0)


def test_video_source_current_frame_is_the_range_start_without_decoding(tmp_path):
    """Catches "run current frame" on a video that decodes the whole video: only the range's first frame is
    selected, by source index, with frame-time index values and the video geometry."""
    path = tmp_path / "clip.mp4"
    written = write_clip(path, 9)
    src = run.video_source(path, start=3, stride=2, current_only=True)
    assert (list(src.items), src.count, src.name, src.by_source_index) == ([3], 1, "clip", True)
    assert (src.width, src.height, src.fps) == (64, 48, 20.0)
    assert src.index_value(3) == "0.150" and np.array_equal(src.ijk_to_ras(3), image_ijk_to_ras(64, 48))
    frames = list(src.frames)
    assert len(frames) == 1 and np.abs(frames[0].astype(int) - written[3]).mean() < 8  # mp4v is lossy
    clip = run.video_source(path, start=1, stride=3, max_frames=2)
    assert list(clip.items) == [1, 4] and clip.frames.frame_count == 2


def test_array_source_copies_and_maps_items():
    """Catches frames handed to the stream's reading thread as views of MRML memory (it may only copy them) and
    stream positions confused with the browser's item numbers."""
    frames = [textured(20, 30, s) for s in range(3)]
    src = _array_source(frames, items=range(4, 10, 2))
    assert (src.width, src.height, src.count, src.sequence) == (30, 20, 3, None)
    got = list(src.frames)
    assert all(np.array_equal(g, f) and not np.shares_memory(g, f) for g, f in zip(got, frames))
    assert [src.item(i) for i in range(3)] == [4, 6, 8]
    with pytest.raises(ValueError, match="RGB vector volumes"):
        run.array_source("bad", [np.zeros((20, 30))], range(1), str, lambda i: np.eye(4))


def test_output_kinds_defaults():
    """Catches per-frame full-resolution meshes made for whole clips by default (what exhausted memory), RGB frames
    copied when the input browser's sequence can be shared, poses without fusion."""
    one = SimpleNamespace(count=1, sequence=None)
    clip = SimpleNamespace(count=50, sequence=object())
    assert run.output_kinds(one) == ["depth", "frames", "points", "meshes"]
    assert run.output_kinds(clip) == ["depth", "points"]
    assert run.output_kinds(clip, meshes=True, fuse=True, points=False) == ["depth", "meshes", "poses"]
    assert list(run.OUTPUT_LABELS)[0] == "depth"  # the browser's master


def test_frame_outputs_leave_invalid_out_and_keep_the_budget():
    """Catches invalid depth stored as 0 or drawn as points, clouds over the point budget, outputs not in RAS."""
    h, w = 60, 80
    intr = sd.Intrinsics(70.0, 70.0, (w - 1) / 2, (h - 1) / 2, w, h)
    depth = np.full((h, w), 50.0, np.float32)
    depth[:, :20] = np.nan
    frame = SimpleNamespace(depth_mm=depth, rgb=textured(h, w, 1))
    pose = np.eye(4)
    pose[2, 3] = 10.0
    out = run.frame_outputs(frame, intr, ["depth", "frames", "points", "meshes", "poses"], pose, point_budget=500)
    assert out["depth"].shape == (1, h, w) and np.isnan(out["depth"][0, :, :20]).all() and not (out["depth"] == 0).any()
    assert out["frames"].shape == (1, h, w, 3)
    from vtkmodules.util.numpy_support import vtk_to_numpy

    cloud = out["points"]
    pts = vtk_to_numpy(cloud.GetPoints().GetData())
    assert 0 < len(pts) <= 500 and np.allclose(pts[:, 1], -50.0)  # z forward -> A = -z
    assert vtk_to_numpy(cloud.GetPointData().GetArray("Depth")).min() == 50.0
    assert out["meshes"].GetNumberOfPoints() == h * (w - 20)  # full resolution, valid pixels only
    assert np.allclose(out["poses"], pose_to_ras(pose))
    full = run.frame_outputs(frame, intr, ["depth", "points"], point_budget=0)
    assert full["points"].GetNumberOfPoints() == h * (w - 20) and "meshes" not in full
    blank = SimpleNamespace(depth_mm=np.full((h, w), np.nan, np.float32), rgb=frame.rgb)
    empty = run.frame_outputs(blank, intr, ["depth", "points", "meshes"])
    assert empty["points"].GetNumberOfPoints() == 0 == empty["meshes"].GetNumberOfPoints()
    ras = camera_to_ras(np.array([[0.0, 0.0, 50.0]]))[0]
    assert np.allclose(ras, [0, -50, 0])


def test_display_range_over_frames():
    """Catches a window/level range computed from invalid (NaN, 0) pixels or from the first frame only."""
    shown = run.DisplayRange()
    with pytest.raises(ValueError, match="no frame"):
        shown.range()
    shown.update(np.full((8, 8), np.nan, np.float32))
    shown.update(np.full((8, 8), 20.0, np.float32))
    shown.update(np.where(np.eye(40, dtype=bool), np.nan, 90.0).astype(np.float32))
    lo, hi = shown.range()
    assert lo == 20.0 and hi == 90.0
    flat = run.DisplayRange()
    flat.update(np.full((4, 4), 7.0))
    assert flat.range()[0] == 7.0 < flat.range()[1]


def test_unique_run_name():
    """Catches each run adding more same-named sequences: every run gets a name no node starts with."""
    assert run.unique_run_name("clip depth", ["clip", "other depth"]) == "clip depth"
    taken = ["clip depth", "clip depth depth", "clip depth 2 frames"]
    assert run.unique_run_name("clip depth", taken) == "clip depth 3"


def test_run_frames_streams_every_frame_to_write(model, one_torch_thread):
    """Catches a second inference loop (depth must be depth_stream's), per-frame outputs written late or kept,
    browser items lost under a stride, and NaN stored as 0."""
    frames = [textured(40, 56, s) for s in range(4)]
    src = _array_source(frames, items=range(1, 8, 2))
    intr = sd.Intrinsics.from_fov(56, 40, 70.0)
    written, calls = [], []
    result = run.run_frames(model, src, intr, ["depth", "points"], lambda item, out: written.append((item, out)),
                            lambda f, text: calls.append((f, text)) or True, point_budget=300, input_size=SIZE)
    expected = list(sd.depth_stream(model, frames, depth_range=DEFAULT_DEPTH_RANGE_MM, input_size=SIZE))
    assert [item for item, _ in written] == [1, 3, 5, 7] and result.frames == 4 and result.fused is None
    for (_, out), ref in zip(written, expected):
        assert set(out) == {"depth", "points"} and out["points"].GetNumberOfPoints() <= 300
        np.testing.assert_array_equal(out["depth"][0], ref.depth_mm)
    assert [t for _, t in calls] == [f"Frame {i} of 4" for i in range(1, 5)]
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:])) and calls[-1][0] <= 1.0
    lo, hi = result.display_range
    assert DEFAULT_DEPTH_RANGE_MM[0] - 1e-3 <= lo < hi <= DEFAULT_DEPTH_RANGE_MM[1] + 1e-3


def test_run_frames_cancel_stops_in_the_loop_and_in_fusion(model, one_torch_thread):
    """Catches a Cancel that is ignored until the end, or that cannot stop ICP / TSDF fusion or the surface
    extraction: False from progress raises Cancelled right there, and no further frame is written."""
    frames = [textured(40, 56, s) for s in range(5)]
    intr = sd.Intrinsics.from_fov(56, 40, 70.0)
    kinds = ["depth", "poses"]
    written = []
    with pytest.raises(Cancelled):
        run.run_frames(model, _array_source(frames), intr, kinds, lambda item, out: written.append(item),
                       lambda f, text: len(written) < 2, input_size=SIZE)
    assert written == [0, 1]
    texts = []
    with pytest.raises(Cancelled):
        run.run_frames(model, _array_source(frames), intr, kinds, lambda item, out: None,
                       lambda f, text: texts.append(text) or not text.startswith("Extracting"), input_size=SIZE)
    assert texts[-1] == "Extracting the fused surface"
    poses = []
    result = run.run_frames(model, _array_source(frames), intr, kinds, lambda item, out: poses.append(out["poses"]),
                            lambda f, text: True, input_size=SIZE, voxel_mm=2.0)
    assert len(poses) == 5 and np.allclose(poses[0], np.eye(4)) and result.fused is not None


def test_process_arguments_match_process():
    """Catches GUI fields that never reach the logic (or reach a parameter process() does not have), fusion on a
    single frame, and an unset video path passed as "."."""
    tree = ast.parse((REPO / "SurgicalDepth" / "SurgicalDepth.py").read_text())
    process = next(f for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthLogic"
                   for f in n.body if isinstance(f, ast.FunctionDef) and f.name == "process")
    params = {a.arg for a in process.args.args + process.args.kwonlyargs} - {"self"}
    fields = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthParameterNode")
    p = SimpleNamespace(**{s.target.id: None for s in fields.body if isinstance(s, ast.AnnAssign)})
    p.__dict__.update(inputMode="video", videoPath=Path(), modelChoice="default", modelPath=Path(),
                      registryName="depth-anything-v2-small", calibrationPath=Path("/c.json"), fuse=True)
    args = run.process_arguments(p, all_frames=True)
    assert set(args) <= params and args["videoPath"] is None and args["fuse"] is True
    assert args["calibration"] == "/c.json" and args["model"] == "default" and args["currentOnly"] is False
    assert run.process_arguments(p, all_frames=False)["fuse"] is False
    assert args["depthMesh"] is None  # unticked: the logic's default, a mesh for a single frame only
    p.depthMesh = True
    assert run.process_arguments(p, all_frames=True)["depthMesh"] is True
    used = set(args) | {"browser", "volume", "inputMode", "inputBrowser", "inputVolume", "modelChoice", "modelPath",
                        "registryName", "calibrationPath", "progress"}
    assert set(vars(p)) - used == set(), "parameter node fields that process_arguments ignores"
    p.inputMode = "sequence"
    assert "browser" in run.process_arguments(p, True) and "videoPath" not in run.process_arguments(p, True)
    p.inputMode = "camera"
    with pytest.raises(ValueError, match="input mode"):
        run.process_arguments(p, True)


def test_check_memory_refuses_before_decoding():
    """Catches a whole 1080p clip with full-resolution clouds and meshes started anyway."""
    big = SimpleNamespace(width=1920, height=1080, count=10_000, sequence=None)
    with pytest.raises(ValueError, match="point budget"):
        run.check_memory(big, ["depth", "frames", "points", "meshes"], point_budget=0, budget=1 << 30)
    run.check_memory(SimpleNamespace(width=64, height=48, count=3), ["depth"], budget=1 << 30)
