"""Sparse TSDF fusion on realistic synthetic clips vs Open3D's ``t.geometry.VoxelBlockGrid`` (issue #19).

Clips: ``sdt.render_clip(organ, n_frames=20, seed=7)`` of the colon and the stomach at 320×240 and 640×480 with
their exact depth and poses; 1 mm voxels, 4 mm truncation, 8³ blocks for both; frame 0 integrated untimed, then
ms per frame over frames 1–19, best of ``--rounds``. Surface error: median distance from the extracted mesh's
vertices to the exact surface (the back-projected exact depth of every frame, a point set denser than the voxels).

Usage: ``python Testing/benchmarks/bench_fusion.py [--rounds 3] [--threads N]``.
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
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch threads "
          f"{torch.get_num_threads()}; Open3D {o3d.__version__}\n")
    print("| clip | ours ms/frame | VoxelBlockGrid ms/frame | speed-up | surface error ours / VBG (mm) | vertices |")
    print("|---|---:|---:|---:|---|---|")
    for organ in ("colon", "stomach"):
        for h, w in ((240, 320), (480, 640)):
            frames = sdt.render_clip(organ, n_frames=20, seed=7, height=h, width=w)
            intr = frames[0]["intrinsics"]
            exact = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate([
                (backproject(f["depth"], intr) @ f["pose"][:3, :3].T + f["pose"][:3, 3]) for f in frames])))

            def ours():
                vol = TSDFVolume(1.0, 4.0)
                return timed(frames, lambda f: vol.integrate(f["depth"], f["image"], intr, f["pose"])), \
                    _vertices_vtk(vol.extract_mesh())

            def vbg():
                grid = o3d.t.geometry.VoxelBlockGrid(
                    attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3d.core.float32,) * 3,
                    attr_channels=(1, 1, 3), voxel_size=1e-3, block_resolution=8, block_count=200000,
                    device=o3d.core.Device("CPU:0"))
                K = o3d.core.Tensor(intr.K, o3d.core.float64)

                def integrate(f):
                    pose = f["pose"].copy()
                    pose[:3, 3] /= 1000.0
                    E = o3d.core.Tensor(np.linalg.inv(pose), o3d.core.float64)
                    depth = o3d.t.geometry.Image(o3d.core.Tensor((f["depth"] / 1000.0).astype(np.float32)))
                    color = o3d.t.geometry.Image(o3d.core.Tensor(f["image"].astype(np.float32) / 255.0))
                    blocks = grid.compute_unique_block_coordinates(depth, K, E, 1.0, 0.3, trunc_voxel_multiplier=4.0)
                    grid.integrate(blocks, depth, color, K, E, 1.0, 0.3, trunc_voxel_multiplier=4.0)

                ms = timed(frames, integrate)
                return ms, grid.extract_triangle_mesh().vertex.positions.numpy() * 1000.0

            ours_runs = [ours() for _ in range(args.rounds)]
            vbg_runs = [vbg() for _ in range(args.rounds)]
            a, b = min(r[0] for r in ours_runs), min(r[0] for r in vbg_runs)
            err = [float(np.median(np.asarray(exact.compute_point_cloud_distance(
                o3d.geometry.PointCloud(o3d.utility.Vector3dVector(r[-1][1].astype(np.float64)))))))
                for r in (ours_runs, vbg_runs)]
            print(f"| {organ} {w}×{h} | {a:.1f} | {b:.1f} | {b / a:.2f}× | {err[0]:.3f} / {err[1]:.3f} | "
                  f"{len(ours_runs[-1][1])} / {len(vbg_runs[-1][1])} |", flush=True)


def timed(frames, integrate) -> float:
    integrate(frames[0])
    t0 = time.perf_counter()
    for f in frames[1:]:
        integrate(f)
    return (time.perf_counter() - t0) * 1e3 / (len(frames) - 1)


def _vertices_vtk(mesh) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64)


if __name__ == "__main__":
    main()
