"""Accuracy of a model (default: the shipped one) on held-out synthetic clips of every organ and on the real
SimCol3D / EndoSLAM samples (../shared/samples), with median scaling and scale+shift alignment, next to a
random-weight model of the same architecture; then how the model's near-to-far profile holds when the frames'
tone changes (``tone_robustness``), how much of a polyp's rise it sees (``polyp_relief``) and how much of a change of
reflectance it reads as depth (``albedo_leak``). Prints Markdown
tables (used for the model card and RESULTS.md).

Usage: ``python Testing/benchmarks/eval_default_model.py [--model SRC] [--samples DIR] [--json FILE]
[--detail-size N]`` (``--detail-size``: the model read with a detail read, :mod:`SurgicalDepthLib.detail`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from SurgicalDepthTrainingLib import photometric

HELD_OUT_SEEDS = (1001, 1002, 1003)  # never used by the training recipe (its clip seeds are 0..239)


def synthetic_pairs(organ: str, frames: int = 8, **scene):
    """Held-out frames at 256×320; ``intrinsics="c3vd"``: through C3VD's scope (``datasets.c3vd.C3VD_CAMERA``)."""
    import SurgicalDepthTrainingLib as sdt
    from SurgicalDepthTrainingLib.datasets.c3vd import C3VD_CAMERA

    if scene.get("intrinsics") == "c3vd":
        scene["intrinsics"] = C3VD_CAMERA.scaled(320, 256)

    for seed in HELD_OUT_SEEDS:
        for f in sdt.render_clip(organ, n_frames=frames, seed=seed, height=256, width=320, **scene):
            yield f


def real_sample_sets(samples: Path | None) -> dict[str, list[dict]]:
    """The SimCol3D (its 10 frames) and EndoSLAM samples of ``samples`` (none when the folder is absent)."""
    import SurgicalDepthTrainingLib as sdt

    if samples is None or not samples.is_dir():
        return {}
    endoslam = sdt.open_dataset("endoslam", samples / "endoslam")
    return {"SimCol3D sample": [sdt.open_dataset("simcol3d", samples / "simcol3d")[i] for i in range(10)],
            "EndoSLAM stomach sample": [endoslam[i] for i in range(len(endoslam))]}


def depth_cap(set_name: str) -> float:
    """The depth cap of a set: SimCol3D's encoded range (200 mm), the renderer's (300 mm), and for EndoSLAM's
    relative depth (1 / 8-bit value, so <= 1) just above 1; predictions beyond the data's range are clamped to it."""
    return 200.0 if set_name.startswith("SimCol3D") else 300.0 if set_name.startswith("synthetic") else 1.0 + 1e-6


def evaluate_sets(model, samples: Path | None) -> dict[str, dict[str, dict]]:
    """Every set with median and scale+shift alignment; predictions corrected to each sample's lens where it is
    known (SurgicalDepthLib.lens; what ``surgical-depth evaluate`` does by default)."""
    import SurgicalDepthTrainingLib as sdt
    from SurgicalDepthLib.lens import SampleLensCorrection

    sets: dict[str, list] = {}
    for organ in sdt.ORGANS:
        sets[f"synthetic {organ}"] = list(synthetic_pairs(organ))
    sets.update(real_sample_sets(samples))
    out: dict[str, dict[str, dict]] = {}
    for name, items in sets.items():
        lens = SampleLensCorrection(model)
        preds = [lens(s, model.infer_image(s["image"])) for s in items]
        cap = depth_cap(name)
        out[name] = {}
        for alignment in ("median", "scale_shift"):
            body = sdt.evaluate_predictions(((s["name"], p, s["depth"], s["valid"]) for s, p in zip(items, preds)),
                                            alignment=alignment, pred_kind=model.output_kind, max_depth=cap)
            out[name][alignment] = body["metrics"]
    return out


TONES = {  # display-space tone changes of real video processors (SurgicalDepthTrainingLib.photometric)
    "as rendered": lambda x: x,
    "gamma 0.5 (darks lifted)": lambda x: photometric.gamma_curve(x, 0.5),
    "log k=20 (wide dynamic range)": lambda x: photometric.log_curve(x, 20.0),
    "local adaptation 0.6": lambda x: photometric.local_adaptation(x, 0.6, 0.15),
}


