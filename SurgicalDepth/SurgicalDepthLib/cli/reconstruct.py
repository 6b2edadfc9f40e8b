"""``surgical-depth reconstruct``: depth → per-frame point clouds / meshes, and with ``--fuse`` one TSDF surface.

Relative models predict disparity with no scale: it becomes depth through ``--depth-range NEAR FAR`` (mm; the
nearest and farthest visible tissue, a documented assumption written to ``reconstruction.json``); metric models
are used as they are. Poses come from ``--poses FILE`` (one line per frame: optional index then the 16 numbers of
the 4×4 camera-to-world matrix, row-major; ``#`` comments) or, without it, from frame-to-frame ICP.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from .._atomic import atomic_path
from ..pose_io import format_pose_file, read_pose_file
from . import CliError, input_size_arg

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("reconstruct", help="depth -> point clouds / meshes; --fuse for one surface",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a video, an image folder, a glob or one image")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--model", default="default", help="model source (see load_model)")
    p.add_argument("--intrinsics", default=None,
                   help="'fx,fy,cx,cy' in pixels or a calibration file; default: 90 degree field of view (warned)")
    p.add_argument("--depth-range", type=float, nargs=2, default=(5.0, 120.0), metavar=("NEAR", "FAR"),
                   help="depth in mm of the nearest/farthest tissue, used to scale relative (disparity) models")
    p.add_argument("--fuse", action="store_true", help="integrate all frames into one TSDF surface")
    p.add_argument("--poses", type=Path, default=None, help="camera-to-world poses (text); default: ICP")
    p.add_argument("--voxel-size", type=float, default=1.0, help="TSDF voxel size in mm")
    p.add_argument("--mesh", action="store_true", help="also write a per-frame depth mesh")
    p.add_argument("--every", type=int, default=1, help="write per-frame outputs for every N-th frame only")
    p.add_argument("--stride", type=int, default=1, help="use every N-th source frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--input-size", type=input_size_arg, default=None,
                   help="network input lower bound, multiple of 14 (default: the model's own, 518 for official models)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    p.add_argument("--format", default="ply", choices=["ply", "vtp", "vtk", "stl", "obj"],
                   help="file format of clouds and meshes")
    p.set_defaults(func=run)


def read_poses(path: Path) -> list[np.ndarray]:
    """Poses file → list of float64 4×4 camera-to-world matrices (rigidity is checked when integrating)."""
    poses = [matrix for _, matrix in read_pose_file(path)]
    if not poses:
        raise ValueError(f"poses file {path} holds no pose")
    return poses


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import SurgicalDepthLib as sd
    from ..alignment import prediction_to_mm
    from ..camera import parse_intrinsics
    from ..icp import PoseTracker

    for name in ("every", "stride"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    near, far = args.depth_range
    if not 0 < near < far:
        raise ValueError(f"--depth-range needs 0 < NEAR < FAR, got {near} {far}")
    poses = read_poses(args.poses) if args.poses is not None else None
    stop = None if args.max_frames is None else args.max_frames * args.stride
    reader = sd.open_frames(args.input, stop=stop, stride=args.stride, prefetch=2)
    height, width = reader.size
    intr = parse_intrinsics(args.intrinsics, width, height)
    if poses is not None and reader.frame_count and len(poses) < reader.frame_count:
        raise ValueError(f"{args.poses} has {len(poses)} poses for {reader.frame_count} frames")
    model = sd.load_model(args.model, device=args.device)
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"model: {model.source} ({model.output_kind}) on {model.device}; intrinsics fx={intr.fx:.1f} "
          f"fy={intr.fy:.1f} cx={intr.cx:.1f} cy={intr.cy:.1f} for {width}x{height}")
    volume = sd.TSDFVolume(args.voxel_size, 4 * args.voxel_size, device=model.device.type,
                           max_depth=far if model.output_kind == "disparity" else None) if args.fuse else None
    tracker = PoseTracker(intr) if args.fuse and poses is None else None
    used_poses: list[np.ndarray] = []
    ext = "." + args.format
    count = 0
    with contextlib.closing(reader), tqdm(total=reader.frame_count or None, unit="frame") as bar:
        for index, rgb in zip(reader.indices, reader):
            pred = model.infer_image(rgb, args.input_size)
            depth = prediction_to_mm(pred, model.output_kind, model.depth_unit, (near, far))
            valid = np.isfinite(depth) & (depth > 0)
            if count % args.every == 0:
                cloud = sd.to_polydata(sd.backproject(depth, intr, mask=valid), colors=rgb[valid],
                                       scalars=depth[valid])
                sd.save_points(args.output / f"points_{index:06d}{ext}", cloud)
                if args.mesh:
                    sd.save_mesh(args.output / f"mesh_{index:06d}{ext}", sd.depth_to_mesh(depth, intr, rgb=rgb))
            if volume is not None:
                if poses is not None:
                    if count >= len(poses):
                        raise ValueError(f"{args.poses} has {len(poses)} poses; frame {count} has none")
                    pose = poses[count]
                else:
                    pose = tracker.update(np.where(valid, depth, 0.0))
                volume.integrate(np.where(valid, depth, 0.0), rgb, intr, pose)
                used_poses.append(pose)
            count += 1
            bar.update(1)
    if count == 0:
        raise CliError(f"{args.input}: no frames")
    meta = {"input": str(args.input), "model": model.source, "output_kind": model.output_kind, "frames": count,
            "unit": "mm", "intrinsics": intr.to_dict(),
            "depth_scale": (f"disparity mapped linearly in inverse depth to [{near}, {far}] mm "
                            "(2nd/98th percentiles per frame)" if model.output_kind == "disparity"
                            else f"metric model output ({model.depth_unit}), converted to mm")}
    if volume is not None:
        mesh_path = sd.save_mesh(args.output / f"fused_mesh{ext}", volume.extract_mesh())
        with atomic_path(args.output / "poses.txt") as tmp:
            tmp.write_text(format_pose_file(used_poses))
        meta["poses"] = (f"given ({args.poses})" if poses is not None
                         else "estimated by frame-to-frame point-to-plane ICP (robust, Huber); drift accumulates")
        meta["voxel_size_mm"] = args.voxel_size
        print(f"fused mesh: {mesh_path} ({meta['poses']})")
    with atomic_path(args.output / "reconstruction.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    print(f"{count} frames -> {args.output}")
    return 0
