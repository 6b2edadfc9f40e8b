"""The detail read (``detail_size``): the merge as a pure function on exact signals, its wiring through the model,
``depth_stream`` and the CLI, and what it is for — on scenes with exact depth, the default model read with it sees
more of a polyp's rise off the wall."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import SurgicalDepthLib as sd
from SurgicalDepthLib.detail import low_pass, merge_detail

H, W = 240, 320
SIGMA = 0.03 * W  # the default split: 9.6 px


def _layout_and_detail() -> tuple[np.ndarray, np.ndarray]:
    """A smooth layout (log-linear ramp: exactly kept by a Gaussian away from the borders) and a detail pattern
    whose log averages to 0 over a few pixels (period 6 px, far below the split)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    layout = np.exp(0.004 * x + 0.002 * y)
    detail = np.exp(0.2 * np.sin(2 * np.pi * x / 6.0) * np.sin(2 * np.pi * y / 6.0))
    return layout.astype(np.float32), detail.astype(np.float32)


def test_merge_keeps_the_layout_and_scale_of_the_first_read_and_the_detail_of_the_second():
    """Bugs caught: roles swapped (the layout of the larger read, here bent to layout^0.7), the detail dropped
    (the first read returned as it is), the second read's scale leaking into the result, and a merge in linear
    instead of log space (the detail's amplitude then scales with the layout)."""
    layout, detail = _layout_and_detail()
    coarse = 3.0 * layout
    fine = 0.02 * layout ** 0.7 * detail  # another scale, a bent layout, but the detail
    out = merge_detail(coarse, fine)
    inner = (slice(40, H - 40), slice(40, W - 40))  # a Gaussian keeps a linear function away from the borders
    expected = coarse * detail
    assert out.dtype == np.float32 and out.shape == (H, W)
    assert np.abs(out[inner] / expected[inner] - 1).max() < 0.01
    assert np.abs(coarse[inner] / expected[inner] - 1).max() > 0.15  # without the detail it would fail


def test_merge_edge_cases():
    """Bugs caught: a disparity of 0 (infinitely far) or NaN turned into a value (log of 0 spreading into its
    neighbours), frames of a batch merged out of order, shapes not checked, and a downscaled low-pass (for large
    frames) that is not the Gaussian it stands for (width and height swapped, or no scaling back)."""
    layout, detail = _layout_and_detail()
    coarse, fine = layout.copy(), layout * detail
    coarse[100:110, 100:110] = 0.0
    fine[10, 20] = np.nan
    out = merge_detail(coarse, fine)
    assert np.all(out[100:110, 100:110] == 0) and out[10, 20] == coarse[10, 20]
    assert np.isfinite(out).all() and np.abs(out[60:90, 60:90] / (layout * detail)[60:90, 60:90] - 1).max() < 0.02
    batch = merge_detail(np.stack([coarse, 2 * layout]), np.stack([fine, layout * detail]))
    np.testing.assert_array_equal(batch[0], out)
    np.testing.assert_array_equal(batch[1], merge_detail(2 * layout, layout * detail))
    with pytest.raises(ValueError, match="same shape"):
        merge_detail(coarse, fine[:, :-1])
    field = cv2.GaussianBlur(np.random.default_rng(0).normal(size=(300, 500)).astype(np.float32), (0, 0), 6)
    exact = cv2.GaussianBlur(field, (0, 0), 40.0, borderType=cv2.BORDER_REFLECT)
    approx = low_pass(field, 40.0)
    assert approx.shape == field.shape
    assert np.abs(approx - exact)[60:-60, 60:-60].max() < 0.1 * np.abs(exact).max()


@pytest.fixture(scope="module")
def model():
    return sd.load_model("default", device="cpu")


@pytest.fixture(scope="module")
def frames():
    import SurgicalDepthTrainingLib as sdt

    return [f["image"] for f in sdt.render_clip("colon", n_frames=3, seed=1002, height=H, width=W)]


