"""``surgical-depth export``: a model → a deployable graph (ONNX, or OpenVINO IR ``.xml`` + ``.bin``) with dynamic
batch, height and width (multiples of 14) and its metadata inside (config, input size, mean/std, output kind, depth
unit, source, precision), so ``load_model(PATH)`` and other programs need nothing else.

The graph is this project's own (``DepthModel.forward``, official parity kept at every size); its input is the
normalised ``image [N, 3, H, W]`` float32, its output ``depth [N, H, W]`` float32 (disparity for relative models).
fp32 agrees with PyTorch to ~1e-5 of the output range; fp16 (ONNX Runtime) differs from PyTorch fp32 by up to ~2e-3
of it and bf16 (OpenVINO) by up to ~3e-2 (largest difference; the default model: 5e-4 and 1.3e-2).
Needs the optional extras: ``pip install 'surgical-depth[onnx]'`` (ONNX) or ``'surgical-depth[openvino]'``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_model_source_args, model_hints, progress_of

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="model -> ONNX / OpenVINO graph with its metadata",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC",
                   help="model: 'default', a registry name, a .pth/.safetensors file, a Hugging Face folder, or an "
                        "exported .onnx file (to convert it to --format openvino)")
    add_model_source_args(p, flag=None)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (a .onnx file) or openvino (an .xml file and its .bin beside it)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default, exact); fp16 (ONNX: weights and computation; OpenVINO: fp16 weights and "
                        "inference, bf16 or fp32 on CPUs without fp16 arithmetic, logged); bf16 (OpenVINO only: fp16 "
                        "weights, bf16 inference on CPUs with AVX512-BF16/AMX). Tolerances: see the description")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="output file: .onnx for --format onnx, .xml for --format openvino (its folder must exist)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (never the input); without it an existing file is refused")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backends import export_model

    with progress_of(args).stage("export", 1, unit="file") as bar:
        path = export_model(args.source, args.output, format=args.format, precision=args.precision,
                            overwrite=args.overwrite, **model_hints(args))
        bar.update()
    extra = f" and {path.with_suffix('.bin').name}" if args.format == "openvino" else ""
    print(f"wrote {args.format} {args.precision} graph {path}{extra}")
    args.result = {"output": str(path), "format": args.format, "precision": args.precision}
    return 0
