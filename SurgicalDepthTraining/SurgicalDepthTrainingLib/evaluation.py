"""Evaluation of a depth model on a dataset: per-image metrics (the protocol of :mod:`.metrics`) -> report dict.

The report (architecture.md, "Evaluation report")::

    {"dataset", "root", "model", "alignment", "pred_kind", "n_images", "depth_range": [min, max],
     "eval_range": [min_depth, max_depth], "input_size", "detail_size", "metrics": {mean of per-image values},
     "per_image": [{"name", "abs_rel", ..., "scale", "shift", "n_valid"}], "notes",
     "skipped": [names of the images not measured], "n_skipped": len(skipped),
     "no_valid_gt": [names of the skipped images without a valid ground-truth pixel],
     "lens_correction": null | {"reference_fov_deg", "n_images"}}

``skipped`` lists the unreadable pairs a ``skip_bad`` dataset left out and the images without a single valid
ground-truth pixel (depth 0 or invalid, outside the evaluation range, or outside the mask everywhere: nothing to
measure; monodepth2-style evaluations leave such frames out), which ``no_valid_gt`` also lists. ``n_images``
counts the measured images only.

``metrics`` is the mean of the per-image values (monodepth2 / SCARED protocol); ``depth_range`` is the range of
the ground truth over the evaluated pixels. ``lens_correction``: the predictions of samples with intrinsics were
corrected to their lens (:mod:`SurgicalDepthLib.lens`; models with a reference lens, e.g. the default model).
``detail_size``: the second, larger read merged for detail (:mod:`SurgicalDepthLib.detail`), or null.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from SurgicalDepthLib.alignment import MM_PER_UNIT
from SurgicalDepthLib.lens import SampleLensCorrection
from SurgicalDepthLib.progress import ProgressReporter, Stage

from .metrics import METRIC_KEYS, NoValidPixelError, align_prediction, compute_errors, count_broken, mean_metrics

logger = logging.getLogger(__name__)

_NOTES = {
    ("median", "disparity"): "relative disparity inverted (1/d; d <= 0 is infinitely far: scored at the depth "
                             "cap), then per-image median scaling pred * median(gt) / median(pred)",
    ("median", "depth"): "per-image median scaling pred * median(gt) / median(pred)",
    ("scale_shift", "disparity"): "per-image least-squares scale and shift of the disparity to 1/gt, then inverted",
    ("scale_shift", "depth"): "per-image least-squares scale and shift of 1/pred to 1/gt, then inverted",
    ("none", "disparity"): "disparity inverted, no scaling",
    ("none", "depth"): "metric prediction used as is",
}


def _measure(name: str, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None, alignment: str,
             pred_kind: str, min_depth: float | None, max_depth: float | None) -> tuple[dict[str, Any], np.ndarray]:
    """One image's ``per_image`` record and its evaluated ground truth (float64 ``[N]``, gt's unit).

    Raises:
        NoValidPixelError: no pixel to evaluate. ValueError: anything else wrong; both name the image.
    """
    try:
        depth, used, scale, shift = align_prediction(pred, gt, valid, alignment=alignment, pred_kind=pred_kind,
                                                     min_depth=min_depth, max_depth=max_depth)
        g = np.asarray(gt, dtype=np.float64)[used]
        errors = compute_errors(g, depth[used])
    except NoValidPixelError as exc:
        raise NoValidPixelError(f"image {name!r}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"image {name!r}: {exc}") from exc
    record = {"name": str(name), **errors, "scale": scale, "shift": shift, "n_valid": int(used.sum()),
              "n_broken": count_broken(pred, used, pred_kind, alignment)}
    return record, g


def evaluate_predictions(samples: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], *,
                         alignment: str = "median", pred_kind: str = "depth", min_depth: float | None = None,
                         max_depth: float | None = None,
                         on_image: Callable[[dict[str, Any]], None] | None = None,
                         on_skip: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report body for given predictions.

    Args:
        samples: ``(name, pred [H, W], gt depth [H, W], valid bool [H, W] or None)`` per image.
        alignment, pred_kind, min_depth, max_depth: see :func:`~.metrics.depth_metrics`.
        on_image: called with each image's ``per_image`` record as soon as it is measured.
        on_skip: called with the name of each image skipped because no pixel of it has valid ground truth
            (invalid, outside ``(min_depth, max_depth)`` or outside ``valid`` everywhere), logged as a warning.
    Returns:
        ``{"alignment", "pred_kind", "n_images", "depth_range", "eval_range", "metrics", "per_image", "notes",
        "no_valid_gt"}``; ``n_images`` counts the measured images, ``no_valid_gt`` names the skipped ones.
    Raises:
        ValueError: no samples, or no sample with a valid pixel (the skipped images quoted); an image that cannot
        be measured for another reason (its name is quoted).
    """
    per_image: list[dict[str, Any]] = []
    no_valid_gt: list[str] = []
    lo, hi = np.inf, -np.inf
    for name, pred, gt, valid in samples:
        try:
            record, g = _measure(name, pred, gt, valid, alignment, pred_kind, min_depth, max_depth)
        except NoValidPixelError as exc:
            logger.warning("evaluate: %s: skipped, not measured", exc)
            no_valid_gt.append(str(name))
            if on_skip is not None:
                on_skip(str(name))
            continue
        lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        per_image.append(record)
        if on_image is not None:
            on_image(record)
    if not per_image:
        if no_valid_gt:
            listed = ", ".join(repr(n) for n in no_valid_gt[:3]) + (" ..." if len(no_valid_gt) > 3 else "")
            raise ValueError(f"evaluate: no image has a valid ground-truth pixel inside ({min_depth}, {max_depth}) "
                             f"and its mask: all {len(no_valid_gt)} skipped ({listed})")
        raise ValueError("evaluate: no images to evaluate")
    return {
        "alignment": alignment,
        "pred_kind": pred_kind,
        "n_images": len(per_image),
        "depth_range": [lo, hi],
        "eval_range": [min_depth, max_depth],
        "metrics": mean_metrics(per_image),
        "per_image": per_image,
        "notes": _NOTES[(alignment, pred_kind)] + "; metrics are means of per-image values",
        "no_valid_gt": no_valid_gt,
    }


