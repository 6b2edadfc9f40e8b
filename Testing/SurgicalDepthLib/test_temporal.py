"""Temporal stabilisation on a synthetic flickering sequence with exact ground truth."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthLib.temporal import TemporalAligner, robust_scale_shift, flicker


def scene(n: int = 40, h: int = 48, w: int = 64, seed: int = 0):
    """A smoothly moving analytic surface (depth in mm) and a 'relative model' output for it: per-frame random
    affine scale/shift of the true disparity plus 1 % noise — the flicker of per-frame predictions."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    gts, preds = [], []
    for t in range(n):
        z = 60 + 15 * np.sin(u / 12 + 0.08 * t) * np.cos(v / 10 - 0.05 * t) + 0.3 * u
        disparity = 1.0 / z
        s, b = rng.uniform(0.6, 1.6), rng.uniform(-0.2, 0.2) * disparity.mean()
        gts.append(z)
        preds.append((s * disparity + b + rng.normal(0, 0.01 * disparity.mean(), z.shape)).astype(np.float32))
    return gts, preds


def abs_rel_median(disparity: np.ndarray, gt: np.ndarray) -> float:
    """AbsRel of 1/disparity after per-frame median scaling (monodepth2 protocol), on positive predictions."""
    ok = disparity > 0
    depth = 1.0 / disparity[ok]
    depth = depth * np.median(gt[ok]) / np.median(depth)
    return float(np.mean(np.abs(depth - gt[ok]) / gt[ok]))


def test_stabilisation_reduces_flicker_without_losing_accuracy():
    gts, preds = scene()
    aligner = TemporalAligner()
    aligned = [aligner.update(p) for p in preds]
    raw_flicker = flicker([1 / p for p in preds])
    stable_flicker = flicker([1 / a for a in aligned])
    true_flicker = flicker(gts)
    assert stable_flicker < 0.2 * raw_flicker
    assert stable_flicker < 4 * true_flicker  # what remains is mostly the real motion
    raw_err = np.mean([abs_rel_median(p, g) for p, g in zip(preds, gts)])
    stable_err = np.mean([abs_rel_median(a, g) for a, g in zip(aligned, gts)])
    assert stable_err <= raw_err
    assert len(aligner.scales) == len(aligner.shifts) == len(preds)


def test_robust_scale_shift_exact_and_robust(rng):
    x = rng.uniform(0, 1, (40, 50))
    y = 2.5 * x - 0.3
    assert robust_scale_shift(x, y) == pytest.approx((2.5, -0.3))
    y_out = y.copy()
    y_out[:8] += rng.uniform(5, 10, (8, 50))  # 16 % gross outliers (a tool in front of the tissue)
    s, b = robust_scale_shift(x, y_out, trim=0.2, iterations=4)
    assert (s, b) == pytest.approx((2.5, -0.3), abs=1e-9)
    s_plain, _ = robust_scale_shift(x, y_out, trim=0.0)
    assert abs(s_plain - 2.5) > 0.1  # plain least squares is pulled away
    valid = np.zeros(x.shape, bool)
    valid[8:] = True
    assert robust_scale_shift(x, y_out, valid, trim=0.0) == pytest.approx((2.5, -0.3))
    assert robust_scale_shift(np.ones((3, 3)), y[:3, :3]) == (1.0, 0.0)  # degenerate: identity
    with pytest.raises(ValueError, match="trim"):
        robust_scale_shift(x, y, trim=1.0)


def test_aligner_removes_pure_affine_flicker_exactly(rng):
    base = rng.uniform(0.5, 1.0, (20, 30)).astype(np.float32)
    transforms = np.array([(1.0, 0.0), (2.0, 0.1), (0.5, -0.2), (1.5, 0.05), (1.2, 0.0)])
    aligner = TemporalAligner(momentum=0.5, trim=0.0, follow=0)  # follow=0: frame 0's affine frame for good
    outs = [aligner.update(s * base + b) for s, b in transforms]
    # every frame comes out in frame 0's affine frame (here the identity), whatever its own: a static scene does not
    # flicker at all (an output frame that followed the running mean of the transforms changed by 5-25 % a frame)
    for out in outs:
        np.testing.assert_allclose(out, base, rtol=1e-4, atol=1e-5)
    assert flicker(outs) < 1e-4


