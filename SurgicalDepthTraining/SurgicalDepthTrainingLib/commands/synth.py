"""``surgical-depth synth``: render a procedural surgical clip with exact depth into the ``synthetic`` layout."""
from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from SurgicalDepthLib.atomic_io import empty_folder
from SurgicalDepthLib.cli import progress_of
from SurgicalDepthLib.progress import Stage

logger = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--size must be HxW (e.g. 256x320), got {text!r}")
    return int(parts[0]), int(parts[1])


def register(subparsers) -> None:
    from SurgicalDepthTrainingLib.synthetic.config import ORGANS

    p = subparsers.add_parser("synth", help="render a synthetic endoscopy clip with exact depth (synthetic layout)",
                              description="Render a procedural organ scene along a smooth endoscope path and "
                                          "write RGB, exact z-depth (uint16 PNG, 0.01 mm), intrinsics and poses.")
    p.add_argument("--output", required=True, type=Path,
                   help="output folder (must not exist; written under a temporary name, with a run manifest)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a data set that an earlier synth run wrote in --output (refused when the folder "
                        "holds any file that run did not write); the old one goes only once the new one is complete")
    p.add_argument("--frames", type=int, default=16, help="number of frames (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed of geometry, textures, lighting and path")
    p.add_argument("--organ", choices=ORGANS, default="colon", help="scene type (default colon)")
    p.add_argument("--size", type=_size, default=(256, 320), help="image size HxW (default 256x320)")
    p.add_argument("--fisheye", action="store_true", help="render through an OpenCV fisheye lens")
    p.add_argument("--fov", type=float, default=None,
                   help="horizontal field of view in degrees (default 100, or 140 with --fisheye)")
    p.add_argument("--noise", type=float, default=0.01, help="sensor noise std, fraction of full scale")
    p.add_argument("--blur", type=float, default=0.0, help="motion blur length in pixels")
    p.add_argument("--smoke", type=float, default=0.0, help="surgical smoke density in [0, 1]")
    p.add_argument("--blood", type=float, default=0.0, help="blood tint strength in [0, 1]")
    p.add_argument("--polyps", type=float, default=0.0,
                   help="mean number of sessile polyps per 100 mm of lumen (colon, stomach, small intestine; "
                        "default 0)")
    p.add_argument("--close-up", action="store_true",
                   help="approach one polyp and look at it instead of down the lumen (needs --polyps)")
    p.add_argument("--albedo-patches", type=float, default=0.0, metavar="S",
                   help="strength in [0, 1] of patches of other reflectance on the tissue (blood, bile, mucus, "
                        "bruising): brightness that is not depth (default 0)")
    p.set_defaults(func=run)


#: SceneConfig fields -> the flag that sets them (its errors name the flag)
_FLAG_OF = {"height": "--size (height)", "width": "--size (width)", "fov_deg": "--fov", "seed": "--seed",
            "noise": "--noise", "blur": "--blur", "smoke": "--smoke", "blood": "--blood", "organ": "--organ",
            "polyps": "--polyps", "albedo_patches": "--albedo-patches"}


def scene_config(flags: dict[str, str] | None = None, **fields):
    """``SceneConfig(**fields)``; an error names the flag instead of the field (``--fov must be in ...``).
    ``flags``: field -> flag of the calling command (default: synth's)."""
    from SurgicalDepthTrainingLib.synthetic import SceneConfig

    flags = _FLAG_OF if flags is None else flags
    try:
        return SceneConfig(**fields)
    except ValueError as exc:
        found = re.match(r"SceneConfig\.(\w+) ", str(exc))
        if found is None or found.group(1) not in flags:
            raise
        raise ValueError(flags[found.group(1)] + str(exc)[found.end(1):]) from None


def _check_replaceable(folder: Path) -> None:
    """Refuse ``--overwrite`` unless ``folder`` is a data set an earlier synth run wrote, holding nothing else (no
    file of the user's, no other command's outputs, no running synth's lock)."""
    from SurgicalDepthLib.run_folder import MANIFEST_NAME, OutputConflict, read_manifest

    previous = read_manifest(folder) if folder.is_dir() else None
    if previous is None or previous[0].get("command") != "synth":
        raise OutputConflict(f"--output {folder} is not a data set written by synth (no synth run manifest); "
                             "--overwrite replaces only those: choose a new folder")
    listed = {*previous[1], MANIFEST_NAME}
    foreign = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if not p.is_dir() and p.relative_to(folder).as_posix() not in listed)
    if foreign:
        raise OutputConflict(f"--output {folder} holds {len(foreign)} file(s) that no synth run wrote (first: "
                             f"{foreign[0]}); nothing was replaced: choose a new folder")


def _counted(frames: Iterator, stage: Stage) -> Iterator[dict]:
    """The frames as dicts; ``stage`` advances once the consumer asks for the next frame, i.e. after it has
    written the previous one."""
    for frame in frames:
        yield frame.as_dict()
        stage.update()


def run(args: argparse.Namespace) -> int:
    from SurgicalDepthTrainingLib.synthetic import SceneGenerator, write_synthetic
    from SurgicalDepthTrainingLib.synthetic.config import TUBE_ORGANS

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.seed < 0:  # numpy's own message ("expected non-negative integer") names no option
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.close_up and not args.polyps > 0:
        raise ValueError("--close-up needs polyps to look at: give --polyps N (N > 0)")
    if args.organ not in TUBE_ORGANS and (args.polyps > 0 or args.close_up):  # the field has no lumen to grow them in
        raise ValueError(f"--polyps and --close-up apply to the tube organs {', '.join(TUBE_ORGANS)}; "
                         f"--organ {args.organ} has no lumen")
    # an empty folder (one chosen in a file dialog, which must exist) is taken as a new one
    replacing = args.output.exists() and not empty_folder(args.output)
    if replacing and not args.overwrite:
        raise FileExistsError(f"--output {args.output} already exists; choose a new folder, or pass --overwrite to "
                              "replace a data set an earlier synth run wrote there")
    if replacing:
        _check_replaceable(args.output)
    height, width = args.size
    fov = args.fov if args.fov is not None else (140.0 if args.fisheye else 100.0)
    config = scene_config(organ=args.organ, height=height, width=width, fov_deg=fov, seed=args.seed,
                         fisheye=args.fisheye, noise=args.noise, blur=args.blur, smoke=args.smoke,
                         blood=args.blood, polyps=args.polyps, close_up=args.close_up,
                         albedo_patches=args.albedo_patches)
    generator = SceneGenerator(config)
    with progress_of(args).stage("synth", args.frames, unit="frame", desc=f"synth {args.organ}") as stage:
        # the old data set stays until the new one is complete, and is checked again before it goes
        root = write_synthetic(_counted(generator.iter_frames(args.frames), stage), args.output,
                               {"organ": args.organ, "seed": args.seed, "generator": config.to_dict()},
                               replace=replacing, replaceable=_check_replaceable)
    print(f"wrote {args.frames} {args.organ} frames to {root}")
    args.result = {"frames": args.frames, "output": str(root)}
    return 0
