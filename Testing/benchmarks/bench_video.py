"""End-to-end video depth throughput: ``surgical-depth predict`` vs a plain Hugging Face pipeline loop.

Both sides load the same random-weight Hugging Face folder (``config.json`` + ``model.safetensors`` +
``preprocessor_config.json`` of the official Depth Anything processor: keep aspect ratio, lower bound
``input_size``, multiple of 14, bicubic, ImageNet mean/std) and process the same frames of one video:

- ours: ``predict VIDEO --format npy`` (decode and preprocessing in background threads, batched inference,
  one ``.npy`` per frame written by a writer thread), in each of ``--precisions``;
- HF: ``cv2.VideoCapture`` → PIL image → ``pipeline("depth-estimation")`` → ``predicted_depth`` → ``np.save``,
  in fp32 (the reference row).

Timings include decoding, inference and writing, not model loading. Rounds alternate over all variants so
machine load hits them alike; the median round is reported. Usage:
``python Testing/benchmarks/bench_video.py [--video PATH | --synthetic 1080x1920] [--frames 16] [--size small]
[--input-size 518] [--precisions fp32 bf16] [--device cpu|cuda]``
(default video: ``../shared/samples/real/video/laparoscopy_endo.mp4`` beside the checkout, else a synthetic clip).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "real" / "video" / "laparoscopy_endo.mp4"
DIMS = {"tiny": (192, 3, [24, 48, 96, 192], 64), "small": (384, 6, [48, 96, 192, 384], 64),
        "base": (768, 12, [96, 192, 384, 768], 128)}


def build_hf_folder(size: str, folder: Path, input_size: int) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    hidden, heads, neck, fusion = DIMS[size]
    backbone = Dinov2Config(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=12, image_size=518,
                            patch_size=14, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=neck, fusion_hidden_size=fusion,
                              reassemble_hidden_size=hidden)
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    with torch.no_grad():
        model.head.conv3.bias.fill_(0.5)  # non-zero output after the final ReLU
    model.save_pretrained(folder)
    # the official Depth Anything preprocessor_config.json (depth-anything/Depth-Anything-V2-Small-hf)
    DPTImageProcessor(do_resize=True, size={"height": input_size, "width": input_size}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, resample=3, do_rescale=True, rescale_factor=1 / 255,
                      do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_pad=False).save_pretrained(folder)


def synthetic_clip(path: Path, n: int, h: int = 720, w: int = 1280) -> Path:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8), (w, h))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for i in range(n):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()
    return path


def run_ours(video: Path, folder: Path, out: Path, frames: int, input_size: int, batch: int,
             precision: str = "fp32", device: str = "cpu") -> float:
    from SurgicalDepthLib.cli import predict

    parser = argparse.ArgumentParser()
    predict.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", str(video), "--output", str(out), "--model", str(folder), "--format",
                              "npy", "--device", device, "--precision", precision, "--input-size", str(input_size),
                              *(["--batch-size", str(batch)] if batch else []), "--max-frames", str(frames)])
    # time the per-frame work only: load the model first (predict.run would load it again; use a cached loader)
    from SurgicalDepthLib import loading

    model = loading.load_model(folder, device=device, precision=precision)
    original = loading.load_model
    loading.load_model = lambda *a, **k: model
    try:
        t0 = time.perf_counter()
        predict.run(args)
        return time.perf_counter() - t0
    finally:
        loading.load_model = original


def run_hf(pipe, video: Path, out: Path, frames: int) -> float:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    capture = cv2.VideoCapture(str(video))
    for i in range(frames):
        ok, bgr = capture.read()
        if not ok:
            raise RuntimeError(f"{video}: frame {i} could not be read")
        result = pipe(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        np.save(out / f"{i:06d}.npy", result["predicted_depth"].squeeze().float().cpu().numpy())
    capture.release()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--video", type=Path, default=None, help="video file (default: the real sample clip)")
    ap.add_argument("--frames", type=int, default=16, help="frames per timed run")
    ap.add_argument("--size", default="small", choices=sorted(DIMS), help="model size (random weights)")
    ap.add_argument("--input-size", type=int, default=518, help="network input lower bound (multiple of 14)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size for ours (default: predict's own)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "fp16", "bf16"),
                    help="precisions of ours to time (bf16 on CPU: autocast + chunked bf16 attention)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both pipelines)")
    ap.add_argument("--synthetic", default=None, metavar="HxW",
                    help="time a generated clip of this size (e.g. 1080x1920) instead of a video file")
    args = ap.parse_args()

    from transformers import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.synthetic or not (args.video or SAMPLE.is_file()):
            h, w = map(int, (args.synthetic or "720x1280").lower().split("x"))
            video = synthetic_clip(tmp / "clip.mp4", args.frames, h, w)
        else:
            video = args.video or SAMPLE
        folder = tmp / "hf"
        build_hf_folder(args.size, folder, args.input_size)
        # fp32 only: the pipeline's postprocess fails on bfloat16 outputs ("Got unsupported ScalarType BFloat16",
        # transformers 5.24); bench_model.py compares the bf16 forward passes
        pipe = pipeline("depth-estimation", model=str(folder), device=args.device)
        runs = {"HF `pipeline('depth-estimation')` loop, fp32": lambda out: run_hf(pipe, video, out, args.frames)}
        for p in args.precisions:
            runs[f"`surgical-depth predict` (batch {args.batch_size or 'default'}), {p}"] = (
                lambda out, p=p: run_ours(video, folder, out, args.frames, args.input_size, args.batch_size, p,
                                          args.device))
        for name, run in runs.items():  # warm-up
            run(tmp / "warm")
        times: dict[str, list[float]] = {name: [] for name in runs}
        outputs: dict[str, Path] = {}
        for r in range(args.rounds):
            for i, (name, run) in enumerate(runs.items()):
                outputs[name] = tmp / f"run{i}_{r}"
                times[name].append(run(outputs[name]))
        names = list(runs)
        first = {n: np.load(next(outputs[n].rglob("000000.npy"))) for n in names}
        ref = first[names[0]]
        diffs = {n: float(np.abs(first[n] - ref).max() / max(np.abs(ref).max(), 1e-12)) for n in names}
        h, w = cv2.VideoCapture(str(video)).read()[1].shape[:2]

    fps = {n: args.frames / statistics.median(times[n]) for n in names}
    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    cpu = f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads{gpu}"
    print(f"\nvideo {Path(video).name} {w}x{h}, {args.frames} frames, DA-V2 {args.size} (random weights), input "
          f"{args.input_size}, {args.device} ({cpu}), torch {torch.__version__}\n")
    print(f"| pipeline | frames/s (median of {args.rounds}) | speed-up vs first row | max diff to first row, frame 0 |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {n} | {fps[n]:.2f} | {fps[n] / fps[names[0]]:.2f}x | {diffs[n]:.1e} |")


if __name__ == "__main__":
    main()
