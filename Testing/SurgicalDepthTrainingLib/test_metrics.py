"""metrics: monodepth2 compute_errors against an independent numpy reference, and the alignment protocol."""
from __future__ import annotations

import numpy as np
import pytest
from SurgicalDepthTrainingLib.metrics import METRIC_KEYS, compute_errors, depth_metrics, mean_metrics


def reference_errors(gt, pred):
    """Independent transcription of monodepth2 evaluate_depth.compute_errors (loop-free numpy, float64)."""
    out = {}
    ratios = np.stack([gt / pred, pred / gt]).max(0)
    for i, name in enumerate(("a1", "a2", "a3")):
        out[name] = (ratios < 1.25 ** (i + 1)).mean()
    out["rmse"] = np.sqrt(((gt - pred) ** 2).mean())
    out["rmse_log"] = np.sqrt(((np.log(gt) - np.log(pred)) ** 2).mean())
    out["abs_rel"] = (np.abs(gt - pred) / gt).mean()
    out["sq_rel"] = (((gt - pred) ** 2) / gt).mean()
    return out


def scene(rng, h=24, w=32):
    gt = rng.uniform(5.0, 120.0, (h, w))
    gt[0, :5] = 0.0  # invalid ground truth
    gt[1, 1] = np.nan
    return gt


def test_compute_errors_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.uniform(0.5, 80, 500)
        pred = gt * rng.lognormal(0, 0.3, 500)
        got, ref = compute_errors(gt, pred), reference_errors(gt, pred)
        assert set(got) == set(METRIC_KEYS)
        for k in METRIC_KEYS:
            assert got[k] == pytest.approx(ref[k], rel=1e-12)


def test_median_scaling_of_proportional_depth_is_exact():
    gt = scene(np.random.default_rng(1))
    m = depth_metrics(gt * 0.037, gt)
    assert m["abs_rel"] == pytest.approx(0, abs=1e-12) and m["a1"] == 1.0 and m["rmse"] < 1e-9
    assert m["scale"] == pytest.approx(1 / 0.037)
    assert m["n_valid"] == gt.size - 6


def test_median_scaling_equals_reference_protocol():
    rng = np.random.default_rng(2)
    gt = scene(rng)
    pred = np.abs(gt * rng.lognormal(0, 0.2, gt.shape)) + 1
    mask = rng.random(gt.shape) > 0.2
    m = depth_metrics(pred, gt, mask, min_depth=10, max_depth=100)
    with np.errstate(invalid="ignore"):
        valid = mask & np.isfinite(gt) & (gt > 10) & (gt < 100)
    g, p = gt[valid], pred[valid]
    p = np.clip(p * np.median(g) / np.median(p), 10, 100)
    ref = reference_errors(g, p)
    for k in METRIC_KEYS:
        assert m[k] == pytest.approx(ref[k], rel=1e-10)


def test_disparity_is_inverted_before_median_scaling():
    gt = scene(np.random.default_rng(3))
    with np.errstate(divide="ignore"):
        disp = 250.0 / gt
    m = depth_metrics(disp, gt, pred_kind="disparity")
    assert m["abs_rel"] == pytest.approx(0, abs=1e-12) and m["a1"] == 1.0
    assert m["n_valid"] == gt.size - 6 and m["n_broken"] == 0
    disp[2, 2] = 0.0  # zero disparity (infinitely far), no cap: scored at the farthest ground truth, not skipped
    m = depth_metrics(disp, gt, pred_kind="disparity")
    assert m["n_broken"] == 1 and m["n_valid"] == gt.size - 6 and m["abs_rel"] > 0


def test_scale_shift_recovers_affine_disparity_exactly():
    gt = scene(np.random.default_rng(4))
    with np.errstate(divide="ignore"):
        inv = 1.0 / gt
    disp = 3.5 * inv - 0.05  # affine in inverse depth, negative beyond 70 mm: still fitted
    assert (disp < 0).any()
    m = depth_metrics(disp, gt, alignment="scale_shift", pred_kind="disparity")
    assert m["abs_rel"] == pytest.approx(0, abs=1e-9) and m["a1"] == 1.0
    assert m["scale"] == pytest.approx(1 / 3.5) and m["shift"] == pytest.approx(0.05 / 3.5)
    # a depth prediction is fitted on its inverse
    m = depth_metrics(1.0 / (2.0 * inv + 0.003), gt, alignment="scale_shift")
    assert m["abs_rel"] == pytest.approx(0, abs=1e-9)


