"""Paired comparison of two or more models on more held-out synthetic clips than ``eval_default_model.py`` reads,
with how sure each difference is: is a candidate's 0.002 AbsRel on a 24-frame set a regression or noise?

Every model reads the same frames: per organ ``--clips`` clips × 8 frames at 256×320 (scene seeds 5001...; the
recipe's clips use 0–959 and ``eval_default_model.py`` 1001–1003), and the SimCol3D and EndoSLAM samples of
../shared/samples. Per clip (a real sample: per frame) the mean AbsRel after median scaling, as
``eval_default_model.py`` computes it; then for each model after the first, the paired difference of the means
(model − first; < 0: better) with a 95 % percentile bootstrap interval over clips (Efron & Tibshirani 1993, ch. 13)
and the share of clips it is better on. Frames of one clip (or of the one EndoSLAM sequence) are not independent,
so clips are the resampled unit; the EndoSLAM interval, over frames of one sequence, is too narrow.

Usage: ``python Testing/benchmarks/compare_models.py --model A --model B [--clips 12] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SEEDS_FROM = 5001  # held-out scene seeds of this comparison (see the module docstring)


def paired_interval(first: np.ndarray, other: np.ndarray, draws: int = 10_000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``other - first`` over paired units ``[n]`` and its percentile bootstrap interval at ``level``
    (units resampled with replacement ``draws`` times, seeded): ``(mean, low, high)``."""
    diff = np.asarray(other, np.float64) - np.asarray(first, np.float64)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def held_out_units(clips: int, samples: Path) -> dict[str, list[list[dict]]]:
    """Each set's units: lists of frames (a synthetic clip; one frame of a real sample)."""
    import SurgicalDepthTrainingLib as sdt
    from eval_default_model import real_sample_sets  # (this script's folder is on sys.path when it runs)

    sets = {f"synthetic {organ}": [list(sdt.render_clip(organ, n_frames=8, seed=SEEDS_FROM + k, height=256,
                                                        width=320)) for k in range(clips)]
            for organ in sdt.ORGANS}
    sets.update({name: [[frame] for frame in frames] for name, frames in real_sample_sets(samples).items()})
    return sets


def unit_abs_rel(model, sets: dict[str, list[list[dict]]]) -> dict[str, np.ndarray]:
    """Per set, the AbsRel (median scaling, lens-corrected, clamped to the data's cap as in
    ``eval_default_model.evaluate_sets``) of each unit: ``[units]``."""
    import SurgicalDepthTrainingLib as sdt
    from eval_default_model import depth_cap
    from SurgicalDepthLib.lens import SampleLensCorrection

    lens = SampleLensCorrection(model)
    out = {}
    for name, units in sets.items():
        cap = depth_cap(name)
        scores = []
        for frames in units:
            rows = ((s["name"], lens(s, model.infer_image(s["image"])), s["depth"], s["valid"]) for s in frames)
            body = sdt.evaluate_predictions(rows, alignment="median", pred_kind=model.output_kind, max_depth=cap)
            scores.append(body["metrics"]["abs_rel"])
        out[name] = np.array(scores)
    return out


def main() -> None:
    import SurgicalDepthLib as sd

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", required=True, help="model source (give two or more; the first "
                                                                    "is the reference)")
    ap.add_argument("--clips", type=int, default=12, help="held-out clips per organ (default 12)")
    ap.add_argument("--samples", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "samples")
    ap.add_argument("--json", type=Path, default=None, help="also write per-unit scores as JSON")
    args = ap.parse_args()
    if len(args.model) < 2:
        ap.error("give --model at least twice")
    sets = held_out_units(args.clips, args.samples)
    scores = {src: unit_abs_rel(sd.load_model(src, device="cpu"), sets) for src in args.model}
    first = args.model[0]
    names = [Path(src).stem for src in args.model]
    print(f"AbsRel (median scaling), mean over units; difference to {names[0]} with its 95 % bootstrap interval "
          "and the share of units better than it")
    print("| data (units) | " + " | ".join(names) + " | " + " | ".join(f"{n} − {names[0]}" for n in names[1:])
          + " |")
    print("|---" * (2 * len(names)) + "|")
    for name in sets:
        ref = scores[first][name]
        cells = [f"{scores[src][name].mean():.4f}" for src in args.model]
        for src in args.model[1:]:
            mean, low, high = paired_interval(ref, scores[src][name])
            better = float(np.mean(scores[src][name] < ref))
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}], {better:.0%}")
        print(f"| {name} ({len(ref)}) | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({src: {k: v.tolist() for k, v in s.items()} for src, s in scores.items()},
                                        indent=2))


if __name__ == "__main__":
    main()
