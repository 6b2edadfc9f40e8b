"""Forward throughput of SurgicalDepthLib's DepthModel vs Hugging Face transformers on the same weights.

Both models load the same random-weight HF folder; runs alternate (A B A B ...) on the same input so machine load
affects both alike. Prints a Markdown table. Usage: ``python Testing/benchmarks/bench_model.py [--size small]
[--hw 518 518] [--repeats 10] [--device cpu|cuda] [--precision fp32|fp16|bf16]``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch


def build_hf_folder(size: str, folder: str) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    dims = {"small": (384, 6, [48, 96, 192, 384], 64), "base": (768, 12, [96, 192, 384, 768], 128),
            "large": (1024, 16, [256, 512, 1024, 1024], 256)}[size]
    layers = 24 if size == "large" else 12
    out = [5, 12, 18, 24] if size == "large" else [3, 6, 9, 12]
    backbone = Dinov2Config(hidden_size=dims[0], num_attention_heads=dims[1], num_hidden_layers=layers,
                            image_size=518, patch_size=14, out_indices=out, reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=dims[2], fusion_hidden_size=dims[3],
                              reassemble_hidden_size=dims[0])
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)


def timed(fn, x, repeats: int, sync) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="small", choices=["small", "base", "large"], help="model size")
    ap.add_argument("--hw", type=int, nargs=2, default=(518, 518), help="input height width (multiples of 14)")
    ap.add_argument("--batch", type=int, default=1, help="batch size")
    ap.add_argument("--repeats", type=int, default=10, help="timed forward passes per model and round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="weights/activations")
    ap.add_argument("--contiguous", action="store_true",
                    help="convert ours back to contiguous weights (load_model uses channels-last)")
    ap.add_argument("--compile", action="store_true", help="torch.compile ours")
    args = ap.parse_args()

    from transformers import DepthAnythingForDepthEstimation

    import SurgicalDepthLib as sd

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as folder:
        build_hf_folder(args.size, folder)
        hf = DepthAnythingForDepthEstimation.from_pretrained(folder).eval().to(dev, dtype)
        ours = sd.load_model(folder, device=args.device, precision="fp32").to(dtype)
    if args.contiguous:
        ours = ours.to(memory_format=torch.contiguous_format)
    fwd = torch.compile(ours) if args.compile else ours
    x = torch.randn(args.batch, 3, *args.hw, device=dev, dtype=dtype)

    def run_hf(inp):
        with torch.inference_mode():
            return hf(pixel_values=inp).predicted_depth

    def run_ours(inp):
        with torch.inference_mode():
            return fwd(inp)

    for fn in (run_hf, run_ours):  # warm-up
        timed(fn, x, 2, sync)
    t_hf, t_ours = [], []
    for _ in range(args.rounds):
        t_hf += timed(run_hf, x, args.repeats, sync)
        t_ours += timed(run_ours, x, args.repeats, sync)
    with torch.inference_mode():
        diff = float((run_hf(x).float() - run_ours(x).float()).abs().max())
    m_hf, m_ours = statistics.median(t_hf), statistics.median(t_ours)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {dev}")
    print("| model | input | precision | HF ms | ours ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    print(f"| DA-V2-{args.size} | {args.batch}x3x{args.hw[0]}x{args.hw[1]} | {args.precision} | "
          f"{1000 * m_hf:.1f} | {1000 * m_ours:.1f} | {m_hf / m_ours:.2f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
