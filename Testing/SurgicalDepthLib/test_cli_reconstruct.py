"""``surgical-depth reconstruct`` end to end on a rendered clip written to a real image folder."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import SurgicalDepthLib as sd
from SurgicalDepthLib.cli import main
from SurgicalDepthLib.pose_io import read_poses


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import SurgicalDepthTrainingLib as sdt

    root = tmp_path_factory.mktemp("clip")
    frames = sdt.render_clip("colon", n_frames=3, seed=2, height=56, width=70)
    (root / "rgb").mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(root / "rgb" / f"{i:03d}.png"), cv2.cvtColor(f["image"], cv2.COLOR_RGB2BGR))
    lines = ["# index then 16 numbers"] + [f"{i} " + " ".join(f"{v:.17g}" for v in f["pose"].ravel())
                                          for i, f in enumerate(frames)]
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    k = frames[0]["intrinsics"]
    return root, frames, f"{k.fx},{k.fy},{k.cx},{k.cy}"


def test_reconstruct_with_given_poses(tmp_path, clip, capsys):
    root, frames, intr = clip
    out = tmp_path / "out"
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--intrinsics", intr, "--fuse",
                 "--poses", str(root / "poses.txt"), "--voxel-size", "2", "--input-size", "70",
                 "--device", "cpu", "--mesh"]) == 0
    meta = json.loads((out / "reconstruction.json").read_text())
    assert meta["frames"] == 3 and meta["poses"].startswith("given") and meta["unit"] == "mm"
    used = read_poses(out / "poses.txt")
    assert sorted(used) == [0, 1, 2]
    for i, frame in enumerate(frames):
        np.testing.assert_allclose(used[i], frame["pose"], rtol=0, atol=1e-6)
    cloud = sd.load_mesh(out / "points_000000.ply")
    assert cloud.GetNumberOfPoints() == 56 * 70  # every pixel gets a depth in [near, far]
    depths = np.array([cloud.GetPoint(i)[2] for i in range(0, 56 * 70, 97)])
    assert depths.min() >= 5.0 - 1e-3 and depths.max() <= 120.0 + 1e-3
    assert sd.load_mesh(out / "mesh_000002.ply").GetNumberOfPolys() > 0
    assert sd.load_mesh(out / "fused_mesh.ply").GetNumberOfPolys() > 0
    assert "fused mesh" in capsys.readouterr().out


def test_reconstruct_estimates_poses_without_file(tmp_path, clip):
    root, _, intr = clip
    out = tmp_path / "icp"
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--intrinsics", intr, "--fuse",
                 "--voxel-size", "2", "--input-size", "70", "--device", "cpu", "--every", "2"]) == 0
    meta = json.loads((out / "reconstruction.json").read_text())
    assert "ICP" in meta["poses"]
    assert len(read_poses(out / "poses.txt")) == 3
    assert sorted(p.name for p in out.glob("points_*.ply")) == ["points_000000.ply", "points_000002.ply"]


def test_reconstruct_to_stl_writes_meshes_as_stl_and_clouds_as_ply(tmp_path, clip):
    """Bug caught: --format stl (offered by the CLI) failing after the whole inference with "cannot save points to
    points_000000.stl" (STL holds triangles only), so it could never succeed."""
    root, _, intr = clip
    out = tmp_path / "stl"
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--intrinsics", intr, "--fuse",
                 "--voxel-size", "2", "--input-size", "70", "--device", "cpu", "--mesh", "--every", "2",
                 "--format", "stl", "--progress", "none"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["fused_mesh.stl", "mesh_000000.stl", "mesh_000002.stl", "points_000000.ply",
                     "points_000002.ply", "poses.txt", "reconstruction.json"]
    assert sd.load_mesh(out / "points_000002.ply").GetNumberOfPoints() == 56 * 70
    assert sd.load_mesh(out / "mesh_000000.stl").GetNumberOfPolys() > 0


