"""Accuracy of a model (default: the shipped one) on held-out synthetic clips of every organ and on the real
SimCol3D / EndoSLAM samples (../shared/samples), with median scaling and scale+shift alignment, next to a
random-weight model of the same architecture. Prints a Markdown table (used for the model card and RESULTS.md).

Usage: ``python Testing/benchmarks/eval_default_model.py [--model SRC] [--samples DIR] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HELD_OUT_SEEDS = (1001, 1002, 1003)  # never used by the training recipe (its clip seeds are 0..239)


def synthetic_pairs(organ: str, frames: int = 8):
    import SurgicalDepthTrainingLib as sdt

    for seed in HELD_OUT_SEEDS:
        for f in sdt.render_clip(organ, n_frames=frames, seed=seed, height=256, width=320):
            yield f


def evaluate_sets(model, samples: Path | None) -> dict[str, dict[str, dict]]:
    import SurgicalDepthTrainingLib as sdt

    sets: dict[str, list] = {}
    for organ in sdt.ORGANS:
        sets[f"synthetic {organ}"] = list(synthetic_pairs(organ))
    if samples is not None and samples.is_dir():
        sets["SimCol3D sample"] = [sdt.open_dataset("simcol3d", samples / "simcol3d")[i] for i in range(10)]
        ds = sdt.open_dataset("endoslam", samples / "endoslam")
        sets["EndoSLAM stomach sample"] = [ds[i] for i in range(len(ds))]
    out: dict[str, dict[str, dict]] = {}
    for name, items in sets.items():
        preds = [model.infer_image(s["image"]) for s in items]
        # depth caps: SimCol3D's encoded range (200 mm), the renderer's (300 mm), and for EndoSLAM's relative
        # depth (1 / 8-bit value, so <= 1) just above 1: predictions beyond the data's range are clamped to it
        cap = 200.0 if name.startswith("SimCol3D") else 300.0 if name.startswith("synthetic") else 1.0 + 1e-6
        out[name] = {}
        for alignment in ("median", "scale_shift"):
            body = sdt.evaluate_predictions(((s["name"], p, s["depth"], s["valid"]) for s, p in zip(items, preds)),
                                            alignment=alignment, pred_kind=model.output_kind, max_depth=cap)
            out[name][alignment] = body["metrics"]
    return out


def main() -> None:
    import SurgicalDepthLib as sd

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default", help="model source")
    ap.add_argument("--samples", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "samples",
                    help="folder with simcol3d/ and endoslam/ samples")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    args = ap.parse_args()
    model = sd.load_model(args.model, device="cpu")
    baseline = sd.load_model("random:surgical-depth-tiny", device="cpu")
    baseline.config = model.config  # same inference size
    results = {"model": evaluate_sets(model, args.samples), "random init": evaluate_sets(baseline, args.samples)}
    print(f"model: {model.source}, input size {model.config.input_size}")
    print("| data | model | AbsRel (median) | δ1 (median) | AbsRel (scale+shift) | δ1 (scale+shift) |")
    print("|---|---|---|---|---|---|")
    for data in results["model"]:
        for who in ("model", "random init"):
            m, s = results[who][data]["median"], results[who][data]["scale_shift"]
            print(f"| {data} | {who} | {m['abs_rel']:.3f} | {m['a1']:.3f} | {s['abs_rel']:.3f} | {s['a1']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