RENDER_LOOKS = {  # the same held-out scenes lit like a real scope, or seen through a wider lens (SceneConfig options)
    "scope light: fill 0.3, beam cos^3": {"fill_light": 0.3, "beam_exponent": 3.0},
    "wide view: pinhole 140°": {"fov_deg": 140.0},
    "wide view: fisheye 120°": {"fov_deg": 120.0, "fisheye": True},
    "wide view: fisheye 150°": {"fov_deg": 150.0, "fisheye": True},
    "wide view: fisheye 165°": {"fov_deg": 165.0, "fisheye": True},
    "wide view: C3VD's scope (fisheye fit, ~128° across)": {"intrinsics": "c3vd"},
    "patches of other reflectance (albedo_patches 1)": {"albedo_patches": 1.0},
}


def _profile(model, frames, tone=lambda x: x, lens=None) -> dict[str, float]:
    """Median over ``frames`` of the fitted exponent ``b`` of ``prediction ∝ depth^b`` (least squares in log-log
    over valid pixels) and the mean median-scaled AbsRel, after applying ``tone`` to each image; ``lens``: a
    ``SampleLensCorrection`` applied to each prediction (None: the raw output)."""
    exponents, abs_rel = [], []
    for f in frames:
        image = np.round(tone(f["image"].astype(np.float32) / 255.0) * 255.0).astype(np.uint8)
        pred = model.infer_image(image)
        pred = pred if lens is None else lens(f, pred)
        keep = f["valid"] & (pred > 1e-6) & np.isfinite(pred)
        depth, disp = f["depth"][keep].astype(np.float64), pred[keep].astype(np.float64)
        exponents.append(np.polyfit(np.log(depth), np.log(disp), 1)[0])
        est = 1.0 / disp
        est *= np.median(depth) / np.median(est)
        abs_rel.append(float(np.mean(np.abs(est - depth) / depth)))
    return {"exponent": float(np.median(exponents)), "abs_rel": float(np.mean(abs_rel))}


def tone_robustness(model, frames_per_organ: int = 6) -> dict[str, dict[str, float]]:
    """Held-out synthetic frames (colon, stomach, small intestine) under each of ``TONES`` and re-rendered with
    each of ``RENDER_LOOKS``: :func:`_profile` (a disparity model should give an exponent of -1 whatever the look). A
    model that reads depth from brightness drifts towards 0 under looks that lift the darks, as the v1 model did on
    real video (b ≈ -0.5)."""
    def frames(**scene):
        return [f for organ in ("colon", "stomach", "small_intestine")
                for f in list(synthetic_pairs(organ, frames=2, **scene))[:frames_per_organ]]

    from SurgicalDepthLib.lens import SampleLensCorrection

    plain = frames()
    out = {name: _profile(model, plain, tone) for name, tone in TONES.items()}
    for name, scene in RENDER_LOOKS.items():
        looks = frames(**scene)
        out[name] = _profile(model, looks)
        if name.startswith("wide view"):
            out[name + ", corrected to the lens"] = _profile(model, looks, lens=SampleLensCorrection(model))
    return out


def _with_and_without(organs: tuple[str, ...], frames: int, **scene):
    """Held-out frames of each organ rendered with ``scene``'s options and again without (same geometry and
    path): ``(with, without)`` pairs."""
    for organ in organs:
        yield from zip(synthetic_pairs(organ, frames=frames, **scene), synthetic_pairs(organ, frames=frames))


def _relative_prediction(model, frame) -> np.ndarray:
    """The model's float64 prediction of ``frame`` divided by its median over the valid pixels (a global scale
    change between two reads does not count)."""
    pred = model.infer_image(frame["image"]).astype(np.float64)
    return pred / np.median(pred[frame["valid"]])


def polyp_relief(model, frames: int = 4, per_100mm: float = 4.0) -> dict[str, float]:
    """How much of a polyp's rise off the wall the model sees: held-out scenes (colon, small intestine, stomach)
    rendered with sessile polyps and again without (same trajectory and wall; ``SceneConfig.polyps``). Over the
    pixels a polyp brings > 1 mm nearer, ``true`` = median of depth without / with polyps, ``seen`` = the same ratio
    of the model's outputs, each frame's prediction first divided by its median over the valid pixels (so a global
    scale change is not counted). ``fraction`` = mean of ``(seen - 1) / (true - 1)``: 1 = the full rise, 0 = the
    polyp is painted on the wall, < 0 = it comes out behind it."""
    fractions, true, seen = [], [], []
    for bumpy, plain in _with_and_without(("colon", "small_intestine", "stomach"), frames, polyps=per_100mm):
        both = bumpy["valid"] & plain["valid"]
        on = both & (plain["depth"] - bumpy["depth"] > 1.0)
        if on.sum() < 50:
            continue
        p_b, p_p = _relative_prediction(model, bumpy), _relative_prediction(model, plain)
        t = float(np.median(plain["depth"][on] / bumpy["depth"][on]))
        ratio = p_b[on] / p_p[on] if model.output_kind == "disparity" else p_p[on] / p_b[on]
        s = float(np.median(ratio))
        true.append(t)
        seen.append(s)
        fractions.append((s - 1.0) / (t - 1.0))
    return {"frames": len(fractions), "true": float(np.mean(true)), "seen": float(np.mean(seen)),
            "fraction": float(np.mean(fractions))}


