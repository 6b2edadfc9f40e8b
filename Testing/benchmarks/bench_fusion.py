"""TSDF fusion on realistic synthetic clips vs Open3D (issue #19): our sparse volume vs ``t.geometry.VoxelBlockGrid``
and our dense volume vs the legacy ``pipelines.integration.UniformTSDFVolume``.

Clips: ``sdt.render_clip(organ, n_frames=20, seed=7)`` of the colon and the stomach at 320×240 and 640×480 with
their exact depth and poses; 1 mm voxels, 4 mm truncation (8³ blocks for the sparse pair); the dense pair shares one
cube around the clip's exact surface (5 mm margin). Frame 0 integrated untimed, then ms per frame over frames 1–19,
best of ``--rounds`` alternating rounds. Surface error: median distance from the extracted mesh's vertices to the
exact surface (the back-projected exact depth of every frame, a point set denser than the voxels); completeness:
the share of that exact surface within 1 mm of the mesh (a volume that skips blocks of the band leaves holes).
Open3D's ``ScalableTSDFVolume`` is not compared: this build integrates nothing in the canonical case
(``open3d_scalable_check.py``).

Our volume runs ``TSDFVolume(kernel="auto")``: on the CPU the compiled Numba loop where Numba is installed, on CUDA
the fused Triton kernels (``--kernel torch`` for the torch ops); their compilation falls on the untimed frame 0.

Usage: ``python Testing/benchmarks/bench_fusion.py [--rounds 3] [--threads N] [--modes sparse dense]
[--device cpu|cuda] [--kernel auto|torch|triton]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and Open3D's OpenMP")
    ap.add_argument("--modes", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both sparse volumes run (cuda: Open3D's CUDA:0; the dense peer is CPU-only)")
    ap.add_argument("--kernel", default="auto", choices=["auto", "torch", "triton"], help="our TSDFVolume's kernel")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import open3d as o3d
    import torch

    import SurgicalDepthTrainingLib as sdt
    from SurgicalDepthLib import backproject
    from SurgicalDepthLib.tsdf import TSDFVolume

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_fusion: --device cuda, but torch sees no CUDA device")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch threads "
          f"{torch.get_num_threads()}; Open3D {o3d.__version__}; device {args.device}; kernel {args.kernel}"
          f"{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}\n")
    if args.device == "cuda" and "dense" in args.modes:
        print("dense: skipped on cuda (UniformTSDFVolume runs on the CPU only)\n")
        args.modes = [m for m in args.modes if m != "dense"]
    print("| clip | volume | ours ms/frame | Open3D ms/frame | speed-up | surface error ours / Open3D (mm) "
          "| completeness ours / Open3D | vertices |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for organ in ("colon", "stomach"):
        for h, w in ((240, 320), (480, 640)):
            frames = sdt.render_clip(organ, n_frames=20, seed=7, height=h, width=w)
            intr = frames[0]["intrinsics"]
            points = np.concatenate([(backproject(f["depth"], intr) @ f["pose"][:3, :3].T + f["pose"][:3, 3])
                                     for f in frames])
            exact = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
            # dense: one cube (corner, side in mm); Open3D's voxel centres are half a voxel inside its corner, ours
            # at our bounds' corner, so ours starts half a voxel in: the same voxel centres
            cube = (points.min(0) - 5.0, float((points.max(0) - points.min(0)).max() + 10.0))
            for mode in args.modes:
                pair = (lambda: ours(TSDFVolume(1.0, 4.0, device=args.device, kernel=args.kernel), frames),
                        lambda: vbg(o3d, frames, args.device)) if mode == "sparse" \
                    else (lambda: ours(TSDFVolume(1.0, 4.0, bounds=(cube[0] + 0.5, cube[0] + cube[1])), frames),
                          lambda: uniform(o3d, frames, *cube))
                runs = [[], []]  # alternating rounds, so a slower spell of the machine hits both
                for _ in range(args.rounds):
                    for k, make in enumerate(pair):
                        runs[k].append(make())
                a, b = (min(r[0] for r in rs) for rs in runs)
                quality = [surface_quality(exact, rs[-1][1]) for rs in runs]
                print(f"| {organ} {w}×{h} | {mode} | {a:.1f} | {b:.1f} | {b / a:.2f}× | "
                      f"{quality[0][0]:.3f} / {quality[1][0]:.3f} | {quality[0][1]:.1%} / {quality[1][1]:.1%} | "
                      f"{len(runs[0][-1][1])} / {len(runs[1][-1][1])} |", flush=True)


def surface_quality(exact, vertices: np.ndarray) -> tuple[float, float]:
    """(median distance of the mesh vertices to the exact surface in mm, the share of the exact surface (every 7th
    point) within 1 mm of a mesh vertex: how complete the fused surface is)."""
    import open3d as o3d

    mesh = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(vertices.astype(np.float64)))
    sample = exact.uniform_down_sample(7)
    # a.compute_point_cloud_distance(b): one distance per point of a, to its nearest point of b
    return (float(np.median(np.asarray(mesh.compute_point_cloud_distance(exact)))),
            float(np.mean(np.asarray(sample.compute_point_cloud_distance(mesh)) <= 1.0)))


def ours(vol, frames) -> tuple[float, np.ndarray]:
    import torch

    intr = frames[0]["intrinsics"]
    sync = torch.cuda.synchronize if vol.device.type == "cuda" else None
    return timed(frames, lambda f: vol.integrate(f["depth"], f["image"], intr, f["pose"]), sync), \
        _vertices_vtk(vol.extract_mesh())


def _depth_metres(f):
    """Depth in metres and the camera-from-world matrix (Open3D's extrinsic), pose translation in metres."""
    pose = f["pose"].copy()
    pose[:3, 3] /= 1000.0
    return (f["depth"] / 1000.0).astype(np.float32), np.linalg.inv(pose)


def vbg(o3d, frames, device: str = "cpu") -> tuple[float, np.ndarray]:
    where = o3d.core.Device("CUDA:0" if device == "cuda" else "CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3d.core.float32,) * 3, attr_channels=(1, 1, 3),
        voxel_size=1e-3, block_resolution=8, block_count=200000, device=where)
    K = o3d.core.Tensor(frames[0]["intrinsics"].K, o3d.core.float64)

    def integrate(f):
        depth_m, extrinsic = _depth_metres(f)
        E = o3d.core.Tensor(extrinsic, o3d.core.float64)
        depth = o3d.t.geometry.Image(o3d.core.Tensor(depth_m)).to(where)
        color = o3d.t.geometry.Image(o3d.core.Tensor(f["image"].astype(np.float32) / 255.0)).to(where)
        blocks = grid.compute_unique_block_coordinates(depth, K, E, 1.0, 0.3, trunc_voxel_multiplier=4.0)
        grid.integrate(blocks, depth, color, K, E, 1.0, 0.3, trunc_voxel_multiplier=4.0)

    ms = timed(frames, integrate, o3d.core.cuda.synchronize if device == "cuda" else None)
    return ms, grid.extract_triangle_mesh().vertex.positions.cpu().numpy() * 1000.0


def uniform(o3d, frames, corner: np.ndarray, side: float) -> tuple[float, np.ndarray]:
    """Open3D's legacy dense volume over the cube ``corner + [0, side]³`` (mm), 1 mm voxels, 4 mm truncation."""
    integration = o3d.pipelines.integration
    vol = integration.UniformTSDFVolume(length=side / 1000.0, resolution=int(round(side)), sdf_trunc=0.004,
                                        color_type=integration.TSDFVolumeColorType.RGB8, origin=corner / 1000.0)
    intr = frames[0]["intrinsics"]
    camera = o3d.camera.PinholeCameraIntrinsic(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy)

    def integrate(f):
        depth_m, extrinsic = _depth_metres(f)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(f["image"])), o3d.geometry.Image(depth_m), depth_scale=1.0,
            depth_trunc=0.3, convert_rgb_to_intensity=False)
        vol.integrate(rgbd, camera, extrinsic)

    ms = timed(frames, integrate)
    return ms, np.asarray(vol.extract_triangle_mesh().vertices) * 1000.0


def timed(frames, integrate, sync=None) -> float:
    """ms per frame over frames 1.. (frame 0 untimed); ``sync`` waits for a GPU's queued work."""
    sync = sync or (lambda: None)
    integrate(frames[0])
    sync()
    t0 = time.perf_counter()
    for f in frames[1:]:
        integrate(f)
    sync()
    return (time.perf_counter() - t0) * 1e3 / (len(frames) - 1)


def _vertices_vtk(mesh) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)


if __name__ == "__main__":
    main()
