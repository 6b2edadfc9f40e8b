"""Deployment backends on the CPU: PyTorch vs ONNX Runtime vs OpenVINO, forward and end to end.

1. Accuracy: fp32 ONNX Runtime / OpenVINO (and OpenVINO bf16) against PyTorch fp32 at 518×518 and 364×518, on
   models whose output has a range (see :func:`bench_accuracy`).
2. Forward: DA-V2-S (random weights) on one ``[1, 3, 518, 518]`` input: our PyTorch fp32, the exported graph in
   ONNX Runtime fp32, OpenVINO f32 and OpenVINO bf16 (OpenVINO's default precision on CPUs with AVX512-BF16/AMX),
   with each one's largest difference to PyTorch fp32 (fraction of its output range).
3. End to end: ``sd.depth_stream`` with each backend on the first frames of a video (decode, preprocessing,
   inference, output resize, one ``np.save`` per frame) vs the plain Hugging Face ``pipeline("depth-estimation")``
   loop of ``bench_video.py`` (fp32), all on the same random-weight Hugging Face folder.

Runs alternate over the variants so machine load hits them alike; medians are reported; model loading, export and
compilation (one warm-up run per variant) are not timed. Usage: ``python Testing/benchmarks/bench_backends.py
[--video PATH] [--frames 8] [--repeats 3] [--rounds 2] [--skip-accuracy] [--skip-video]`` (default video:
``../shared/samples/real/video/laparoscopy_endo.mp4`` beside the checkout, else a synthetic 720p clip).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_video import SAMPLE, build_hf_folder, run_hf, synthetic_clip

import SurgicalDepthLib as sd
from SurgicalDepthLib.backends import load_backend


def _range_diff(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / (ref.max() - ref.min()))


def _ov_default_precision() -> str:
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def variants(folder: Path) -> dict[str, object]:
    """Our models on the HF folder's weights: PyTorch fp32 (the reference), ONNX Runtime fp32, OpenVINO f32/bf16."""
    model = sd.load_model(folder, device="cpu", precision="fp32")
    return {"PyTorch fp32 (ours)": model,
            "ONNX Runtime fp32 (export of ours)": load_backend(model, "onnxruntime", precision="fp32"),
            "OpenVINO f32": load_backend(model, "openvino", precision="fp32"),
            f"OpenVINO bf16 (OpenVINO's default here: {_ov_default_precision()})":
                load_backend(model, "openvino", precision="bf16")}


def bench_forward(models: dict[str, object], repeats: int, rounds: int) -> None:
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))

    def forward(m):
        with torch.inference_mode():
            return np.asarray(m(x), dtype=np.float32)

    outputs = {name: forward(m) for name, m in models.items()}  # warm-up (OpenVINO compiles this shape)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward(m)
                times[name].append(time.perf_counter() - t0)
    names = list(models)
    ref = outputs[names[0]]
    ms = {n: 1000 * statistics.median(times[n]) for n in names}
    print(f"\n### Forward, DA-V2-S random weights, 1×3×518×518 (median of {rounds}×{repeats})\n")
    print("| runtime | ms | vs PyTorch fp32 | max difference (of range) |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {n} | {ms[n]:.0f} | {ms[names[0]] / ms[n]:.2f}× | {_range_diff(outputs[n], ref):.1e} |")