def albedo_leak(model, frames: int = 4) -> dict[str, float]:
    """How much of a change of reflectance the model reads as depth: held-out scenes (colon, small intestine,
    stomach, surgical field) rendered with patches of other reflectance (``SceneConfig.albedo_patches = 1``) and
    again without (same geometry, same depth). Per frame, over the valid pixels whose linear brightness changed by
    more than 15 % (neither frame saturated), the least-squares slope of ``log(p_with / p_without)`` (each
    prediction divided by its median) on ``log(I_with / I_without)`` (``I``: display luma ** 2.2). 0 = reflectance
    is not read as depth; 0.5 = read as an inverse-square light fall-off (disparity ∝ √brightness). Returns the
    mean slope and the number of frames."""
    slopes = []
    sign = 1.0 if model.output_kind == "disparity" else -1.0
    organs = ("colon", "small_intestine", "stomach", "surgical_field")
    for patched, plain in _with_and_without(organs, frames, albedo_patches=1.0):
        luma = [(f["image"].astype(np.float64) @ photometric.LUMA) for f in (patched, plain)]
        change = 2.2 * (np.log(luma[0] + 0.5) - np.log(luma[1] + 0.5))
        keep = patched["valid"] & (np.abs(change) > np.log(1.15)) & (np.maximum(*luma) < 250)
        if keep.sum() < 200:
            continue
        seen = sign * np.log(_relative_prediction(model, patched) / _relative_prediction(model, plain))
        slopes.append(float(np.polyfit(change[keep], seen[keep], 1)[0]))
    return {"frames": len(slopes), "slope": float(np.mean(slopes))}


KVASIR_MASKS = Path(__file__).resolve().parents[1] / "Data" / "kvasir_seg_masks"


def kvasir_prominence(model, images: Path, masks: Path = KVASIR_MASKS, width: int = 320,
                      prefix: str = "kseg_") -> list[float]:
    """Whether real polyps come out nearer than the wall around them (Kvasir-SEG frames, no depth ground truth):
    per frame (resized to ``width``), the median predicted depth of a ring around the polyp mask (from 2 px off the
    mask out to a quarter of the polyp's equivalent diameter) over the median on the polyp, both inside the scope's
    field of view (``sd.depth_stream``, ``fov_mask="auto"``). > 1: the polyp is nearer. Returns one value per
    frame whose image ``<prefix><mask name>`` exists in ``images`` (a Kvasir-SEG folder: ``prefix=""``)."""
    import cv2

    import SurgicalDepthLib as sd

    ratios = []
    for mask_file in sorted(masks.glob("*.jpg")):
        image_file = images / f"{prefix}{mask_file.name}"
        if not image_file.is_file():
            continue
        rgb = sd.read_image(image_file)
        size = (width, round(width * rgb.shape[0] / rgb.shape[1]))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        polyp = cv2.resize(cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE), size, interpolation=cv2.INTER_AREA) > 127
        (frame,) = sd.depth_stream(model, [rgb])
        reach = max(3, int(0.25 * np.sqrt(polyp.sum())))
        outer = cv2.dilate(polyp.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1,) * 2))
        inner = cv2.dilate(polyp.astype(np.uint8), np.ones((5, 5), np.uint8))
        ring = (outer > 0) & (inner == 0) & frame.valid
        ratios.append(float(np.median(frame.depth_mm[ring]) / np.median(frame.depth_mm[polyp & frame.valid])))
    return ratios