def _predictions(model: Any, dataset: Any, input_size: int | None, batch_size: int, lens: SampleLensCorrection,
                 detail_size: int | None, to_mm: float,
                 on_skip: Callable[[str], None]) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
    """``(name, prediction × to_mm corrected to the sample's lens, gt, valid)`` per sample, predicted in batches.

    A dataset opened with ``skip_bad`` answers a bad pair's index with the next readable pair's sample: that
    substitute (its name is not the pair's RGB file) is passed to ``on_skip`` with the bad pair's name and not
    measured, so no image is counted twice."""
    group: list[dict[str, Any]] = []
    pairs = getattr(dataset, "pairs", None)
    detail = {} if detail_size is None else {"detail_size": detail_size}

    def flush() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
        frames = [s["image"] for s in group]
        if len({f.shape for f in frames}) == 1:
            preds = model.infer_batch(frames, input_size, batch_size=len(frames), **detail)
        else:
            preds = [model.infer_image(f, input_size, **detail) for f in frames]
        for sample, pred in zip(group, preds):
            yield str(sample.get("name", "")), lens(sample, pred * to_mm), sample["depth"], sample.get("valid")
        group.clear()

    for i in range(len(dataset)):
        sample = dataset[i]
        if pairs is not None and str(sample.get("name")) != str(pairs[i].rgb):
            on_skip(str(pairs[i].rgb))
            continue
        group.append(sample)
        if len(group) == batch_size:
            yield from flush()
    if group:
        yield from flush()


def output_to_mm(model: Any) -> float:
    """Factor from ``model``'s raw output to the datasets' millimetres: a metric model's ``depth_unit`` (the
    official metric models predict metres) -> mm; 1 for a relative model's disparity (unitless)."""
    return MM_PER_UNIT[model.depth_unit] if model.output_kind == "depth" else 1.0