def test_scale_shift_extrapolation_is_bounded_by_the_farthest_ground_truth():
    """Bug caught: a scale-and-shift fit that extrapolates to an inverse depth near or below 0 (beyond infinity)
    left at ~0 (clamped to 1e-8), so one such pixel is scored at a depth of 1,000 (or 1e8) and the image's AbsRel
    reads 24.9 (3.5e6 on the EndoSLAM sample); without a max_depth the fitted depth is capped at the image's
    farthest valid ground truth."""
    disp = np.array([[1.0, 2.0], [3.0, 10.0]])
    gt = np.array([[10.0, 10.0], [10.0, 1.0]])
    s, t = np.polyfit(disp.ravel(), 1.0 / gt.ravel(), 1)  # independent least squares in inverse depth
    assert 0 < s * 1.0 + t < 0.01  # the fit puts the first pixel (truly at 10) a hundred times too far
    depth = 1.0 / np.maximum(s * disp + t, 1.0 / 10.0)
    m = depth_metrics(disp, gt, alignment="scale_shift", pred_kind="disparity")
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(depth - gt) / gt)) and m["abs_rel"] < 1.0
    assert m["scale"] == pytest.approx(s) and m["shift"] == pytest.approx(t)
    capped = depth_metrics(disp, gt, alignment="scale_shift", pred_kind="disparity", max_depth=20.0)
    assert capped["abs_rel"] > m["abs_rel"]  # a given cap still wins (the pixel scores at 20, not 10)


def test_none_alignment_and_clamping():
    gt = np.full((4, 4), 50.0)
    m = depth_metrics(np.full((4, 4), 40.0), gt, alignment="none")
    assert m["abs_rel"] == pytest.approx(0.2) and m["scale"] == 1.0
    m = depth_metrics(np.full((4, 4), 400.0), gt, alignment="none", max_depth=60)
    assert m["abs_rel"] == pytest.approx(10 / 50)  # clamped to 60
    m = depth_metrics(np.full((4, 4), 1 / 40.0), gt, alignment="none", pred_kind="disparity")
    assert m["abs_rel"] == pytest.approx(0.2)


def test_errors():
    gt = np.ones((4, 5))
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        depth_metrics(np.ones((4, 4)), gt)
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(np.ones((4, 5)), gt, min_depth=2)
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(np.ones((4, 5)), gt, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="alignment"):
        depth_metrics(gt, gt, alignment="mean")
    with pytest.raises(ValueError, match="pred_kind"):
        depth_metrics(gt, gt, pred_kind="inverse")
    with pytest.raises(ValueError, match="mask shape"):
        depth_metrics(gt, gt, np.ones((5, 4), bool))


def test_no_valid_pixel_is_its_own_error_kind():
    """Catches 'no valid pixel' raised as a plain ValueError like a shape mismatch, so an evaluation over many
    images could not skip a frame without ground truth without also hiding real errors: it is a
    NoValidPixelError (still a ValueError), a bad mask shape is not."""
    from SurgicalDepthTrainingLib.metrics import NoValidPixelError

    gt = np.ones((4, 5))
    for mask, max_depth in ((None, 0.5), (np.zeros((4, 5), bool), None)):
        with pytest.raises(NoValidPixelError, match="no valid pixel"):
            depth_metrics(gt, gt, mask, max_depth=max_depth)
    with pytest.raises(ValueError, match="mask shape") as info:
        depth_metrics(gt, gt, np.ones((5, 4), bool))
    assert not isinstance(info.value, NoValidPixelError)


def test_mean_metrics():
    per = [dict(zip(METRIC_KEYS, range(7))), dict(zip(METRIC_KEYS, range(2, 9)))]
    assert mean_metrics(per)["abs_rel"] == 1.0 and mean_metrics(per)["a3"] == 7.0
    with pytest.raises(ValueError):
        mean_metrics([])


def test_zero_disparity_counts_as_the_cap_not_as_missing():
    """Catches: a disparity of 0 (a ReLU head's "infinitely far") dropped from the metrics (rewarding it), and,
    without a depth cap (EndoSLAM's relative depth, a folder), one such pixel stopping the whole evaluation instead
    of being scored at the image's farthest ground truth."""
    from SurgicalDepthTrainingLib.metrics import depth_metrics

    gt = np.full((4, 5), 10.0)
    gt[3, 4] = 40.0  # the image's farthest ground truth
    disp = 1.0 / gt  # perfect ...
    disp[0, :2] = 0.0  # ... except two pixels the model calls infinitely far
    capped = depth_metrics(disp, gt, alignment="median", pred_kind="disparity", max_depth=100.0)
    assert capped["n_valid"] == 20
    assert capped["abs_rel"] == pytest.approx(2 * (100.0 - 10.0) / 10.0 / 20)  # scored at the 100 mm cap
    assert capped["n_broken"] == 2
    uncapped = depth_metrics(disp, gt, alignment="median", pred_kind="disparity")  # no cap: never dropped either
    assert uncapped["abs_rel"] == pytest.approx(2 * (40.0 - 10.0) / 10.0 / 20)  # scored at the farthest gt
    assert uncapped["n_broken"] == 2 and uncapped["n_valid"] == 20