class DetailRead:
    """``model`` read with a detail read (``detail_size``, :mod:`SurgicalDepthLib.detail`) wherever the measures
    here call ``infer_image`` or stream frames (``iter_batches``); everything else is the model's."""

    def __init__(self, model, detail_size: int) -> None:
        self._model, self.detail_size = model, detail_size

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def infer_image(self, rgb: np.ndarray, input_size: int | None = None) -> np.ndarray:
        return self._model.infer_image(rgb, input_size, self.detail_size)

    def iter_batches(self, frames, input_size=None, batch_size=None, prefetch_batches=2, detail_size=None):
        return self._model.iter_batches(frames, input_size, batch_size, prefetch_batches,
                                        detail_size or self.detail_size)


def main() -> None:
    import torch

    import SurgicalDepthLib as sd

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default", help="model source")
    ap.add_argument("--samples", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "samples",
                    help="folder with simcol3d/ and endoslam/ samples")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument("--detail-size", type=int, default=None, help="read the model with a detail read of this size")
    ap.add_argument("--kvasir-root", type=Path, default=None,
                    help="also the Kvasir-SEG ring measure on a folder with images/ and masks/ (the data set's layout)")
    ap.add_argument("--only-kvasir", action="store_true", help="only the Kvasir-SEG measures")
    args = ap.parse_args()
    model = sd.load_model(args.model, device="cpu")
    if args.detail_size:
        model = DetailRead(model, args.detail_size)
    if args.only_kvasir:
        report_kvasir(model, args)
        return
    # the recipe's starting point: seeded random weights, the output bias at the recipe's head_bias (an unseeded
    # draw can put the final ReLU below 0 everywhere: a constant map that no alignment can score)
    torch.manual_seed(0)
    baseline = sd.load_model("random:surgical-depth-tiny", device="cpu")
    with torch.no_grad():
        baseline.depth_head.scratch.output_conv2[2].bias.fill_(1.0)
    baseline.config = model.config  # same inference size
    results = {"model": evaluate_sets(model, args.samples), "random init": evaluate_sets(baseline, args.samples)}
    print(f"model: {model.source}, input size {model.config.input_size}, detail size {args.detail_size}")
    print("| data | model | AbsRel (median) | δ1 (median) | AbsRel (scale+shift) | δ1 (scale+shift) |")
    print("|---|---|---|---|---|---|")
    for data in results["model"]:
        for who in ("model", "random init"):
            m, s = results[who][data]["median"], results[who][data]["scale_shift"]
            print(f"| {data} | {who} | {m['abs_rel']:.3f} | {m['a1']:.3f} | {s['abs_rel']:.3f} | {s['a1']:.3f} |")
    results["tone"] = tone_robustness(model)
    print()
    print("| look of held-out synthetic frames | exponent b (prediction ∝ depth^b; ideal -1) | AbsRel (median) |")
    print("|---|---|---|")
    for name, row in results["tone"].items():
        print(f"| {name} | {row['exponent']:.2f} | {row['abs_rel']:.3f} |")
    results["polyps"] = relief = polyp_relief(model)
    print()
    print(f"polyps (held-out scenes, {relief['frames']} frames): nearer by x{relief['true']:.3f} (true), "
          f"x{relief['seen']:.3f} (model): {relief['fraction']:.2f} of the rise seen")
    results["albedo"] = leak = albedo_leak(model)
    print(f"reflectance read as depth (held-out scenes, {leak['frames']} frames): slope {leak['slope']:.3f} "
          "(0 = none, 0.5 = as an inverse-square fall-off)")
    results.update(report_kvasir(model, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


def report_kvasir(model, args: argparse.Namespace) -> dict[str, list[float]]:
    """The Kvasir-SEG ring measure on the samples' five frames and on ``--kvasir-root``; prints and returns them."""
    results = {}
    if args.samples is not None and (args.samples / "real" / "images").is_dir():
        results["kvasir"] = ratios = kvasir_prominence(model, args.samples / "real" / "images")
        print(f"Kvasir-SEG polyps: wall around / polyp depth {' '.join(f'{r:.2f}' for r in ratios)} "
              f"(mean {np.mean(ratios):.3f}; nearer than the wall in {sum(r > 1 for r in ratios)} of {len(ratios)})")
    if args.kvasir_root is not None:
        results["kvasir_root"] = ratios = kvasir_prominence(model, args.kvasir_root / "images",
                                                            args.kvasir_root / "masks", prefix="")
        print(f"Kvasir-SEG polyps of {args.kvasir_root}: wall around / polyp depth mean {np.mean(ratios):.3f}, "
              f"median {np.median(ratios):.3f}; nearer than the wall in {sum(r > 1 for r in ratios)} of "
              f"{len(ratios)}")
    return results


if __name__ == "__main__":
    main()