def test_model_and_stream_merge_the_two_reads(model, frames):
    """Bugs caught: ``detail_size`` not reaching the second read (both reads at one size: the output equals the
    plain read), batches merged with another frame's detail read (order), ``depth_stream`` dropping the option,
    sizes that cannot give detail (not larger than the first read) or stored predictions accepted silently, and
    frames of another size in a later batch accepted (each batch alone is checked)."""
    size = model.config.input_size
    single = [model.infer_image(f) for f in frames]
    detailed = model.infer_image(frames[1], detail_size=252)
    np.testing.assert_allclose(detailed, merge_detail(single[1], model.infer_image(frames[1], 252)), rtol=1e-6)
    assert np.abs(detailed / single[1] - 1).max() > 0.01
    batch = model.infer_batch(frames, batch_size=2, detail_size=252)
    np.testing.assert_allclose(batch[1], detailed, rtol=1e-5, atol=1e-6)
    streamed = [f.prediction for f in sd.depth_stream(model, frames, fov_mask=None, detail_size=252)]
    np.testing.assert_allclose(streamed[2], batch[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=f"detail_size must be an integer larger than the input size \\({size}\\)"):
        next(sd.depth_stream(model, frames, detail_size=size))
    with pytest.raises(ValueError, match=f"detail_size must be an integer larger than the input size \\({size}\\)"):
        model.infer_image(frames[0], detail_size=size - 14)
    stored = SimpleNamespace(predictions=lambda items: iter(()), output_kind="disparity", depth_unit="relative")
    with pytest.raises(ValueError, match="detail_size needs a model"):  # how depth_stream tells stored predictions
        next(sd.depth_stream(stored, frames, detail_size=252))
    with pytest.raises(ValueError, match=r"frame 1 has size \(240, 318\), expected \(240, 320\)"):
        model.infer_batch([frames[0], frames[1][:, :-2]], batch_size=1, detail_size=252)


@pytest.mark.slow
def test_detail_read_sees_more_of_a_polyps_rise(model):
    """What the option is for, on exact depth: held-out colon frames rendered with sessile polyps and again
    without (same path and wall). Over the pixels a polyp brings > 1 mm nearer, the share of its true rise that
    the model's output shows (each output divided by its median first) is larger with the detail read, on three
    of these four frames at least and by more than 0.04 on the median frame (over 28 frames of three organs, model
    card: v4 0.35 → 0.57, v5 0.36 → 0.57; a frame whose polyp barely rises swings either way, so not the mean). Bug
    caught: a merge that keeps the first read's detail, or one so smooth that the second read's detail does not
    get through."""
    import SurgicalDepthTrainingLib as sdt

    shares = {None: [], 252: []}
    for seed in (1001, 1002):
        bumpy, plain = (sdt.render_clip("colon", n_frames=2, seed=seed, height=256, width=320, polyps=p)
                        for p in (4.0, 0.0))
        for b, p in zip(bumpy, plain):
            on = b["valid"] & p["valid"] & (p["depth"] - b["depth"] > 1.0)
            if on.sum() < 50:
                continue
            true = np.median(p["depth"][on] / b["depth"][on])
            for size in shares:
                pb, pp = (model.infer_image(f["image"], detail_size=size) for f in (b, p))
                seen = np.median((pb / np.median(pb[b["valid"]]))[on] / (pp / np.median(pp[p["valid"]]))[on])
                shares[size].append((seen - 1) / (true - 1))
    assert len(shares[252]) >= 2
    gains = np.subtract(shares[252], shares[None])  # on these four frames, v5: +0.12, +0.16, -0.23, +0.10
    assert (gains > 0).sum() >= 3 and np.median(gains) > 0.04, shares  # (silhouettes traced again since s22)


def test_cli_detail_size(model, frames, tmp_path):
    """The real CLI: ``predict --detail-size`` writes the merged prediction, ``evaluate --detail-size`` reports it
    (report field ``detail_size``), and a size that is not larger than the model's is one error line, exit 2.
    Bugs caught: the flag parsed but not passed on, the report not saying which reads were measured."""
    import SurgicalDepthTrainingLib as sdt

    sdt.write_synthetic(sdt.render_clip("colon", n_frames=2, seed=1002, height=H, width=W), tmp_path / "clip",
                        {"organ": "colon", "seed": 1002, "generator": {}})
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(frames[1], cv2.COLOR_RGB2BGR))
    run = [sys.executable, "-m", "SurgicalDepthLib.cli"]
    common = ["--device", "cpu", "--progress", "none"]
    done = subprocess.run([*run, "predict", str(image), "-o", str(tmp_path / "out"), "--detail-size", "252",
                           "--fov-mask", "none", "--format", "npy", *common], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "frame_depth.npy"),
                               model.infer_image(frames[1], detail_size=252), rtol=1e-4, atol=1e-5)
    done = subprocess.run([*run, "evaluate", "--dataset", "synthetic", "--root", str(tmp_path / "clip"),
                           "--output", str(tmp_path / "report.json"), "--detail-size", "252", *common],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "report.json").read_text())["detail_size"] == 252
    bad = subprocess.run([*run, "predict", str(image), "-o", str(tmp_path / "bad"), "--detail-size", "182",
                          *common], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "detail_size" in bad.stderr.strip().splitlines()[-1] and "182" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()


def test_detail_size_takes_numpy_integers():
    """Catches ``detail_size=np.int64(252)`` (a size read from an array or a config) refused as "must be an
    integer", unlike every other integer option of depth_stream; a float, a bool or a size not above the input
    size stays refused."""
    from SurgicalDepthLib.detail import check_detail_size

    size = check_detail_size(np.int64(252), 182)
    assert size == 252 and type(size) is int
    for bad in (252.0, True, np.int32(182)):
        with pytest.raises(ValueError, match="detail_size must be an integer larger"):
            check_detail_size(bad, 182)