def test_broken_predictions_are_never_rewarded():
    """Issue #14 case 7: a prediction that is 47 % inf scored AbsRel 0, delta1 1 (the inf pixels were dropped).
    Catches: non-finite or <= 0 predictions inside the valid mask left out of the metrics."""
    from SurgicalDepthTrainingLib.metrics import depth_metrics

    rng = np.random.default_rng(5)
    gt = rng.uniform(10, 80, (20, 30))
    pred = gt.copy()
    broken = rng.random(gt.shape) < 0.47
    pred[broken] = np.inf
    pred[0, 0], pred[0, 1] = np.nan, -1.0
    m = depth_metrics(pred, gt, alignment="none", max_depth=100.0)
    n = int(broken.sum() + (~broken[0, :2]).sum())
    assert m["n_broken"] == n and m["n_valid"] == gt.size
    expected = np.where(np.isfinite(pred) & (pred > 0), 0.0, np.abs(100.0 - gt) / gt).mean()
    assert m["abs_rel"] == pytest.approx(expected) and m["abs_rel"] > 0.3
    assert m["a1"] < 0.6


def test_an_all_broken_map_is_scored_at_the_cap_not_an_error():
    """Catches: an image whose every prediction is NaN or <= 0 (e.g. an fp16 overflow) aborting the whole
    evaluation with "no valid pixel" instead of being scored at the cap, as the protocol scores one broken pixel."""
    from SurgicalDepthTrainingLib.evaluation import evaluate_predictions
    from SurgicalDepthTrainingLib.metrics import depth_metrics

    gt = np.array([[10.0, 20.0], [40.0, 80.0]])
    for kind, broken in (("depth", np.full_like(gt, np.nan)), ("depth", np.zeros_like(gt)),
                         ("disparity", np.full_like(gt, np.nan))):
        m = depth_metrics(broken, gt, pred_kind=kind, max_depth=100.0)
        assert m["abs_rel"] == pytest.approx(np.mean((100.0 - gt) / gt)) and m["n_broken"] == 4
    report = evaluate_predictions([("good", gt * 2, gt, None), ("nan", np.full_like(gt, np.nan), gt, None)],
                                  pred_kind="depth", min_depth=1e-3, max_depth=100.0)
    assert [r["name"] for r in report["per_image"]] == ["good", "nan"]
    uncapped = depth_metrics(np.full_like(gt, np.nan), gt)  # without a cap: at the farthest ground truth
    assert uncapped["abs_rel"] == pytest.approx(np.mean((80.0 - gt) / gt)) and uncapped["n_broken"] == 4
    with pytest.raises(ValueError, match="no valid pixel"):  # no ground truth at all: still an error
        depth_metrics(gt, np.zeros_like(gt), max_depth=100.0)


def test_broken_counts_what_the_alignment_could_not_use():
    """Catches ``n_broken`` counting every disparity <= 0, also under scale+shift, which fits disparities of any
    sign (the shift moves them) and scores them normally: a report then said pixels were broken that were
    evaluated like the rest. Under median alignment with a cap they are broken (scored at the cap)."""
    gt = np.array([[10.0, 20.0], [30.0, 40.0]])
    disparity = 1.0 / gt - 0.03  # the farthest pixel negative: an affine disparity, exact after scale+shift
    assert disparity[1, 1] < 0
    fitted = depth_metrics(disparity, gt, alignment="scale_shift", pred_kind="disparity")
    assert fitted["n_broken"] == 0 and fitted["abs_rel"] == pytest.approx(0, abs=1e-9)
    capped = depth_metrics(disparity, gt, alignment="median", pred_kind="disparity", max_depth=100.0)
    assert capped["n_broken"] == 1


def test_scale_shift_scores_a_flat_map_instead_of_failing():
    """Catches ``alignment="scale_shift"`` raising "pred is constant over the fitting pixels" (or "needs >= 2
    finite pixels") for one image whose prediction is flat, e.g. a dead network's all-zero disparity, or whose
    ground truth has a single valid pixel: ``surgical-depth evaluate --alignment scale_shift`` then exited 2 with no
    report, where median alignment scores the same image. The least-squares fit of a flat map predicts
    ``mean(1/gt)`` everywhere (the harmonic mean of gt); that prediction is scored."""
    gt = np.linspace(10.0, 50.0, 100).reshape(10, 10)
    flat = 1.0 / np.mean(1.0 / gt)
    expected = reference_errors(gt.ravel(), np.full(gt.size, flat))
    for kind, pred in (("disparity", np.zeros_like(gt)), ("disparity", np.full_like(gt, 0.3)),
                       ("depth", np.full_like(gt, 7.0))):
        m = depth_metrics(pred, gt, alignment="scale_shift", pred_kind=kind, max_depth=100.0)
        assert {k: m[k] for k in METRIC_KEYS} == pytest.approx(expected) and m["scale"] == 0.0
    one = np.zeros(gt.shape, bool)
    one[3, 3] = True
    m = depth_metrics(np.linspace(0.1, 1.0, 100).reshape(10, 10), gt, one, alignment="scale_shift",
                      pred_kind="disparity")
    assert m["n_valid"] == 1 and m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
