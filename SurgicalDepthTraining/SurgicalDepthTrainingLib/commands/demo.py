"""``surgical-depth demo``: offline end-to-end run on a synthetic colonoscopy clip with exact ground truth."""
from __future__ import annotations

import argparse
from pathlib import Path

from SurgicalDepthLib.cli import DEVICE_HELP, INPUT_SIZE_HELP, OVERWRITE_HELP, input_size_arg, progress_of


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="offline demo: synthetic clip -> depth video, 3D, metrics, summary PNG")
    p.add_argument("--output", type=Path, default=Path("surgical-depth-demo"), help="output folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--model", default="default", help="model source (default: the shipped model)")
    p.add_argument("--frames", type=int, default=24, help="number of frames to render")
    p.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"), help="frame size")
    p.add_argument("--input-size", type=input_size_arg, default=None, help=INPUT_SIZE_HELP)
    p.add_argument("--seed", type=int, default=7, help="scene seed")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=run)


def _check_scene(args: argparse.Namespace) -> None:
    """``--seed`` and ``--size`` before anything is rendered or written; errors name the flag (the size limits are
    :class:`~SurgicalDepthTrainingLib.synthetic.SceneConfig`'s)."""
    from .synth import scene_config

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    scene_config({"height": "--size H", "width": "--size W"}, height=args.size[0], width=args.size[1],
                 seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from SurgicalDepthLib.run_folder import RunFolder

    from ..demo import DemoConfig, run_demo

    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2, got {args.frames}")
    _check_scene(args)
    config = DemoConfig(output=args.output, model=args.model, frames=args.frames, height=args.size[0],
                        width=args.size[1], seed=args.seed, input_size=args.input_size, device=args.device)
    with RunFolder(args.output, "demo", overwrite=args.overwrite) as out, \
            progress_of(args).stage("depth", args.frames, unit="frame") as stage:
        result = run_demo(config, progress=lambda done, total: stage.update(done - stage.step), claim=out.path)
    m = result.metrics
    print(f"model: {result.model}")
    print(f"metrics vs exact ground truth (median scaling, mean of {args.frames} frames): "
          f"AbsRel {m['abs_rel']:.3f}  RMSE {m['rmse']:.2f} mm  delta1 {m['a1']:.3f}")
    for name, path in result.files.items():
        print(f"{name:>12}: {path}")
    print(f"done in {result.seconds:.1f} s")
    args.result = {"output": str(args.output), "abs_rel": m["abs_rel"], "a1": m["a1"]}
    return 0