def _stage_updates(stage: Stage) -> Callable[[dict[str, Any]], None]:
    """``on_image`` callback: one update of ``stage`` per measured image, carrying the running means of AbsRel
    and δ1 (``abs_rel``, ``a1``) so a progress display can show the score so far."""
    sums = {"abs_rel": 0.0, "a1": 0.0}
    count = [0]

    def on_image(record: dict[str, Any]) -> None:
        count[0] += 1
        for key in sums:
            sums[key] += record[key]
        stage.update(1, **{key: total / count[0] for key, total in sums.items()})
    return on_image


def evaluate(model: Any, dataset: Any, *, alignment: str = "median", input_size: int | None = None,
             min_depth: float | None = None, max_depth: float | None = None, batch_size: int = 1,
             progress: ProgressReporter | None = None, lens_correction: bool = True,
             detail_size: int | None = None) -> dict[str, Any]:
    """Predict every image of ``dataset`` with ``model`` and measure it against the ground truth.

    Args:
        model: a :class:`SurgicalDepthLib.DepthModel` (``infer_image``/``infer_batch``, ``output_kind``).
        dataset: a dataset of sample dicts (``image`` uint8 [H, W, 3] RGB, ``depth`` float32 [H, W],
            ``valid`` bool [H, W], ``name``), e.g. from ``open_dataset``.
        alignment: ``median|scale_shift|none`` (see :func:`~.metrics.depth_metrics`).
        input_size: network input lower bound (×14, official resize); default the model's own
            (``config.input_size``: 518 for the official models).
        min_depth, max_depth: evaluation range in the dataset's unit; default the dataset's own ``min_depth`` /
            ``max_depth`` attributes when it has them.
        batch_size: images predicted together (equal sizes only; mixed sizes fall back to one by one).
        progress: where the stage ``"evaluate"`` goes (None = a tqdm bar): one update per image, with the
            running means ``abs_rel`` and ``a1``.
        lens_correction: correct each prediction to its sample's lens (``intrinsics``) when the model has a
            reference lens (:class:`SurgicalDepthLib.lens.SampleLensCorrection`); False: raw predictions.
        detail_size: also read each image at this larger network size and keep its detail
            (:mod:`SurgicalDepthLib.detail`); None: one read.
    Returns:
        the report dict (module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty")
    min_depth = getattr(dataset, "min_depth", None) if min_depth is None else min_depth
    max_depth = getattr(dataset, "max_depth", None) if max_depth is None else max_depth
    reporter = progress if progress is not None else ProgressReporter("bar")
    lens = SampleLensCorrection(model, lens_correction)
    to_mm = output_to_mm(model)
    skipped: list[str] = []
    with reporter.stage("evaluate", len(dataset), unit="image") as stage:
        def on_skip(name: str) -> None:  # an image not measured still is one step of the stage
            skipped.append(name)
            stage.update(1)

        def on_unreadable(name: str) -> None:
            logger.warning("evaluate: %s is unreadable (skip_bad): not measured", name)
            on_skip(name)

        samples = _predictions(model, dataset, input_size, batch_size, lens, detail_size, to_mm, on_unreadable)
        body = evaluate_predictions(samples,
                                    alignment=alignment,
                                    pred_kind=model.output_kind, min_depth=min_depth, max_depth=max_depth,
                                    on_image=_stage_updates(stage), on_skip=on_skip)
    if to_mm != 1.0:
        body["notes"] += f"; the model's output in {model.depth_unit} converted to mm"
    report = {
        "dataset": str(getattr(dataset, "name", type(dataset).__name__)),
        "root": str(getattr(dataset, "root", "")),
        "model": str(getattr(model, "source", type(model).__name__)),
        "input_size": int(input_size or model.config.input_size),
        "detail_size": detail_size,
        **body,
        "skipped": skipped,
        "n_skipped": len(skipped),
        "lens_correction": ({"reference_fov_deg": lens.reference_fov_deg, "n_images": lens.n_corrected}
                            if lens.n_corrected else None),
    }
    m = report["metrics"]
    logger.info("%s: AbsRel %.4f, delta1 %.4f over %d images (%d skipped)", report["dataset"], m["abs_rel"],
                m["a1"], report["n_images"], len(skipped))
    return report


__all__ = ["METRIC_KEYS", "evaluate", "evaluate_predictions", "output_to_mm"]
