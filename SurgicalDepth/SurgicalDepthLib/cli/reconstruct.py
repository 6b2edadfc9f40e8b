"""``surgical-depth reconstruct``: depth → per-frame point clouds / meshes, and with ``--fuse`` one TSDF surface.

Relative models predict disparity with no scale: it becomes depth through ``--depth-range NEAR FAR`` (mm; the
nearest and farthest visible tissue, a documented assumption written to ``reconstruction.json``); metric models
are used as they are. Poses come from ``--poses FILE`` (one line per source frame: optional index then the 16
numbers of the 4×4 camera-to-world matrix, row-major; ``#`` comments; with ``--stride`` frame i takes the pose of
index i) or, without it, from frame-to-frame ICP (the first fused frame's camera is then the world frame). Per-frame
clouds and meshes are in each frame's camera coordinates (x right, y down, z forward, mm; ``points_frame`` in
``reconstruction.json``), the fused mesh in the world frame of the poses (``fused_mesh_frame``). ``--depth DIR``
reuses the maps that ``predict`` wrote.

The field-of-view mask used (``--fov-mask``) is written as ``fov_mask.png``; when the scope image moves in the frame
(an ``auto`` mask follows it), each new mask as ``fov_mask_<frame index:06d>.png`` (the source frame it applies
from), and ``reconstruction.json`` lists them: ``"fov_masks": [{"from_frame": i, "file": "fov_mask.png"}, ...]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_path
from ..camera import DEFAULT_FOV_DEG, parse_intrinsics
from ..export import save_mesh, save_points
from ..geometry import backproject, point_mask
from ..icp import PoseTracker
from ..polydata import depth_to_mesh, to_polydata
from ..pose_io import format_pose_file, read_poses
from ..run_folder import RunFolder
from ..saved_predictions import SavedPredictions
from ..stream import depth_stream
from ..video import open_frames
from . import (FOV_MASK_HELP, OVERWRITE_HELP, CliError, add_depth_range_arg, add_model_args,
               check_output_not_an_input_folder, input_paths, model_hints, progress_of)
from ._fov_outputs import FovMaskAction, FovMaskFiles, check_fov_mask_fits

logger = logging.getLogger(__name__)

#: the coordinates of the per-frame clouds and meshes (recorded in reconstruction.json as ``points_frame``)
CAMERA_FRAME = "each frame's own camera: OpenCV, x right, y down, z forward (along the optical axis), mm"


def register(subparsers) -> None:
    p = subparsers.add_parser("reconstruct", help="depth -> point clouds / meshes; --fuse for one surface",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a video, an image folder, a glob or one image")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    add_model_args(p)
    p.add_argument("--depth", type=Path, default=None, metavar="DIR",
                   help="use the depth maps that 'surgical-depth predict' wrote for this input (its OUT/<name> "
                        "folder) instead of running a model")
    p.add_argument("--intrinsics", default=None,
                   help="'fx,fy,cx,cy' in pixels or a calibration file (the depth of models with a reference lens, "
                        "such as the default model, is then corrected to this lens); default: a "
                        f"{DEFAULT_FOV_DEG:g} degree horizontal field of view (warned), no lens correction")
    add_depth_range_arg(p)
    p.add_argument("--fuse", action="store_true", help="integrate all frames into one TSDF surface")
    p.add_argument("--poses", type=Path, default=None,
                   help="camera-to-world poses for --fuse (text, one per source frame; an index column is "
                        "honoured); default: ICP")
    p.add_argument("--voxel-size", type=float, default=1.0, help="TSDF voxel size in mm")
    p.add_argument("--max-depth", type=float, default=None, metavar="MM",
                   help="fuse only depth up to this (mm); default: FAR of --depth-range for relative models, no cap "
                        "for metric ones (a few far outliers can then make the volume too large)")
    p.add_argument("--mesh", action="store_true", help="also write a per-frame depth mesh")
    p.add_argument("--every", type=int, default=1, help="write per-frame outputs for every N-th frame only")
    p.add_argument("--stride", type=int, default=1, help="use every N-th source frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--temporal", action="store_true",
                   help="stabilise relative depth over time (one depth scale for the whole clip)")
    p.add_argument("--format", default="ply", choices=["ply", "vtp", "vtk", "stl", "obj"],
                   help="file format of clouds and meshes (stl holds triangles only: with it clouds are .ply)")
    p.add_argument("--fov-mask", action=FovMaskAction, default="auto", metavar="auto|none|FILE", help=FOV_MASK_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("every", "stride", "batch_size", "max_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    near, far = args.depth_range
    if not 0 < near < far:
        raise ValueError(f"--depth-range needs 0 < NEAR < FAR, got {near} {far}")
    if not args.voxel_size > 0:
        raise ValueError(f"--voxel-size must be > 0 mm, got {args.voxel_size}")
    if args.max_depth is not None and not 0 < args.max_depth < float("inf"):
        raise ValueError(f"--max-depth must be a positive number of mm, got {args.max_depth}")


def _depth_source(args: argparse.Namespace) -> Any:
    if args.depth is not None:
        return SavedPredictions(args.depth)
    from ..loading import load_model

    return load_model(args.model, device=args.device, precision=args.precision, backend=args.backend,
                       **model_hints(args))


class _Fusion:
    """TSDF fusion of the frames with given poses (by source frame index) or frame-to-frame ICP poses."""

    def __init__(self, args: argparse.Namespace, intr: Any, poses: dict[int, np.ndarray] | None, source: Any):
        from ..tsdf import TSDFVolume  # lazy: torch

        device = getattr(source, "device", None)
        far = args.depth_range[1] if source.output_kind == "disparity" else None
        self.volume = TSDFVolume(args.voxel_size, 4 * args.voxel_size, device=device.type if device else "cpu",
                                 max_depth=args.max_depth if args.max_depth is not None else far)
        self.intr, self.poses, self.poses_file = intr, poses, args.poses
        self.tracker = PoseTracker(intr) if poses is None else None
        self.used: dict[int, np.ndarray] = {}

    def add(self, frame: Any) -> None:
        depth0 = np.where(frame.valid, frame.depth_mm, 0.0)  # the tracker and the TSDF read 0 as "no depth"
        if self.poses is not None and frame.index not in self.poses:  # a frame past the count the video announced
            raise ValueError(f"{self.poses_file} has no pose for frame {frame.index}")
        pose = self.poses[frame.index] if self.poses is not None else self.tracker.update(depth0)
        self.volume.integrate(depth0, frame.rgb, self.intr, pose)
        self.used[frame.index] = pose


def _open_input(args: argparse.Namespace) -> tuple[Any, Any, dict[int, np.ndarray] | None]:
    """The frame reader, the intrinsics for its size and the given poses (every selected frame must have one)."""
    poses = read_poses(args.poses) if args.poses is not None and args.fuse else None
    if args.poses is not None and not args.fuse:
        logger.warning("--poses %s is used only with --fuse (per-frame outputs are in each frame's camera "
                       "coordinates): ignored", args.poses)
    stop = None if args.max_frames is None else args.max_frames * args.stride
    reader = open_frames(args.input, stop=stop, stride=args.stride, prefetch=2)
    height, width = reader.size
    intr = parse_intrinsics(args.intrinsics, width, height)
    if poses is not None:
        missing = [i for i in reader.indices if i not in poses]
        if missing:
            raise ValueError(f"{args.poses} has no pose for frame(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return reader, intr, poses


def _write_frame(out: RunFolder, args: argparse.Namespace, frame: Any, intr: Any) -> None:
    ext = "." + args.format
    depth = frame.depth_mm
    valid = point_mask(depth, intr, frame.valid)
    cloud = to_polydata(backproject(depth, intr, mask=valid), colors=frame.rgb[valid], scalars=depth[valid])
    save_points(out.path(f"points_{frame.index:06d}{'.ply' if ext == '.stl' else ext}"), cloud)
    if args.mesh:
        save_mesh(out.path(f"mesh_{frame.index:06d}{ext}"), depth_to_mesh(depth, intr, rgb=frame.rgb))


def _summary(args: argparse.Namespace, source: Any, intr: Any, count: int) -> dict:
    near, far = args.depth_range
    if source.output_kind == "disparity":
        how = ("(2nd/98th percentiles of the first frame with depth, then temporally aligned)" if args.temporal
               else "(2nd/98th percentiles per frame)")
        scale = f"disparity mapped linearly in inverse depth to [{near}, {far}] mm {how}"
    else:
        scale = f"metric model output ({source.depth_unit}), converted to mm"
    meta = {"input": str(args.input), "model": source.source, "output_kind": source.output_kind, "frames": count,
            "unit": "mm", "intrinsics": intr.to_dict(), "depth_scale": scale, "points_frame": CAMERA_FRAME}
    if args.depth is not None:
        meta["depth"] = str(args.depth)
    return meta


def _reconstruct_frames(out: RunFolder, args: argparse.Namespace, reader: Any, intr: Any, source: Any,
                        fusion: _Fusion | None, masks: FovMaskFiles) -> int:
    """Stream the frames through the depth source (the one inference loop): per-frame clouds / meshes every
    ``--every`` frames, each frame into the fusion, each new field-of-view mask into ``masks``; returns the number
    of frames. CliError when none has depth (all black or blank: nothing to write or fuse)."""
    count = skipped = 0
    with contextlib.closing(reader), progress_of(args).stage("reconstruct", reader.frame_count) as bar:
        lens = intr if args.intrinsics is not None else None  # a guessed field of view corrects nothing
        for frame in depth_stream(source, reader, depth_range=tuple(args.depth_range), batch_size=args.batch_size,
                                  temporal=args.temporal, input_size=args.input_size, fov_mask=args.fov_mask,
                                  detail_size=args.detail_size, intrinsics=lens):
            masks.add(frame)
            count += 1
            bar.update(1)
            if not frame.valid.any():  # warned once: a black intro is many such frames
                skipped += 1
                logger.log(logging.WARNING if skipped == 1 else logging.DEBUG, "frame %d has no valid depth (a "
                           "black or blank frame?): skipped%s", frame.index,
                           "; later such frames are counted" if skipped == 1 else "")
                continue
            if (count - 1) % args.every == 0:
                _write_frame(out, args, frame, intr)
            if fusion is not None:
                fusion.add(frame)
        bar.retotal(count)  # a video that ended before its announced count
    if count == 0:
        raise CliError(f"{args.input}: no frames")
    if skipped == count:  # else a run of black frames "succeeded" with no output (or the TSDF's "empty" error)
        raise CliError(f"{args.input}: none of its {count} frames has valid depth (black or blank frames?)")
    if skipped > 1:
        logger.warning("%d of %d frames had no valid depth and were skipped", skipped, count)
    return count


def _write_fusion(out: RunFolder, args: argparse.Namespace, fusion: _Fusion, meta: dict) -> None:
    """Write the fused mesh and the poses used (``poses.txt``); ``meta`` records where the poses came from."""
    with progress_of(args).stage("mesh", 1, unit="mesh") as bar:
        mesh_path = save_mesh(out.path(f"fused_mesh.{args.format}"), fusion.volume.extract_mesh())
        bar.update(1)
    with atomic_path(out.path("poses.txt")) as tmp:
        tmp.write_text(format_pose_file(fusion.used.values(), fusion.used.keys()))
    meta["poses"] = (f"given ({args.poses})" if fusion.poses is not None
                     else "estimated by frame-to-frame point-to-plane ICP (robust, Huber); drift accumulates")
    meta["fused_mesh_frame"] = (f"world: the frame of the poses in {args.poses} (camera-to-world)"
                                if fusion.poses is not None else
                                f"world: the camera frame of frame {next(iter(fusion.used), 0)} (its pose is the "
                                f"identity; {CAMERA_FRAME})")
    meta["voxel_size_mm"] = args.voxel_size
    meta["max_depth_mm"] = fusion.volume.max_depth  # None: no cap
    print(f"fused mesh: {mesh_path} ({meta['poses']})")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    check_output_not_an_input_folder(args.output, (args.input, args.depth))
    for flag, path in (("--poses", args.poses), ("--depth", args.depth)):  # before an --overwrite clears anything
        if path is not None and not Path(path).exists():
            raise CliError(f"{flag} {path} does not exist")
    inputs = input_paths([args.input]) + [Path(p) for p in (args.poses, args.depth) if p is not None]
    with RunFolder(args.output, "reconstruct", inputs=inputs, overwrite=args.overwrite) as out:
        reader, intr, poses = _open_input(args)
        out.protect(reader.files or [])
        check_fov_mask_fits(args, reader.size, args.input)
        source = _depth_source(args)
        if isinstance(source, SavedPredictions):  # a frame without its map fails here, before any output
            source.check_frames(reader.indices, reader.size)
        print(f"depth: {source.source} ({source.output_kind}); intrinsics fx={intr.fx:.1f} fy={intr.fy:.1f} "
              f"cx={intr.cx:.1f} cy={intr.cy:.1f} for {intr.width}x{intr.height}")
        fusion = _Fusion(args, intr, poses, source) if args.fuse else None
        masks = FovMaskFiles(out)
        count = _reconstruct_frames(out, args, reader, intr, source, fusion, masks)
        meta = _summary(args, source, intr, count)
        meta["fov_masks"] = masks.records
        if fusion is not None:
            _write_fusion(out, args, fusion, meta)
        with atomic_path(out.path("reconstruction.json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
    args.result = {"frames": count, "output": str(args.output)}
    print(f"{count} frames -> {args.output}")
    return 0