def _perturbed(model):
    """Random weights with a non-degenerate output (Testing/support/tiny_model.py's recipe)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from tiny_model import perturb_weights

    return perturb_weights(model, 0)


def bench_accuracy() -> None:
    """fp32 graphs vs PyTorch fp32 at 518×518 and 364×518 on models whose output has a range: the shipped default
    model (trained) and DA-V2-S with perturbed random weights. (The Hugging Face random init timed below predicts
    ~0.5 everywhere with a range of 3e-4, so float32 rounding alone is 1e-4 of its range there.) The last column is
    PyTorch fp32 against PyTorch float64: the floor that float32 itself sets."""
    import copy

    models = {"default (shipped, trained)": sd.load_model("default", device="cpu", precision="fp32"),
              "DA-V2-S, perturbed random weights": _perturbed(sd.load_model("random:depth-anything-v2-small",
                                                                            device="cpu", precision="fp32"))}
    print("\n### fp32 accuracy: max |backend - PyTorch fp32| / range (batch 1)\n")
    print("| model | input | ONNX Runtime fp32 | OpenVINO f32 | OpenVINO bf16 | PyTorch fp32 vs float64 |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        runners = [load_backend(model, "onnxruntime"), load_backend(model, "openvino", precision="fp32"),
                   load_backend(model, "openvino", precision="bf16")]
        exact = copy.deepcopy(model).double()
        for h, w in [(518, 518), (364, 518)]:
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                ref, ref64 = model(x).numpy(), exact(x.double()).numpy()
            cells = [f"{_range_diff(r(x).numpy(), ref):.1e}" for r in runners]
            print(f"| {name} | {h}×{w} | {' | '.join(cells)} | {_range_diff(ref, ref64):.1e} |")


def run_stream(model, video: Path, out: Path, frames: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for frame in sd.depth_stream(model, video, max_frames=frames):
        np.save(out / f"{frame.index:06d}.npy", frame.prediction)
    return time.perf_counter() - t0


def bench_video(models: dict[str, object], folder: Path, video: Path, frames: int, rounds: int,
                tmp: Path) -> None:
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=str(folder), device="cpu")
    runs = {"HF `pipeline('depth-estimation')` loop, fp32": lambda out: run_hf(pipe, video, out, frames)}
    for name, m in models.items():
        runs[f"`depth_stream`, {name}"] = lambda out, m=m: run_stream(m, video, out, frames)
    run_hf(pipe, video, tmp / "warm", 1)  # warm-up; for our models it compiles the frame's input shape
    for m in models.values():
        run_stream(m, video, tmp / "warm", 1)
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, Path] = {}
    for r in range(rounds):
        for i, (name, run) in enumerate(runs.items()):
            outputs[name] = tmp / f"run{i}_{r}"
            times[name].append(run(outputs[name]))
    names = list(runs)
    first = {n: np.load(sorted(outputs[n].glob("*.npy"))[0]) for n in names}
    ref = first[names[1]]  # our PyTorch fp32
    fps = {n: frames / statistics.median(times[n]) for n in names}
    import cv2

    h, w = cv2.VideoCapture(str(video)).read()[1].shape[:2]
    print(f"\n### End to end, {Path(video).name} {w}×{h}, {frames} frames, input 518 (median of {rounds})\n")
    print("| pipeline | frames/s | vs HF pipeline | max difference to our PyTorch fp32, frame 0 (of range) |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {n} | {fps[n]:.2f} | {fps[n] / fps[names[0]]:.2f}× | {_range_diff(first[n], ref):.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--video", type=Path, default=None, help="video file (default: the real sample clip)")
    ap.add_argument("--frames", type=int, default=8, help="frames per timed end-to-end run")
    ap.add_argument("--repeats", type=int, default=3, help="timed forward passes per variant and round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    ap.add_argument("--skip-video", action="store_true", help="no end-to-end runs")
    ap.add_argument("--skip-accuracy", action="store_true", help="no fp32 accuracy table")
    args = ap.parse_args()

    import onnxruntime
    import openvino

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "hf"
        build_hf_folder("small", folder, 518)
        models = variants(folder)
        print(f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
              f"openvino {openvino.__version__}")
        if not args.skip_accuracy:
            bench_accuracy()
        bench_forward(models, args.repeats, args.rounds)
        if not args.skip_video:
            video = args.video or (SAMPLE if SAMPLE.is_file() else synthetic_clip(tmp / "clip.mp4", args.frames))
            bench_video(models, folder, video, args.frames, args.rounds, tmp)


if __name__ == "__main__":
    main()