def test_a_blank_frame_leaves_the_reference_as_it_was(one_torch_thread):
    """Catches a blank frame (constant, or all NaN) fitted with the identity and blended into the reference: every
    later frame came out at 0.3 of its scale, and through depth_stream(temporal=True) as a flat wall at NEAR (5 mm)
    that reconstruct fused as tissue. The blank frame itself is NaN (no depth)."""
    import SurgicalDepthLib as sd

    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 1.0, (20, 30)).astype(np.float32)
    for blank in (np.full_like(base, 0.5), np.full_like(base, np.nan)):
        aligner = TemporalAligner(follow=0)
        outs = [aligner.update(f) for f in (base, 2 * base + 0.1, blank, 0.5 * base - 0.2, 1.5 * base)]
        assert np.isnan(outs[2]).all() and np.isnan(aligner.scales[2])
        for k in (0, 1, 3, 4):
            np.testing.assert_allclose(outs[k], base, rtol=1e-4, atol=1e-5)

    class Disparity:  # stored predictions of a static scene with a blank frame: the stream's temporal path
        output_kind, depth_unit = "disparity", "relative"

        def predictions(self, items):
            for index, rgb in items:
                yield index, rgb, (np.full_like(base, 0.7) if index == 2 else base)

    frames = [np.full((20, 30, 3), 100, np.uint8)] * 5
    ranges = [np.nanpercentile(f.depth_mm, [2, 98]) if np.isfinite(f.depth_mm).any() else None
              for f in sd.depth_stream(Disparity(), frames, temporal=True, fov_mask=None)]
    assert ranges[2] is None
    for r in ranges[:2] + ranges[3:]:
        np.testing.assert_allclose(r, ranges[0], rtol=1e-3)


def test_aligner_validity_reset_and_errors():
    aligner = TemporalAligner()
    a = np.linspace(1.0, 2.0, 20, dtype=np.float32).reshape(4, 5)
    a[0, 0] = np.nan
    out = aligner.update(a)
    assert np.isnan(out[0, 0]) and out[1, 1] == pytest.approx(a[1, 1])
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*reset\(\)"):
        aligner.update(np.ones((3, 3), np.float32))
    aligner.reset()
    assert aligner.update(np.ones((3, 3), np.float32)).shape == (3, 3)
    with pytest.raises(ValueError, match="momentum"):
        TemporalAligner(momentum=1.0)


@pytest.mark.parametrize("kwargs, name", [({"trim": 1.0}, "trim"), ({"trim": -0.1}, "trim"),
                                          ({"iterations": 0}, "iterations")])
def test_bad_aligner_options_fail_at_construction(kwargs, name):
    """Catches ``trim`` and ``iterations`` checked only inside the first fit: ``TemporalAligner(trim=1.0)`` was
    built, took the first frame, and failed at the second (a stream's frame 1, after frame 0 was yielded)."""
    with pytest.raises(ValueError, match=f"^{name} must be"):
        TemporalAligner(**kwargs)


def test_flicker_definition():
    d = np.full((3, 4, 4), 10.0)
    assert flicker(d) == 0.0
    d[1] = 12.0  # 10 -> 12 -> 10: |2| / 11 twice
    assert flicker(d) == pytest.approx(2 / 11)
    assert flicker(5 * d) == pytest.approx(2 / 11)  # scale-free
    valid = np.ones(d.shape, bool)
    d[1, 0, 0] = 1000.0
    valid[1, 0, 0] = False
    assert flicker(d, valid) == pytest.approx(2 / 11)
    with pytest.raises(ValueError, match="at least 2"):
        flicker(d[:1])


def _static_surface(h: int = 48, w: int = 64, phase: float = 0.0) -> np.ndarray:
    v, u = np.mgrid[0:h, 0:w] / 8.0
    return 1 + 0.5 * np.sin(1.3 * u + phase) * np.cos(0.7 * v + 2 * phase)


def _contrast(aligned: np.ndarray, truth: np.ndarray) -> float:
    """Slope of the aligned disparity against the true one (the structure's contrast in the output)."""
    return float(np.polyfit(truth.ravel(), aligned.ravel(), 1)[0])


def test_no_contrast_drift_over_1000_frames_of_a_static_scene():
    """Catches the regression dilution of the scale fit compounding through the reference: a static scene with
    per-frame affine flicker and 2 % noise lost 98 % of its contrast in 1000 frames (slope 1.45 -> 0.02) and
    came out flat, so depth_stream(temporal=True) gave a flat wall."""
    rng = np.random.default_rng(0)
    truth = _static_surface()
    aligner = TemporalAligner(follow=0)  # the reference's contrast, seen without the output frame's following
    slopes = []
    for t in range(1000):
        s, b = rng.uniform(0.5, 2.0), rng.uniform(-0.5, 0.5)
        out = aligner.update((s * (truth + rng.normal(0, 0.02, truth.shape)) + b).astype(np.float32))
        if t in (0, 999):
            slopes.append(_contrast(out, truth))
    assert slopes[1] > 0.85 * slopes[0], slopes