def test_reconstruct_bad_input(tmp_path, clip, capsys):
    root, _, intr = clip
    bad = tmp_path / "poses.txt"
    bad.write_text("1 2 3\n")
    out = tmp_path / "never"
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--fuse", "--poses", str(bad)]) == 2
    assert "expected 16 numbers" in capsys.readouterr().err
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--depth-range", "50", "10"]) == 2
    assert "0 < NEAR < FAR" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert not out.exists()


def test_stride_takes_the_pose_of_each_source_frame(tmp_path, clip):
    """Catches: --stride 2 --poses fusing frames 0 and 2 with the poses of lines 0 and 1 (the index column
    ignored), and the written poses file numbering frames by position instead of source index."""
    root, frames, intr = clip
    out = tmp_path / "stride"
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--intrinsics", intr, "--fuse",
                 "--poses", str(root / "poses.txt"), "--stride", "2", "--voxel-size", "2", "--input-size", "70",
                 "--device", "cpu"]) == 0
    used = read_poses(out / "poses.txt")
    assert sorted(used) == [0, 2]
    np.testing.assert_allclose(used[2], frames[2]["pose"], rtol=0, atol=1e-6)


def test_saved_depth_blank_frame_is_skipped(tmp_path, clip, caplog):
    """Catches: one blank frame (no depth) ending the whole reconstruction with 'no valid depth pixels'; and a
    warning for each such frame (a clip that starts black now has one frame without depth per black frame): the
    first is warned, the others counted in one closing warning."""
    import logging

    from SurgicalDepthLib.saved_predictions import INFO_NAME

    root, _, intr = clip
    depth_dir = tmp_path / "pred"
    depth_dir.mkdir()
    ramp = np.linspace(1.0, 2.0, 56 * 70, dtype=np.float32).reshape(56, 70)
    for i, m in enumerate([np.ones((56, 70), np.float32), ramp, np.ones((56, 70), np.float32)]):
        np.save(depth_dir / f"{i:06d}.npy", m)
    (depth_dir / INFO_NAME).write_text(json.dumps({"model": "test", "output_kind": "disparity",
                                                       "depth_unit": "relative", "format": "npy", "size": [56, 70]}))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="SurgicalDepthLib.cli.reconstruct"):
        assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--intrinsics", intr, "--depth",
                     str(depth_dir), "--fuse", "--voxel-size", "2"]) == 0
    assert sorted(p.name for p in out.glob("points_*.ply")) == ["points_000001.ply"]
    assert sorted(read_poses(out / "poses.txt")) == [1]
    warned = [r.getMessage() for r in caplog.records if r.name == "SurgicalDepthLib.cli.reconstruct"]
    assert len(warned) == 2 and "frame 0 has no valid depth" in warned[0], warned
    assert "2 of 3 frames had no valid depth" in warned[1]


