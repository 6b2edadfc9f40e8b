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


def scope_frames(n: int, height: int = 80, width: int = 112) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` textured frames (never darker than 60) inside a black circular scope border cut by the top and bottom
    edges, and the circle (bool ``[H, W]``)."""
    yy, xx = np.mgrid[:height, :width]
    scope = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= (height * 3 // 5) ** 2
    frames = [np.clip(textured(height, width, s), 60, 255).astype(np.uint8) for s in range(n)]
    for f in frames:
        f[~scope] = 0
    return frames, scope


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


def test_video_source_reads_past_a_frame_count_announced_too_low(tmp_path):
    """A WebM whose Duration says 1 s of its 2.4 s (60 frames at 25/s). Catches: a Slicer run of the whole video
    stopping at the 25 frames the container announces (the file's tail silently dropped), while a frame limit is
    still kept."""
    from video_files import webm_clip, with_duration

    path = tmp_path / "clip.webm"
    path.write_bytes(with_duration(webm_clip(path, [textured(24, 32, i) for i in range(60)]), 1000.0))
    source = run.video_source(path, stride=2)
    assert [i for i, _ in enumerate(source.frames)] == list(range(30))
    assert len(list(run.video_source(path, stride=2, max_frames=5).frames)) == 5


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


def test_run_frames_detail_read_reaches_the_stream(model, one_torch_thread):
    """Catches the panel's "Detail size" not reaching depth_stream (the depth of one read stored instead)."""
    frames = [textured(40, 56, s) for s in range(2)]
    intr = sd.Intrinsics.from_fov(56, 40, 70.0)
    written = []
    run.run_frames(model, _array_source(frames), intr, ["depth"], lambda item, out: written.append(out["depth"][0]),
                   lambda f, text: True, input_size=SIZE, detail_size=SIZE + 28, fov_mask="none")
    detailed = list(sd.depth_stream(model, frames, depth_range=DEFAULT_DEPTH_RANGE_MM, input_size=SIZE,
                                    detail_size=SIZE + 28, fov_mask=None))
    single = list(sd.depth_stream(model, frames, depth_range=DEFAULT_DEPTH_RANGE_MM, input_size=SIZE, fov_mask=None))
    for out, ref, one in zip(written, detailed, single):
        np.testing.assert_array_equal(out, ref.depth_mm)
        assert not np.allclose(out, one.depth_mm)


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


class _BlankFrame:
    """A model with the inference API whose prediction for source frame ``blank`` is flat (a black screen: no depth),
    and the tiny model's for the others."""

    def __init__(self, model, blank: int):
        self.model, self.blank = model, blank
        self.output_kind, self.depth_unit, self.default_batch_size = model.output_kind, model.depth_unit, 1

    def iter_batches(self, frames, input_size=None, batch_size=None):
        for i, batch in enumerate(self.model.iter_batches(frames, input_size, 1)):
            yield np.zeros_like(batch) if i == self.blank else batch


def test_fusion_goes_on_past_a_blank_frame(model, one_torch_thread):
    """Catches: a black frame (no valid depth) in a Slicer run with fusion handed to ICP, which refuses a blank map,
    so the whole run failed at it; the blank frame keeps the previous pose and is not fused, as the CLI skips it."""
    frames = [textured(40, 56, s) for s in range(4)]
    intr = sd.Intrinsics.from_fov(56, 40, 70.0)
    poses = []
    result = run.run_frames(_BlankFrame(model, 2), _array_source(frames), intr, ["depth", "poses"],
                            lambda item, out: poses.append(out["poses"]), lambda f, text: True, input_size=SIZE,
                            voxel_mm=2.0, fov_mask=None)
    assert result.frames == 4 and len(poses) == 4 and result.fused is not None
    assert np.array_equal(poses[2], poses[1])


def test_a_run_of_black_frames_ends_with_no_depth_instead_of_failing(model, tmp_path, one_torch_thread):
    """Catches a Slicer run that failed at its end when no frame had depth, now that a black frame gets none under
    the "auto" field of view: "no frame has a valid (finite, positive) depth" for the display range (starting live
    depth on a feed whose scope is not on yet runs the module on that one black image first, so live depth could
    not start), and "TSDFVolume is empty" for fusion. The run ends with the depth range shown and no fused
    surface."""
    import cv2

    path = tmp_path / "black.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (56, 40))
    for _ in range(3):
        writer.write(np.zeros((40, 56, 3), np.uint8))
    writer.release()
    intr = sd.Intrinsics.from_fov(56, 40, 70.0)
    stored = []
    result = run.run_frames(model, run.video_source(path), intr, ["depth", "points", "poses"],
                            lambda item, out: stored.append((item, out)), lambda f, text: True, input_size=SIZE,
                            voxel_mm=2.0)
    assert (result.frames, result.display_range, result.fused) == (3, DEFAULT_DEPTH_RANGE_MM, None)
    assert [item for item, _ in stored] == [0, 1, 2]
    for _, out in stored:
        assert np.isnan(out["depth"]).all() and out["points"].GetNumberOfPoints() == 0
        assert np.allclose(out["poses"], np.eye(4))
    one = run.run_frames(model, _array_source([np.zeros((40, 56, 3), np.uint8)]), intr, ["depth", "points"],
                         lambda item, out: None, lambda f, text: True, input_size=SIZE, near_mm=10.0, far_mm=80.0)
    assert (one.frames, one.display_range) == (1, (10.0, 80.0))


def test_fusion_holds_no_more_than_the_memory_it_is_given(model, one_torch_thread, monkeypatch):
    """Catches: the TSDF volume of a Slicer run built with its 5 GiB defaults whatever memory the budget left
    (``check_memory``'s answer), so its pool and extraction grid could take more than the run was allowed."""
    import SurgicalDepthLib.tsdf as tsdf_module
    from SurgicalDepthLib.memory_budget import FUSION_MIN_BYTES, TSDF_VOXEL_BYTES

    made = []

    class Recorded(tsdf_module.TSDFVolume):  # the real volume; its limits are recorded
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self.max_blocks, self.max_voxels))

    monkeypatch.setattr(tsdf_module, "TSDFVolume", Recorded)
    frames = [textured(40, 56, s) for s in range(2)]
    intr = sd.Intrinsics.from_fov(56, 40, 70.0)
    result = run.run_frames(model, _array_source(frames), intr, ["depth", "poses"], lambda item, out: None,
                            lambda f, text: True, input_size=SIZE, voxel_mm=2.0, fusion_bytes=FUSION_MIN_BYTES)
    ((blocks, voxels),) = made
    assert (blocks * 8 ** 3 + voxels) * TSDF_VOXEL_BYTES <= FUSION_MIN_BYTES and result.fused is not None


def _logic_params(tree: ast.Module, name: str) -> set[str]:
    method = next(f for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthLogic"
                  for f in n.body if isinstance(f, ast.FunctionDef) and f.name == name)
    return {a.arg for a in method.args.args + method.args.kwonlyargs} - {"self"}


def _parameter_node(tree: ast.Module, **values) -> SimpleNamespace:
    """A stand-in for the module's parameter node: every field None, then ``values``."""
    fields = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthParameterNode")
    p = SimpleNamespace(**{s.target.id: None for s in fields.body if isinstance(s, ast.AnnAssign)})
    p.__dict__.update({"inputMode": "video", "videoPath": Path(), "modelChoice": "default", "modelPath": Path(),
                       "fovMode": "auto", "fovPath": Path(), "registryName": "depth-anything-v2-small",
                       "calibrationPath": Path("/c.json"), **values})
    return p


def test_process_arguments_match_process():
    """Catches GUI fields that never reach the logic (or reach a parameter process() does not have), fusion on a
    single frame, an unset video path passed as ".", and a field-of-view choice that does not reach the stream."""
    tree = ast.parse((REPO / "SurgicalDepth" / "SurgicalDepth.py").read_text())
    params = _logic_params(tree, "process")
    p = _parameter_node(tree, fuse=True)
    args = run.process_arguments(p, all_frames=True)
    assert set(args) <= params and args["videoPath"] is None and args["fuse"] is True
    assert args["calibration"] == "/c.json" and args["model"] == "default" and args["currentOnly"] is False
    assert run.process_arguments(p, all_frames=False)["fuse"] is False
    assert args["depthMesh"] is None  # unticked: the logic's default, a mesh for a single frame only
    assert args["fovMask"] == "auto"
    p.depthMesh = True
    assert run.process_arguments(p, all_frames=True)["depthMesh"] is True
    used = set(args) | {"browser", "volume", "inputMode", "inputBrowser", "inputVolume", "modelChoice", "modelPath",
                        "registryName", "calibrationPath", "progress", "fovMode", "fovPath",
                        "liveRecord", "liveRecordFrames"}  # the last two: live_arguments
    assert set(vars(p)) - used == set(), "parameter node fields that process_arguments ignores"
    p.inputMode = "sequence"
    assert "browser" in run.process_arguments(p, True) and "videoPath" not in run.process_arguments(p, True)
    p.inputMode, p.inputVolume = "live", "the volume"
    assert run.process_arguments(p, True)["volume"] == "the volume"  # "Run": the live volume's current image
    p.inputMode = "camera"
    with pytest.raises(ValueError, match="input mode"):
        run.process_arguments(p, True)
    p.inputMode, p.fovMode = "video", "file"
    with pytest.raises(ValueError, match="no mask image"):
        run.process_arguments(p, True)
    p.fovPath = Path("/masks/scope.png")
    assert run.process_arguments(p, True)["fovMask"] == "/masks/scope.png"
    p.fovMode = "none"
    assert run.process_arguments(p, True)["fovMask"] == "none" and run.resolve_fov("none") is None


def test_live_arguments_match_start_live():
    """Catches live arguments that startLive (or process, which it passes them on to) does not take, a live run
    on another input than the live volume, a recording budget used while recording is off, a depth mesh per
    live frame (it is not updated live), and a detail read for live depth (its first image would be read twice,
    the live frames once: the run's depth would change character after the first image)."""
    tree = ast.parse((REPO / "SurgicalDepth" / "SurgicalDepth.py").read_text())
    start, process = _logic_params(tree, "startLive") - {"options"}, _logic_params(tree, "process")
    p = _parameter_node(tree, inputMode="live", inputVolume="the volume", liveRecord=False, liveRecordFrames=25,
                        videoPath=Path("/clip.mp4"), detailSize=252)
    args = run.live_arguments(p)
    assert "detailSize" not in args and run.process_arguments(p, True)["detailSize"] == 252
    assert set(args) <= start | process and args["volume"] == "the volume" and "videoPath" not in args
    assert args["recordFrames"] == 0 and args["depthMesh"] is False and args["currentOnly"] is True
    p.liveRecord = True
    assert run.live_arguments(p)["recordFrames"] == 25
    p.inputVolume = None
    with pytest.raises(ValueError, match="updating RGB volume"):
        run.live_arguments(p)


def test_input_ready_per_mode():
    """Catches run buttons enabled without the input their mode reads (an unset path is "." in the GUI)."""
    tree = ast.parse((REPO / "SurgicalDepth" / "SurgicalDepth.py").read_text())
    p = _parameter_node(tree)
    assert not run.input_ready(p) and not run.input_ready(None)
    p.videoPath = Path("/clip.mp4")
    assert run.input_ready(p)
    for mode, field in (("sequence", "inputBrowser"), ("volume", "inputVolume"), ("live", "inputVolume")):
        p.inputMode, p.inputBrowser, p.inputVolume = mode, None, None
        assert not run.input_ready(p)
        setattr(p, field, object())
        assert run.input_ready(p)


def test_resolve_fov_reads_a_mask_image(tmp_path):
    """Catches a field-of-view file that is passed to the stream as a path (depth_stream takes arrays only)."""
    from SurgicalDepthLib.fov import write_fov_mask

    mask = np.zeros((6, 8), bool)
    mask[1:5, 2:7] = True
    write_fov_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(run.resolve_fov(tmp_path / "m.png"), mask)
    np.testing.assert_array_equal(run.resolve_fov(str(tmp_path / "m.png")), mask)
    assert run.resolve_fov("auto") == "auto" and run.resolve_fov(None) is None and run.resolve_fov(mask) is mask
    with pytest.raises(FileNotFoundError):
        run.resolve_fov(tmp_path / "missing.png")


def test_run_frames_uses_and_returns_the_field_of_view(model, one_torch_thread):
    """Catches a field of view that is detected but not shown (RunResult.fov_mask), and a given mask that does not
    reach depth_stream: depth is NaN outside it, and none means every pixel."""
    frames, scope = scope_frames(2)
    intr = sd.Intrinsics.from_fov(112, 80, 70.0)
    depths = []
    result = run.run_frames(model, _array_source(frames), intr, ["depth"], lambda i, out: depths.append(out["depth"]),
                            lambda f, t: True, input_size=SIZE)
    assert result.fov_mask is not None and not (result.fov_mask & ~scope).any() and result.fov_mask[40, 20:90].all()
    assert np.isnan(depths[0][0][~scope]).all()
    given = np.ones((80, 112), bool)
    given[:20] = False
    depths.clear()
    result = run.run_frames(model, _array_source(frames), intr, ["depth"], lambda i, out: depths.append(out["depth"]),
                            lambda f, t: True, input_size=SIZE, fov_mask=given)
    np.testing.assert_array_equal(result.fov_mask, given)
    assert np.isnan(depths[1][0][:20]).all() and np.isfinite(depths[1][0][20:]).any()
    result = run.run_frames(model, _array_source(frames), intr, ["depth"], lambda i, out: None, lambda f, t: True,
                            input_size=SIZE, fov_mask="none")
    assert result.fov_mask is None


def test_display_settings_hide_invalid_depth():
    """Catches NaN depth drawn in the "near" colour (the threshold must exclude NaN), a window that is not the run's
    depth range, and RGB point colours that are passed through the colour table instead of used as they are."""
    depth = dict(run.display_settings("depth", (5, 120), False, "vtkMRMLColorTableNodeRainbow"))
    assert depth["SetApplyThreshold"] == (True,) and depth["SetAutoThreshold"] == (False,)
    lo, hi = depth["SetThreshold"]
    assert not lo <= float("nan") <= hi and lo <= 5 and hi >= 1e6  # NaN fails it, every real depth passes
    assert depth["SetWindowLevelMinMax"] == (5.0, 120.0) and depth["SetAutoWindowLevel"] == (False,)
    rgb = dict(run.display_settings("points", (5, 120), False, "id"))
    assert rgb["SetActiveScalar"][0] == "RGB" and rgb["SetScalarRangeFlagFromString"] == ("UseDirectMapping",)
    by_depth = dict(run.display_settings("meshes", (5, 120), True, "id"))
    assert by_depth["SetActiveScalar"][0] == "Depth" and by_depth["SetScalarRangeFlagFromString"] == ("UseManual",)
    assert by_depth["SetScalarRange"] == (5.0, 120.0) and by_depth["SetAndObserveColorNodeID"] == ("id",)
    with pytest.raises(ValueError, match="kind"):
        run.display_settings("frames", (5, 120), False, "id")


def test_output_node_classes_cover_every_output():
    assert list(run.OUTPUT_NODE_CLASSES) == list(run.OUTPUT_LABELS)  # _newSequences makes one node per kind


def test_check_rgb_sequence():
    """Catches: a sequence of streaming volumes (a vector volume subclass: Slicer's mkv/webm reader, OpenIGTLink
    VIDEO) refused as not RGB."""
    run.check_rgb_sequence("vtkMRMLVectorVolumeNode")
    run.check_rgb_sequence("vtkMRMLStreamingVolumeNode")
    for bad in ("vtkMRMLScalarVolumeNode", None):
        with pytest.raises(ValueError, match="RGB vector volumes"):
            run.check_rgb_sequence(bad)


def test_volume_array_reads_any_rgb_volume_as_arrayFromVolume_would():
    """``volume_array(node.GetImageData())`` on a real vtkImageData of an RGB frame gives ``[K, J, I, C]`` with the
    pixels in place (what ``slicer.util.arrayFromVolume`` gives a vector volume: the scalars reshaped, no copy).
    Catches: streaming volumes (OpenIGTLink VIDEO, SlicerIGSIO mkv/webm) read through ``arrayFromVolume``, which
    refuses their class by exact name ("Unsupported volume type"), so Run and Start live failed on them; axes
    swapped (I and J: a transposed frame); a missing image not named."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData

    from SurgicalDepthLib.slicer_source import volume_array

    rgb = textured(5, 7, 0)  # H = 5 rows (J), W = 7 columns (I)
    image = vtkImageData()
    image.SetDimensions(7, 5, 1)
    scalars = numpy_to_vtk(rgb.reshape(-1, 3), deep=True)
    scalars.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(scalars)
    got = volume_array(image)
    assert got.shape == (1, 5, 7, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], rgb)
    got[0, 0, 0, 0] ^= 0xFF  # a view on the volume's memory, as arrayFromVolume's
    assert image.GetPointData().GetScalars().GetValue(0) == rgb[0, 0, 0] ^ 0xFF
    with pytest.raises(ValueError, match="holds no image"):
        volume_array(vtkImageData())


def test_file_run_nodes_gives_sequences_and_browsers_an_item():
    """A run's nodes go under its folder. Catches: sequences and the browser, which no subject-hierarchy plugin
    claims (Slicer gives them no item), left out of the folder — deleting it left every sequence in the scene,
    unseen; nodes already filed elsewhere moved; display nodes given items. (``sh`` stands in for Slicer's
    vtkMRMLSubjectHierarchyNode, which cannot run here: only the calls this function makes.)"""
    from SurgicalDepthLib.slicer_helpers import file_run_nodes

    class Node(SimpleNamespace):
        def IsA(self, name):
            return name in self.classes

    class SubjectHierarchy:
        def __init__(self):
            self.items = {"depth volume": 11, "model": 12, "elsewhere": 13}
            self.parents = {11: 1, 12: 1, 13: 7}
            self.created = []

        GetSceneItemID = staticmethod(lambda: 1)
        GetItemByDataNode = lambda self, node: self.items.get(node.name, 0)  # noqa: E731
        GetItemParent = lambda self, item: self.parents[item]  # noqa: E731

        def SetItemParent(self, item, parent):
            self.parents[item] = parent

        def CreateItem(self, parent, node):
            self.created.append((parent, node.name))

    sh = SubjectHierarchy()
    nodes = [Node(name="depth volume", classes=("vtkMRMLVolumeNode",)),
             Node(name="model", classes=("vtkMRMLModelNode",)),
             Node(name="elsewhere", classes=("vtkMRMLModelNode",)),
             Node(name="depth sequence", classes=("vtkMRMLSequenceNode",)),
             Node(name="browser", classes=("vtkMRMLSequenceBrowserNode",)),
             Node(name="display", classes=("vtkMRMLDisplayNode",))]
    file_run_nodes(sh, 99, nodes)
    assert sh.parents == {11: 99, 12: 99, 13: 7}
    assert sh.created == [(99, "depth sequence"), (99, "browser")]


def test_run_nodes_are_what_the_run_made_not_what_others_added_meanwhile():
    """A cancel removes the run's nodes and a finished run files them in its folder. Catches: both took every node
    added to the scene while the run lasted, so a volume the user loaded meanwhile (the panel keeps the GUI alive),
    or an OpenIGTLink connector's new device, was deleted by the cancel or moved into the run's folder (and deleted
    with it); the input browser's sequence, not new, taken as the run's; a reference cycle (browser <-> proxy)
    looping. (Nodes stand in for MRML nodes: only the reference calls ``run_nodes`` makes.)"""
    from SurgicalDepthLib.slicer_helpers import SurgicalDepthNodes, run_nodes

    class Node:
        def __init__(self, node_id, **refs):
            self.id, self.refs = node_id, refs  # role -> [nodes]

        GetID = lambda self: self.id  # noqa: E731
        GetNumberOfNodeReferenceRoles = lambda self: len(self.refs)  # noqa: E731
        GetNthNodeReferenceRole = lambda self, n: list(self.refs)[n]  # noqa: E731
        GetNumberOfNodeReferences = lambda self, role: len(self.refs[role])  # noqa: E731
        GetNthNodeReference = lambda self, role, n: self.refs[role][n]  # noqa: E731

    color = Node("vtkMRMLColorTableNodeRainbow")  # a default node: there before the run
    input_sequence = Node("vtkMRMLSequenceNode1")  # the input browser's (shared, not copied)
    depth = Node("vtkMRMLSequenceNode2")
    display = Node("vtkMRMLScalarVolumeDisplayNode3", colorNodeID=[color])
    proxy = Node("vtkMRMLScalarVolumeNode4", display=[display, None], storage=[])
    frames_proxy = Node("vtkMRMLVectorVolumeNode5")
    browser = Node("vtkMRMLSequenceBrowserNode6", sequenceNodeRef=[depth, input_sequence],
                   dataNodeRef=[proxy, frames_proxy])
    proxy.refs["browser"] = [browser]  # a cycle
    fov = Node("vtkMRMLLabelMapVolumeNode7", display=[Node("vtkMRMLLabelMapVolumeDisplayNode8")])
    Node("vtkMRMLScalarVolumeNode9", display=[Node("vtkMRMLScalarVolumeDisplayNode10")])  # a user's: no run reference
    new_ids = {f"{n}{i}" for n, i in (("vtkMRMLSequenceNode", 2), ("vtkMRMLScalarVolumeDisplayNode", 3),
                                       ("vtkMRMLScalarVolumeNode", 4), ("vtkMRMLVectorVolumeNode", 5),
                                       ("vtkMRMLSequenceBrowserNode", 6), ("vtkMRMLLabelMapVolumeNode", 7),
                                       ("vtkMRMLLabelMapVolumeDisplayNode", 8), ("vtkMRMLScalarVolumeNode", 9),
                                       ("vtkMRMLScalarVolumeDisplayNode", 10))}
    nodes = SurgicalDepthNodes(browser=browser, frames=input_sequence, depth=depth, fov=fov, proxies={"depth": proxy})
    found = {n.GetID() for n in run_nodes(nodes.roots(), new_ids)}
    assert found == new_ids - {"vtkMRMLScalarVolumeNode9", "vtkMRMLScalarVolumeDisplayNode10"}
    cancelled_early = SurgicalDepthNodes(frames=input_sequence, depth=depth)  # before the browser was made
    assert [n.GetID() for n in run_nodes(cancelled_early.roots(), new_ids)] == ["vtkMRMLSequenceNode2"]


def test_ensure_weights_asks_before_downloading_and_closes_the_dialog(monkeypatch):
    """Catches a download without the user's consent, a dialog left open after an error, and a question asked
    for weights that are already on disk."""
    from SurgicalDepthLib import slicer_helpers

    calls = []

    class Dialog:
        def close(self):
            calls.append("close")

    def download(name, progress):
        calls.append(("download", name, progress(0.5, "half")))
        raise Cancelled("stop")

    monkeypatch.setattr(slicer_helpers, "weights_cached", lambda name: name == "here")
    monkeypatch.setattr(slicer_helpers, "download_weights", download)
    opened = lambda name: (calls.append(("open", name)) or Dialog(), lambda f, t: True)  # noqa: E731
    run.ensure_weights("here", lambda: calls.append("asked") or True, opened)
    assert calls == []
    with pytest.raises(RuntimeError, match="declined"):
        run.ensure_weights("w", lambda: False, opened)
    assert calls == []
    with pytest.raises(Cancelled):
        run.ensure_weights("w", None, opened)
    assert calls == [("open", "w"), ("download", "w", True), "close"]


def test_dialog_progress_reports_and_cancels():
    dialog, events = SimpleNamespace(labelText="", value=0, wasCanceled=False), []
    progress = run.dialog_progress(dialog, lambda: events.append(1))
    assert progress(0.25, "Frame 1 of 4") is True and (dialog.labelText, dialog.value, events) == ("Frame 1 of 4",
                                                                                                   25, [1])
    dialog.wasCanceled = True
    assert progress(0.5, "Frame 2 of 4") is False


def test_check_memory_refuses_before_decoding():
    """Catches a whole 1080p clip with full-resolution clouds and meshes started anyway."""
    big = SimpleNamespace(width=1920, height=1080, count=10_000, sequence=None)
    with pytest.raises(ValueError, match="point budget"):
        run.check_memory(big, ["depth", "frames", "points", "meshes"], point_budget=0, budget=1 << 30)
    run.check_memory(SimpleNamespace(width=64, height=48, count=3), ["depth"], budget=1 << 30)


def test_check_memory_counts_fusion_and_leaves_it_the_rest():
    """Catches: a run with fusion ("poses") checked as if it had none, so a budget that holds the frames' outputs
    but no TSDF volume let it start and exhaust memory; and a volume given its 5 GiB defaults whatever the budget
    left (the pool and the extraction grid could then take more than the memory the run was allowed)."""
    from SurgicalDepthLib.memory_budget import FUSION_MIN_BYTES, estimate_output_bytes

    clip = SimpleNamespace(width=1920, height=1080, count=10, sequence=None)
    without = estimate_output_bytes(1920, 1080, 10, rgb_frames=True, points=True)
    budget = without + FUSION_MIN_BYTES // 2  # holds the outputs, not the least a fusion needs
    assert run.check_memory(clip, ["depth", "frames", "points"], budget=budget) is None  # no fusion: nothing to give
    with pytest.raises(ValueError, match="fusion off"):
        run.check_memory(clip, ["depth", "frames", "points", "poses"], budget=budget)
    left = run.check_memory(clip, ["depth", "frames", "points", "poses"], budget=without + (1 << 30))
    assert left == 1 << 30  # all that the outputs leave goes to the volume
