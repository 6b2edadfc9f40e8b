"""Speed of SurgicalDepthLib geometry vs Open3D, side by side in one run (prints a Markdown table).

1. Point cloud of a 1920×1080 depth frame: ``backproject`` + ``to_polydata`` vs Open3D
   ``PointCloud.create_from_depth_image`` (same depth array, 0 = invalid, unit mm, no truncation).
2. TSDF integration of 640×480 RGB-D frames (voxel 1 mm, truncation 4 mm), 8 frames of a moving camera after one
   untimed warm-up frame: sparse ``TSDFVolume`` vs Open3D ``t.geometry.VoxelBlockGrid`` (8³ blocks) and
   ``ScalableTSDFVolume``; dense ``TSDFVolume(bounds=...)`` vs ``UniformTSDFVolume`` over the same box.
   Open3D gets the same scene in metres (its defaults assume metres). The vertex counts show whether each
   volume produced a surface (VoxelBlockGrid's extraction keeps voxels seen >= 3 times, hence fewer vertices).

Scene: two spheres in front of a plane at 50–120 mm (exact depth). Run:
``python Testing/benchmarks/bench_geometry.py [--threads N] [--device cuda]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from analytic_scene import rigid, trace  # noqa: E402  (the tests' exact scene)

BOUNDS = ((-60.0, -50.0, 45.0), (60.0, 50.0, 125.0))  # mm, dense-volume box around the scene


def scene(intr, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth float32 [H, W] mm (0 where nothing is hit, and at a few pixels) and a colour image."""
    depth, label = trace(intr, pose)
    rgb = np.array([(0, 0, 200), (220, 60, 60), (60, 220, 60)], np.uint8)[label]
    depth[~np.isfinite(depth)] = 0.0
    depth[::89, ::97] = 0.0  # a few invalid pixels
    return depth.astype(np.float32), rgb