def test_saved_depth_of_other_frames_fails_before_any_output(tmp_path, clip, capsys):
    """Maps predicted with ``--stride 2`` read by a reconstruct of every frame. Catches: frame 0's cloud written,
    then the run stopped at frame 1 (a partial run folder, no fused mesh, no reconstruction.json), with no word of
    the --stride that selects the frames the maps are for; the same run with that stride succeeds."""
    from SurgicalDepthLib.saved_predictions import INFO_NAME

    root, _, intr = clip
    depth_dir = tmp_path / "pred"
    depth_dir.mkdir()
    ramp = np.linspace(1.0, 2.0, 56 * 70, dtype=np.float32).reshape(56, 70)
    for i in (0, 2):
        np.save(depth_dir / f"{i:06d}.npy", ramp)
    (depth_dir / INFO_NAME).write_text(json.dumps({"model": "test", "output_kind": "disparity",
                                                   "depth_unit": "relative", "format": "npy", "size": [56, 70]}))
    command = ["reconstruct", str(root / "rgb"), "--intrinsics", intr, "--depth", str(depth_dir), "--fuse",
               "--voxel-size", "2"]
    assert main([*command, "--output", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frame 1" in err[0] and "--stride 2" in err[0], err
    assert not (tmp_path / "all").exists()
    assert main([*command, "--stride", "2", "--output", str(tmp_path / "every2")]) == 0
    assert (tmp_path / "every2" / "reconstruction.json").is_file()


def test_max_depth_keeps_far_outliers_of_a_metric_model_out_of_the_fusion(tmp_path, clip, capsys):
    """Catches metric depth fused without a cap: one 2 m outlier pixel per frame made the fused grid too large, so
    the run failed after every frame with advice to pass an option the CLI did not have; ``--max-depth`` caps it
    and is recorded, and a bad value is one line, exit 2. Also catches a pose file with NaN that printed numpy's
    warning and its source line before the one-line error."""
    from SurgicalDepthLib.saved_predictions import INFO_NAME

    root, frames, intr = clip
    depth_dir = tmp_path / "pred"
    depth_dir.mkdir()
    for i, frame in enumerate(frames):
        depth = frame["depth"].astype(np.float32)
        depth[20, 30] = 2e6  # a far outlier, 2 km
        np.save(depth_dir / f"{i:06d}.npy", depth)
    (depth_dir / INFO_NAME).write_text(json.dumps({"model": "test", "output_kind": "depth", "depth_unit": "mm",
                                                   "format": "npy", "size": [56, 70]}))
    command = ["reconstruct", str(root / "rgb"), "--output", str(tmp_path / "out"), "--intrinsics", intr, "--depth",
               str(depth_dir), "--fuse", "--poses", str(root / "poses.txt"), "--voxel-size", "0.5"]
    assert main(command) == 2
    assert "--max-depth" in capsys.readouterr().err
    assert main(command + ["--max-depth", "300", "--overwrite"]) == 0
    meta = json.loads((tmp_path / "out" / "reconstruction.json").read_text())
    assert meta["max_depth_mm"] == 300.0 and sd.load_mesh(tmp_path / "out" / "fused_mesh.ply").GetNumberOfPolys()
    capsys.readouterr()
    for bad in ("0", "-5", "inf", "nan"):
        assert main(command[:-2] + ["--voxel-size", "2", "--max-depth", bad, "--output", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--max-depth must be a positive number" in err[0] and not (tmp_path / bad).exists()
    nan_poses = tmp_path / "nan.txt"
    lines = (root / "poses.txt").read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:1] + ["nan"] + lines[1].split()[2:])  # frame 0's R[0, 0]
    nan_poses.write_text("\n".join(lines) + "\n")
    assert main(command[:-4] + ["--poses", str(nan_poses), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not finite numbers" in err[0], err


def test_calibrated_wide_lens_corrects_the_depth_of_the_points(tmp_path, clip):
    """Catches: reconstruct ignoring the calibration when it predicts (the default model's depth of a wide-angle
    scope left uncorrected, so the periphery's points lie 2-3x too far). Without a calibration the depth is the
    raw stream's (the 70° guess is narrower than the model's reference lens, so it would not change it anyway)."""
    root, frames, _ = clip
    f = 0.5 * 70 / np.tan(np.radians(75.0))  # a 150° pinhole across the 70 px width
    calib = sd.Intrinsics(f, f, 34.5, 27.5, 70, 56)
    model = sd.load_model("default", device="cpu")

    def cloud_z(out, *extra):
        assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--input-size", "70",
                     "--device", "cpu", "--max-frames", "1", *extra]) == 0
        cloud = sd.load_mesh(out / "points_000000.ply")
        return np.array([cloud.GetPoint(i)[2] for i in range(cloud.GetNumberOfPoints())])

    def stream_z(**kw):
        return next(sd.depth_stream(model, [frames[0]["image"]], input_size=70, **kw)).depth_mm.ravel()

    corrected = cloud_z(tmp_path / "wide", "--intrinsics", f"{f},{f},34.5,27.5")
    np.testing.assert_allclose(corrected, stream_z(intrinsics=calib), rtol=1e-4)
    assert not np.allclose(corrected, stream_z(), rtol=1e-2)
    np.testing.assert_allclose(cloud_z(tmp_path / "guess"), stream_z(), rtol=1e-4)  # no calibration: raw


def _scope_frame(h: int, w: int, seed: int, shift: int = 0) -> np.ndarray:
    """Smooth random tissue inside a disc (centre moved ``shift`` px right) on a black scope border."""
    rng = np.random.default_rng(seed)
    rgb = cv2.resize(rng.integers(40, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_LINEAR)
    v, u = np.mgrid[0:h, 0:w]
    rgb[(u - (w - 1) / 2 - shift) ** 2 + (v - (h - 1) / 2) ** 2 > (0.45 * min(h, w)) ** 2] = 0
    return rgb


def test_a_moving_field_of_view_writes_each_mask_it_used(tmp_path):
    """The scope image moves 16 px right at frame 28 of 60; the points follow the new field of view, and the mask
    files must say so. Catches: only frame 0's mask written as ``fov_mask.png``, with nothing telling that later
    frames used another one."""
    from SurgicalDepthLib.fov import read_fov_mask

    folder = tmp_path / "moving"
    folder.mkdir()
    for i in range(60):
        cv2.imwrite(str(folder / f"{i:03d}.png"), _scope_frame(64, 80, i % 3, 16 if i >= 28 else 0)[..., ::-1])
    out = tmp_path / "out"
    assert main(["reconstruct", str(folder), "--output", str(out), "--intrinsics", "60,60,39.5,31.5",
                 "--input-size", "70", "--device", "cpu", "--every", "100", "--progress", "none"]) == 0
    records = json.loads((out / "reconstruction.json").read_text())["fov_masks"]
    assert len(records) == 2 and records[0] == {"from_frame": 0, "file": "fov_mask.png"}
    changed = records[1]["from_frame"]
    assert 28 < changed < 60 and records[1]["file"] == f"fov_mask_{changed:06d}.png"
    assert sorted(p.name for p in out.glob("fov_mask*.png")) == ["fov_mask.png", records[1]["file"]]
    first, later = (read_fov_mask(out / r["file"]) for r in records)
    assert later[:, 64:].sum() > first[:, 64:].sum() + 64  # the field of view reaches further right


def test_a_fov_mask_file_of_another_size_names_the_flag_the_file_and_the_input(tmp_path, clip, capsys):
    """Catches: a ``--fov-mask FILE`` that does not fit the frames failing after the model loaded, with "fov_mask
    has shape (40, 40), expected (56, 70) like the frames" (neither the flag, the file nor the input named)."""
    from SurgicalDepthLib.fov import write_fov_mask

    root, _, intr = clip
    mask = write_fov_mask(tmp_path / "mask.png", np.ones((40, 40), bool))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["reconstruct", str(root / "rgb"), "--output", str(out), "--intrinsics", intr, "--fov-mask",
                 str(mask), "--input-size", "70", "--device", "cpu", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--fov-mask {mask} is 40x40 pixels but input {root / 'rgb'} is 70x56" in err[0], err
    assert not out.exists()


def _exact_depth_folder(folder, frames):
    """A ``predict``-style folder holding the clip's exact depth (mm, NaN where invalid)."""
    from SurgicalDepthLib.saved_predictions import INFO_NAME

    folder.mkdir()
    for i, frame in enumerate(frames):
        np.save(folder / f"{i:06d}.npy", np.where(frame["valid"], frame["depth"], np.nan).astype(np.float32))
    h, w = frames[0]["depth"].shape
    (folder / INFO_NAME).write_text(json.dumps({"model": "exact", "output_kind": "depth", "depth_unit": "mm",
                                                "format": "npy", "size": [h, w]}))
    return folder


def _own_points(frame, k):
    """Camera-frame points of the valid pixels, unprojected here (pixel centres at integers, z-depth)."""
    v, u = np.nonzero(frame["valid"])
    z = frame["depth"][v, u].astype(np.float64)
    return np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z], axis=1)


def _depth_error(world, frames, k):
    """Per world point: the least ``|z - depth|`` over the frames that see it (projected to the nearest pixel)."""
    best = np.full(len(world), np.inf)
    for f in frames:
        inv = np.linalg.inv(f["pose"])
        cam = world @ inv[:3, :3].T + inv[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.rint(k.fx * cam[:, 0] / cam[:, 2] + k.cx)
            v = np.rint(k.fy * cam[:, 1] / cam[:, 2] + k.cy)
        inside = (cam[:, 2] > 0) & (u >= 0) & (u < k.width) & (v >= 0) & (v < k.height)
        ui, vi = u[inside].astype(int), v[inside].astype(int)
        seen = f["valid"][vi, ui]
        err = np.abs(cam[inside, 2][seen] - f["depth"][vi[seen], ui[seen]])
        idx = np.flatnonzero(inside)[seen]
        best[idx] = np.minimum(best[idx], err)
    return best[np.isfinite(best)]


def test_exact_depth_and_poses_give_the_true_points_and_the_frames_are_recorded(tmp_path, clip, caplog):
    """Catches: ``--poses`` without ``--fuse`` read, checked and then silently unused (the per-frame clouds stay in
    camera coordinates) with no word of it, and reconstruction.json not saying in which coordinates the per-frame
    clouds and the fused mesh are. With exact depth and poses the clouds are the pixels' true camera-frame points
    and the fused surface lies on the world points."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    root, frames, intr = clip
    k = frames[0]["intrinsics"]
    depth = _exact_depth_folder(tmp_path / "pred", frames)
    base = ["reconstruct", str(root / "rgb"), "--intrinsics", intr, "--depth", str(depth), "--fov-mask", "none",
            "--poses", str(root / "poses.txt"), "--progress", "none"]
    with caplog.at_level("WARNING"):
        assert main(base + ["--output", str(tmp_path / "frames")]) == 0
    assert any("--poses" in r.getMessage() and "only with --fuse" in r.getMessage() for r in caplog.records)
    meta = json.loads((tmp_path / "frames" / "reconstruction.json").read_text())
    assert "camera" in meta["points_frame"] and "fused_mesh_frame" not in meta
    for i in (0, 2):
        cloud = sd.load_mesh(tmp_path / "frames" / f"points_{i:06d}.ply")
        got = vtk_to_numpy(cloud.GetPoints().GetData())
        np.testing.assert_allclose(got, _own_points(frames[i], k), rtol=1e-5, atol=1e-4)
    assert main(base + ["--output", str(tmp_path / "fused"), "--fuse", "--voxel-size", "1"]) == 0
    meta = json.loads((tmp_path / "fused" / "reconstruction.json").read_text())
    assert "world" in meta["fused_mesh_frame"] and "poses.txt" in meta["fused_mesh_frame"]
    mesh = sd.load_mesh(tmp_path / "fused" / "fused_mesh.ply")
    verts = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)
    assert np.median(_depth_error(verts, frames, k)) < 0.5  # half a voxel (wrong poses: ~35 mm)


def test_a_frame_past_the_announced_count_without_a_pose_is_one_line(tmp_path, capsys):
    """A WebM whose Duration says 1 s of its 2.4 s, fused with the poses of the 25 frames it announces. Catches:
    the frames read past the announced count (the reader reads on) looked up in the poses with a KeyError and a
    traceback; it is one line naming the poses file and the frame, exit 2."""
    from video_files import webm_clip, with_duration

    from SurgicalDepthLib.saved_predictions import INFO_NAME

    video = tmp_path / "clip.webm"
    frames = [np.clip(cv2.resize(np.random.default_rng(i).integers(0, 256, (3, 4, 3), np.uint8), (32, 24)), 40, 255)
              for i in range(60)]
    video.write_bytes(with_duration(webm_clip(video, frames), 1000.0))
    depth_dir = tmp_path / "pred"
    depth_dir.mkdir()
    for i in range(60):
        np.save(depth_dir / f"{i:06d}.npy", np.full((24, 32), 50.0, np.float32))
    (depth_dir / INFO_NAME).write_text(json.dumps({"model": "test", "output_kind": "depth", "depth_unit": "mm",
                                                   "format": "npy", "size": [24, 32]}))
    poses = tmp_path / "poses.txt"
    poses.write_text("".join(f"{i} " + " ".join(f"{v:g}" for v in np.eye(4).ravel()) + "\n" for i in range(25)))
    assert main(["reconstruct", str(video), "--output", str(tmp_path / "out"), "--intrinsics", "30,30,16,12",
                 "--depth", str(depth_dir), "--fuse", "--poses", str(poses), "--fov-mask", "none", "--progress",
                 "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(poses) in err[0] and "frame 25" in err[0], err


def test_a_cut_video_is_reconstructed_to_its_real_end_and_progress_ends_there(tmp_path, capsys):
    """A video cut in half: ``reconstruct`` reads every frame that decodes and its jsonl progress ends at that
    count. Catches: the run failing at the cut, and the stage's last event left at 10 of the 20
    frames the container announced (the Slicer panel and scripts wait for step == total)."""
    from tiny_model import textured, tiny_model
    from video_files import cut_in_half, mjpeg_avi

    from SurgicalDepthLib.checkpoints import save_checkpoint

    # seeded weights with a live output: an unseeded random:surgical-depth-tiny outputs 0 everywhere for about 4 in
    # 10 draws, and a clip without any depth is an error
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", tiny_model())
    whole = tmp_path / "whole.avi"
    mjpeg_avi(whole, [textured(48, 64, i) for i in range(20)], fps=20.0)
    cut = cut_in_half(whole, tmp_path / "cut.avi")
    capsys.readouterr()
    assert main(["reconstruct", str(cut), "--output", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--device", "cpu", "--input-size", "56", "--fov-mask", "none", "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    steps = [e for e in events if e["event"] == "progress" and e["stage"] == "reconstruct"]
    decoded = sum(1 for _ in sd.open_frames(cut))
    assert 3 <= decoded < 20 and steps[-1]["step"] == steps[-1]["total"] == decoded


@pytest.mark.parametrize("fuse", [True, False])
def test_a_clip_of_black_frames_is_one_line_naming_the_input(tmp_path, fuse):
    """Catches ``reconstruct`` of a clip with no frame of depth (every frame black: the scope never on, now that a
    black frame gets no depth) ending with the TSDF's internal "TSDFVolume is empty: integrate at least one frame
    first" (``--fuse``), which names neither the input nor why, or "succeeding" with no cloud (without it); the
    error names the input and the black frames, exit 2, nothing left in the output folder."""
    import os
    import subprocess
    import sys

    from tiny_model import tiny_model

    from SurgicalDepthLib.checkpoints import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", tiny_model())
    frames = tmp_path / "black"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.zeros((40, 56, 3), np.uint8))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", "reconstruct", str(frames), "--output",
                           str(out), "--model", str(checkpoint), "--input-size", "70", "--device", "cpu",
                           *(["--fuse"] if fuse else []), "--progress", "none"], capture_output=True, text=True,
                          timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and str(frames) in error[0] and "none of its 3 frames has valid depth" in error[0], error
    assert "Traceback" not in done.stderr and "TSDFVolume" not in done.stderr
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