def test_scene_cut_restarts_the_reference_without_losing_contrast():
    """Catches a scene cut fitted to the old scene's reference: the fit to an unrelated map (scale ~0 or < 0)
    left the new scene at a third of the contrast for good (slope 1.45 -> 0.31 for the rest of the clip)."""
    rng = np.random.default_rng(1)
    first, second = _static_surface(), _static_surface(phase=1.0)
    aligner = TemporalAligner()
    outs = []
    for t in range(60):
        truth = first if t < 20 else second
        s, b = rng.uniform(0.5, 2.0), rng.uniform(-0.5, 0.5)
        outs.append(aligner.update((s * (truth + rng.normal(0, 0.01, truth.shape)) + b).astype(np.float32)))
    before = _contrast(outs[19], first)
    for t in (20, 21, 40, 59):
        assert _contrast(outs[t], second) > 0.7 * before, t
    assert flicker([1 / o for o in outs[21:]]) < 0.02  # steady again after the cut
    assert aligner.cuts == [20]


def test_output_follows_a_lasting_change_of_scale():
    """Catches the output held in the first frame's affine frame for good: an input whose scale really changes (a
    metric model's depth as the camera approaches, or exact disparity) came out at the first frame's level (a
    60 -> 30 mm approach stayed at 60 mm), while per-frame flicker around the change is still removed."""
    rng = np.random.default_rng(4)
    truth = _static_surface()
    aligner = TemporalAligner(follow=30)  # as depth_stream's for a metric model
    levels, outs = [], []
    for t in range(200):
        level = 1.0 + min(t, 60) / 60.0  # the true scale doubles over 60 frames, then holds
        jitter = rng.uniform(0.9, 1.1)
        outs.append(aligner.update((jitter * level * truth).astype(np.float32)))
        levels.append(level)
    final = float(np.median(outs[-1] / truth))
    assert final == pytest.approx(2.0, rel=0.05)  # frozen: 1.0
    assert flicker(outs[150:]) < 0.01 < flicker([lv * truth * rng.uniform(0.9, 1.1) for lv in levels[150:]])


def test_metric_depth_stream_follows_the_camera_approach():
    """Catches ``depth_stream(temporal=True)`` with a metric model fitting every frame back to the first frame's
    inverse depth: a tilted wall approached from 60 to 30 mm came out at 60 mm in every frame (depth_mm frozen)."""
    import SurgicalDepthLib as sd

    v = np.mgrid[0:40, 0:50][0]
    walls = [(z0 / (1 - 0.01 * (v - 20))).astype(np.float32) for z0 in np.r_[np.linspace(60, 30, 60), [30.0] * 120]]

    class Metric:
        output_kind, depth_unit = "depth", "mm"

        def predictions(self, items):
            for index, rgb in items:
                yield index, rgb, walls[index]

    rgbs = [np.full((40, 50, 3), 100, np.uint8)] * len(walls)
    out = list(sd.depth_stream(Metric(), rgbs, temporal=True, fov_mask=None))
    np.testing.assert_allclose(out[0].depth_mm, walls[0], rtol=1e-5)
    np.testing.assert_allclose(out[-1].depth_mm, walls[-1], rtol=0.02)
    medians = [float(np.median(f.depth_mm)) for f in out[:60]]
    assert all(b < a for a, b in zip(medians, medians[1:]))  # nearer every frame, not held


def test_a_frame_with_few_valid_pixels_changes_nothing():
    """Catches a frame with 3 valid pixels (a tool over the scope, smoke) taken as a new scene: the reference
    restarted from those 3 pixels (``cuts == [2, 3]``), and as the first frame they fixed the clip's level and
    spread. Such a frame is blank now: NaN, and the frames around it come out as without it."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 1.0, (20, 30)).astype(np.float32)
    tiny = np.full_like(base, np.nan)
    tiny[0, :3] = [0.9, 0.6, 0.7]
    frames = (base, 2 * base + 0.1, 0.5 * base - 0.2, 1.5 * base)
    clean = TemporalAligner()
    expected = [clean.update(f) for f in frames]
    for position in (0, 2):
        aligner = TemporalAligner()
        seq = list(frames[:position]) + [tiny] + list(frames[position:])
        outs = [aligner.update(f) for f in seq]
        assert np.isnan(outs[position]).all() and aligner.cuts == []
        for got, want in zip(outs[:position] + outs[position + 1:], expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_state_does_not_grow_with_clip_length(monkeypatch):
    """Catches ``scales``/``shifts``/``cuts`` appended for every frame for good: a live stream's aligner grew
    without bound (about 7 MB an hour at 30 fps). The latest ``HISTORY`` frames are kept."""
    from SurgicalDepthLib import temporal

    monkeypatch.setattr(temporal, "HISTORY", 10)
    first = _static_surface(12, 16)
    second = 3.0 - first  # anti-correlated: a new scene
    aligner = TemporalAligner()
    for t in range(40):
        aligner.update((first if t % 2 else second).astype(np.float32))  # every frame after the first is a cut
    assert aligner.frames == 40
    assert len(aligner.scales) == len(aligner.shifts) == 10 and aligner.cuts == list(range(30, 40))