def timeit(fn, repeat: int) -> float:
    """Median wall time in ms of ``repeat`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and Open3D's OpenMP (default: library defaults)")
    parser.add_argument("--device", default="cpu", help="torch device for TSDFVolume (cpu or cuda)")
    parser.add_argument("--repeat", type=int, default=15, help="timed repetitions (median reported)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # must precede the OpenMP runtime start
    import torch

    from SurgicalDepthLib.camera import Intrinsics
    from SurgicalDepthLib import backproject, to_polydata
    from SurgicalDepthLib.tsdf import TSDFVolume

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import open3d as o3d
    except ImportError as exc:
        o3d = None
        print(f"Open3D not available ({exc}); only SurgicalDepthLib timings are shown")

    rows = []
    # 1. point cloud, 1920x1080
    big = Intrinsics(1400.0, 1400.0, 959.5, 539.5, 1920, 1080)
    depth, _ = scene(big, np.eye(4))
    n_valid = int((depth > 0).sum())
    ours = timeit(lambda: to_polydata(backproject(depth, big)), args.repeat)
    assert to_polydata(backproject(depth, big)).GetNumberOfPoints() == n_valid
    o3d_ms = None
    if o3d is not None:
        img = o3d.geometry.Image(depth)
        o3d_intr = o3d.camera.PinholeCameraIntrinsic(1920, 1080, big.fx, big.fy, big.cx, big.cy)
        o3d_ms = timeit(lambda: o3d.geometry.PointCloud.create_from_depth_image(
            img, o3d_intr, depth_scale=1.0, depth_trunc=1e9), args.repeat)
        n_o3d = len(o3d.geometry.PointCloud.create_from_depth_image(img, o3d_intr, depth_scale=1.0,
                                                                    depth_trunc=1e9).points)
        assert n_o3d == n_valid, (n_o3d, n_valid)
    rows.append(("point cloud 1920x1080 (backproject + to_polydata) vs create_from_depth_image", ours, o3d_ms,
                 None if o3d is None else n_o3d, n_valid))

    # 2. TSDF, 640x480
    small = Intrinsics(525.0, 525.0, 319.5, 239.5, 640, 480)
    poses = [rigid(0.6 * k, -0.5 * k, (0.8 * k, -0.5 * k, 0.3 * k)) for k in range(9)]
    frames = [scene(small, p) for p in poses]

    def run_ours():
        vol = TSDFVolume(1.0, 4.0, device=args.device)
        return timed_frames(lambda d, c, p: vol.integrate(d, c, small, p)), vol.extract_mesh().GetNumberOfPoints()

    def run_ours_dense():
        vol = TSDFVolume(1.0, 4.0, bounds=BOUNDS, device=args.device)
        return timed_frames(lambda d, c, p: vol.integrate(d, c, small, p)), vol.extract_mesh().GetNumberOfPoints()

    # Open3D works in metres (its legacy volumes only accept depth < 3 m): the same scene in metres
    def run_o3d_scalable():
        vol = o3d.pipelines.integration.ScalableTSDFVolume(
            voxel_length=1e-3, sdf_trunc=4e-3, color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
        ms = timed_frames(lambda d, c, p: vol.integrate(rgbd_legacy(d, c), o3d_intr_small, world_to_camera_m(p)))
        return ms, len(vol.extract_triangle_mesh().vertices)

    def run_o3d_uniform():
        lo, hi = np.asarray(BOUNDS) / 1000.0
        vol = o3d.pipelines.integration.UniformTSDFVolume(
            length=float((hi - lo).max()), resolution=int(round((hi - lo).max() * 1000)), sdf_trunc=4e-3,
            color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8, origin=lo.reshape(3, 1))
        ms = timed_frames(lambda d, c, p: vol.integrate(rgbd_legacy(d, c), o3d_intr_small, world_to_camera_m(p)))
        return ms, len(vol.extract_triangle_mesh().vertices)

    def run_o3d_blocks():
        dev = o3d.core.Device("CPU:0")
        vbg = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3d.core.float32,) * 3,
            attr_channels=(1, 1, 3), voxel_size=1e-3, block_resolution=8, block_count=40000, device=dev)
        K = o3d.core.Tensor(small.K, o3d.core.float64)

        def integrate(d, c, p):
            E = o3d.core.Tensor(world_to_camera_m(p), o3d.core.float64)
            dt = o3d.t.geometry.Image(o3d.core.Tensor((d / 1000.0).astype(np.float32)))
            ct = o3d.t.geometry.Image(o3d.core.Tensor(c.astype(np.float32) / 255.0))
            coords = vbg.compute_unique_block_coordinates(dt, K, E, 1.0, 3.0, trunc_voxel_multiplier=4.0)
            vbg.integrate(coords, dt, ct, K, E, 1.0, 3.0, trunc_voxel_multiplier=4.0)

        ms = timed_frames(integrate)
        return ms, len(vbg.extract_triangle_mesh().vertex.positions)

    def timed_frames(integrate) -> float:
        """ms per frame over frames 1..8 (frame 0 integrated first, untimed)."""
        integrate(frames[0][0], frames[0][1], poses[0])
        sync()
        t0 = time.perf_counter()
        for (d, c), p in zip(frames[1:], poses[1:]):
            integrate(d, c, p)
        sync()
        return (time.perf_counter() - t0) * 1e3 / (len(frames) - 1)

    def sync() -> None:
        if args.device != "cpu":
            torch.cuda.synchronize()

    def world_to_camera_m(pose_mm: np.ndarray) -> np.ndarray:
        """Open3D's extrinsic: world-to-camera, translation in metres."""
        p = pose_mm.copy()
        p[:3, 3] /= 1000.0
        return np.linalg.inv(p)

    def rgbd_legacy(d, c):
        return o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(c)), o3d.geometry.Image(d / np.float32(1000.0)),
            depth_scale=1.0, depth_trunc=3.0, convert_rgb_to_intensity=False)

    def best(fn):
        runs = [fn() for _ in range(max(3, args.repeat // 3))]
        return statistics.median(r[0] for r in runs), runs[-1][1]

    o3d_intr_small = None if o3d is None else o3d.camera.PinholeCameraIntrinsic(
        640, 480, small.fx, small.fy, small.cx, small.cy)
    sparse = best(run_ours)
    dense = best(run_ours_dense)
    rows.append((f"TSDF integrate 640x480 sparse, per frame ({args.device}) vs VoxelBlockGrid", sparse[0],
                 *(best(run_o3d_blocks) if o3d else (None, None)), sparse[1]))
    rows.append((f"TSDF integrate 640x480 dense 120x100x80 mm, per frame ({args.device}) vs UniformTSDFVolume",
                 dense[0], *(best(run_o3d_uniform) if o3d else (None, None)), dense[1]))
    if o3d is not None:
        scal = best(run_o3d_scalable)
        rows.append(("TSDF integrate 640x480 sparse vs ScalableTSDFVolume", sparse[0], *scal, sparse[1]))

    threads = args.threads or f"default (torch {torch.get_num_threads()})"
    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads: {threads}; "
          f"Open3D {o3d.__version__ if o3d else 'n/a'}, torch {torch.__version__}\n")
    print("| task | SurgicalDepthLib (ms) | Open3D (ms) | speed-up | points/vertices (ours / Open3D) |")
    print("|---|---:|---:|---:|---:|")
    for name, a, b, n_o3d, n_ours in rows:
        print(f"| {name} | {a:.1f} | {'n/a' if b is None else f'{b:.1f}'} | "
              f"{'n/a' if b is None else f'{b / a:.2f}x'} | {n_ours} / {n_o3d} |")
    print("\n(an Open3D count of 0 means that Open3D produced no surface, so its time is not comparable)")


if __name__ == "__main__":
    main()
