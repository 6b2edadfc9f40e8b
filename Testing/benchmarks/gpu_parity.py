"""GPU correctness of the inference path (plain script, run by gpu_check.sh on a CUDA machine).

Checks, on the shipped default model and synthetic frames with exact ground truth:
- CUDA fp32 batches (uint8 upload, preprocessing on the device, pinned memory, next batch queued before the
  previous result is copied back) against the CPU fp32 reference;
- CUDA fp16 / bf16 against it, and AbsRel against the exact depth for each;
- stopping a CUDA stream early ends its threads.
Prints one line per check and exits non-zero when a check fails.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import torch

import SurgicalDepthLib as sd
import SurgicalDepthTrainingLib as sdt


def abs_rel(model, frames, preds) -> float:
    body = sdt.evaluate_predictions(((f["name"], p, f["depth"], f["valid"]) for f, p in zip(frames, preds)),
                                    alignment="median", pred_kind=model.output_kind, max_depth=300.0)
    return body["metrics"]["abs_rel"]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    frames = sdt.render_clip("colon", n_frames=9, seed=1001, height=256, width=320)
    images = [f["image"] for f in frames]
    cpu = sd.load_model("default", device="cpu", precision="fp32")
    ref = cpu.infer_batch(images)
    failures = 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    scale = np.abs(ref).max()
    check("cpu fp32 AbsRel", True, f"{abs_rel(cpu, frames, ref):.4f}")
    for precision, bound in (("fp32", 1e-3), ("fp16", 2e-2), ("bf16", 5e-2)):
        gpu = sd.load_model("default", device="cuda", precision=precision)
        pred = gpu.infer_batch(images, batch_size=4)  # 9 frames: batches of 4, 4, 1
        single = gpu.infer_image(images[0])  # host (OpenCV) preprocessing path
        diff = float(np.abs(pred - ref).max() / scale)
        diff1 = float(np.abs(single - ref[0]).max() / scale)
        check(f"cuda {precision} vs cpu fp32", diff < bound and diff1 < bound,
              f"batched max diff {diff:.2e}, single {diff1:.2e} of range (bound {bound}); "
              f"AbsRel {abs_rel(gpu, frames, pred):.4f}")
    gpu = sd.load_model("default", device="cuda", precision="fp16")
    stream = gpu.iter_batches(iter(images * 10), None, 2)
    next(stream)
    stream.close()
    alive = [t.name for t in threading.enumerate() if t.name == "DepthModel.preprocess"]
    check("early stop ends the preprocessing thread", not alive, f"threads left: {alive}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
