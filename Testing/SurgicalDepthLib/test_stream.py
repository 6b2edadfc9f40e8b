"""``sd.depth_stream``: the one frames → depth loop, checked frame by frame against ``infer_image`` and
``disparity_to_depth`` on real files (an mp4 clip, an image folder, stored predictions)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_model import textured, tiny_model, write_clip

import SurgicalDepthLib as sd
from SurgicalDepthLib.alignment import DEFAULT_DEPTH_RANGE_MM, disparity_to_depth
from SurgicalDepthLib.saved_predictions import INFO_NAME, SavedPredictions
from SurgicalDepthLib.stream import RANGE_PERCENTILES

SIZE = 70


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, 7)
    return path, list(sd.open_frames(path))


def test_video_frames_match_infer_image_and_disparity_to_depth(model, clip, one_torch_thread):
    """Catches: a prediction paired with the wrong frame under batching/threads, source indices lost under
    start/stride, a depth mapping other than disparity_to_depth with the shared default range."""
    path, decoded = clip
    frames = list(sd.depth_stream(model, path, start=1, stride=2, max_frames=3, batch_size=2, input_size=SIZE))
    assert [f.index for f in frames] == [1, 3, 5]
    for f in frames:
        np.testing.assert_array_equal(f.rgb, decoded[f.index])
        expected = model.infer_image(decoded[f.index], SIZE)
        np.testing.assert_allclose(f.prediction, expected, rtol=1e-5, atol=1e-5)  # batched vs single: float rounding
        ref = disparity_to_depth(f.prediction, depth_range=DEFAULT_DEPTH_RANGE_MM, percentiles=RANGE_PERCENTILES)
        np.testing.assert_array_equal(f.depth_mm, ref)
        assert f.depth_mm.dtype == np.float32 and f.prediction.dtype == np.float32
        assert np.nanmin(f.depth_mm) >= DEFAULT_DEPTH_RANGE_MM[0] - 1e-4
        assert np.nanmax(f.depth_mm) <= DEFAULT_DEPTH_RANGE_MM[1] + 1e-3
        assert f.valid.all()


def test_iterable_of_arrays_keeps_order_and_depth_range(model, one_torch_thread):
    """Catches: frames reordered by the depth worker threads, a depth_range argument ignored."""
    frames = [textured(30, 44, seed) for seed in range(7)]
    out = list(sd.depth_stream(model, iter(frames), batch_size=3, input_size=SIZE, depth_range=(20.0, 60.0)))
    assert [f.index for f in out] == list(range(7))
    for f in out:
        assert f.rgb is frames[f.index]
        # batched vs single: float rounding
        np.testing.assert_allclose(f.prediction, model.infer_image(frames[f.index], SIZE), rtol=1e-5, atol=1e-5)
        assert 20.0 - 1e-4 <= np.nanmin(f.depth_mm) and np.nanmax(f.depth_mm) <= 60.0 + 1e-3


def test_metric_model_depth_is_its_output_in_mm(one_torch_thread):
    """Catches: a metric model's output rescaled into a depth range like a relative one, or converted twice."""
    metric = tiny_model(1, head="metric")
    rgb = textured(28, 42, 5)
    (frame,) = sd.depth_stream(metric, [rgb], input_size=SIZE, depth_range=(1.0, 2.0))
    np.testing.assert_allclose(frame.depth_mm, metric.infer_image(rgb, SIZE), rtol=1e-5)
    assert frame.depth_mm.max() > 2.0  # not squeezed into depth_range


def test_temporal_uses_one_depth_mapping_for_the_clip(model, clip, one_torch_thread):
    """Catches: temporal mode re-normalising each frame's depth to its own range (the flicker it must remove)."""
    path, _ = clip
    frames = list(sd.depth_stream(model, path, temporal=True, input_size=SIZE))
    coefficients = []
    near, far = DEFAULT_DEPTH_RANGE_MM
    for f in frames:  # 1/depth = s * prediction + t wherever depth is defined and not clipped to the range
        ok = f.valid & (f.depth_mm > near * 1.001) & (f.depth_mm < far * 0.999)
        s, t = np.polyfit(f.prediction[ok].astype(np.float64), 1.0 / f.depth_mm[ok].astype(np.float64), 1)
        coefficients.append((s, t))
    np.testing.assert_allclose(coefficients, [coefficients[0]] * len(frames), rtol=1e-4, atol=1e-9)


def test_temporal_depth_stays_inside_the_range_on_every_tissue_pixel(tmp_path):
    """Catches: the temporal mapping (fixed by the first frame's percentiles 2 and 98) applied without clipping:
    disparity in the tails, or a later frame's wider range, went past ``far`` or to ``1/z <= 0`` = NaN on tissue,
    where the per-frame mapping clips to ``depth_range``."""
    base = np.linspace(1.0, 2.0, 400, dtype=np.float32).reshape(20, 20)
    tails = base.copy()
    tails[0, :5] = [0.01, -0.5, 0.02, 3.0, 5.0]  # far below / above the 2-98 % band
    saved = _saved(tmp_path / "p", [tails, tails * 1.0])
    rgbs = [np.zeros((20, 20, 3), np.uint8)] * 2
    plain = list(sd.depth_stream(saved, rgbs, depth_range=(5.0, 120.0), fov_mask=None))
    steady = list(sd.depth_stream(saved, rgbs, depth_range=(5.0, 120.0), fov_mask=None, temporal=True))
    for f in steady:
        assert f.valid.all()
        assert 5.0 - 1e-4 <= f.depth_mm.min() and f.depth_mm.max() <= 120.0 + 1e-3
    np.testing.assert_allclose(steady[0].depth_mm, plain[0].depth_mm, rtol=1e-5)  # first frame: the same mapping


def _saved(folder: Path, maps: list[np.ndarray], kind: str = "disparity") -> SavedPredictions:
    folder.mkdir()
    for i, m in enumerate(maps):
        sd.save_depth(folder / f"{i:06d}.npy", m)
    (folder / INFO_NAME).write_text(json.dumps({"model": "test", "output_kind": kind, "depth_unit": "relative",
                                                    "format": "npy", "size": list(maps[0].shape)}))
    return SavedPredictions(folder)


def test_blank_frame_gives_nan_depth_and_the_stream_goes_on(tmp_path):
    """Catches: a frame with no disparity range (blank screen) ending a whole clip with an error, or its depth
    written as 0 (drawn as nearest)."""
    varied = np.linspace(1, 2, 12, dtype=np.float32).reshape(3, 4)
    saved = _saved(tmp_path / "p", [varied, np.full((3, 4), 0.5, np.float32), varied])
    rgbs = [np.full((3, 4, 3), 128, np.uint8)] * 3  # grey, not black: a black frame gets no depth anyway
    out = list(sd.depth_stream(saved, rgbs))
    assert [f.index for f in out] == [0, 1, 2]
    assert np.isnan(out[1].depth_mm).all() and not out[1].valid.any()
    assert out[0].valid.all() and out[2].valid.all()


@pytest.mark.parametrize("temporal", [False, True])
def test_black_frames_get_no_depth_and_fix_nothing_for_the_frames_after(model, temporal, caplog, one_torch_thread):
    """Catches a black screen (before the scope is on, between scenes) read as tissue: the network's answer to
    black was written as depth, and with --temporal it fixed the depth mapping of the whole clip (the first frame's
    range maps every later frame), so a clip that starts black came out in another range than the same clip
    without its black start. With ``fov_mask="auto"`` a blank frame has NaN prediction and depth, and the frames
    after it are what they are without it; ``fov_mask=None`` (every pixel is tissue) still predicts it."""
    black, seen = np.zeros((48, 64, 3), np.uint8), [textured(48, 64, k) for k in (1, 2)]
    black[10, 10] = 255  # a few bright pixels (an on-screen cursor) leave it blank

    def run(frames, **options):
        return list(sd.depth_stream(model, frames, input_size=SIZE, temporal=temporal, **options))

    with caplog.at_level(logging.INFO, logger="SurgicalDepthLib.stream"):
        with_black, alone = run([black, seen[0], black, seen[1]]), run(seen)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "SurgicalDepthLib.stream"]
    assert said == [(logging.INFO, "frame 0 is black (no tissue): no depth for it and the black frames after it")]
    for f in (with_black[0], with_black[2]):
        assert np.isnan(f.prediction).all() and not f.valid.any()
    for f, g in zip(with_black[1::2], alone):
        np.testing.assert_array_equal(f.prediction, g.prediction)
        np.testing.assert_array_equal(f.depth_mm, g.depth_mm)
    assert np.isfinite(run([black], fov_mask=None)[0].prediction).all()


def test_blank_frames_are_warned_about_once_per_stream(tmp_path, caplog):
    """Catches one WARNING per blank frame: a scope showing black (or the live service fed a black feed) wrote
    a warning for every frame, 25 a second. The first is a warning, the rest DEBUG; each still has NaN depth."""
    import logging

    flat = np.full((3, 4), 0.5, np.float32)
    varied = np.linspace(1, 2, 12, dtype=np.float32).reshape(3, 4)
    saved = _saved(tmp_path / "p", [flat, varied, flat, flat, flat])
    caplog.set_level(logging.DEBUG, logger="SurgicalDepthLib.stream")
    out = list(sd.depth_stream(saved, [np.full((3, 4, 3), 128, np.uint8)] * 5))
    assert [np.isnan(f.depth_mm).all() for f in out] == [True, False, True, True, True]
    blank = [r for r in caplog.records if "has no range" in r.getMessage()]
    assert [r.levelno for r in blank] == [logging.WARNING] + [logging.DEBUG] * 3


class _FlatModel:
    """The inference API of a relative model that predicts a flat (blank) disparity for every frame."""

    output_kind, depth_unit, default_batch_size = "disparity", "relative", 1

    def iter_batches(self, frames, input_size=None, batch_size=None):
        for rgb in frames:
            yield np.zeros((1,) + rgb.shape[:2], np.float32)


def test_blank_frame_bookkeeping_stays_constant_over_a_long_stream():
    """Catches: the stream kept a list with one entry per blank frame for its whole life (a scope showing black
    for hours grew it without bound), where only "first or not" is used. What a frame's deferred depth holds must
    not grow with the number of blank frames before it."""
    import pickle

    blank = np.zeros((4, 4, 3), np.uint8)
    held = []  # bytes of what the first and the last frame's deferred depth holds, once computed
    for frame in sd.depth_stream(_FlatModel(), (blank for _ in range(3000)), fov_mask=None):
        deferred = frame.__dict__["_depth_mm"]  # the Deferred, before depth_mm computes (and replaces) it
        assert np.isnan(frame.depth_mm).all()
        if frame.index in (0, 2999):
            held.append(len(pickle.dumps(deferred.function.args)))
    assert held[1] <= held[0] + 16, held


def test_saved_predictions_errors_name_the_file(tmp_path):
    """Catches: a missing or mismatched stored map silently skipped or paired with the wrong frame."""
    saved = _saved(tmp_path / "p", [np.ones((3, 4), np.float32)])
    with pytest.raises(FileNotFoundError, match="000001.npy"):
        list(sd.depth_stream(saved, [np.zeros((3, 4, 3), np.uint8)] * 2))
    with pytest.raises(ValueError, match="000000.npy is 3x4"):
        list(sd.depth_stream(saved, [np.zeros((5, 4, 3), np.uint8)]))
    with pytest.raises(FileNotFoundError, match=INFO_NAME):
        SavedPredictions(tmp_path)


def test_saved_predictions_check_every_frame_before_any_output(tmp_path):
    """Catches: a prediction folder written with --stride 2 --max-frames 3 read for every frame (reconstruct wrote
    the first frames' files, then stopped at frame 1 with a partial run), without saying which options select the
    frames it holds; and maps of another video size accepted until the first frame."""
    folder = tmp_path / "p"
    folder.mkdir()
    for i in (0, 2, 4):
        sd.save_depth(folder / f"{i:06d}.npy", np.ones((3, 4), np.float32))
    (folder / INFO_NAME).write_text(json.dumps({"model": "test", "output_kind": "disparity", "depth_unit": "relative",
                                                "format": "npy", "size": [3, 4]}))
    saved = SavedPredictions(folder)
    saved.check_frames([0, 2, 4], (3, 4))
    with pytest.raises(FileNotFoundError, match=r"no prediction for frame 1 .*--stride 2 and --max-frames 3"):
        saved.check_frames(range(5), (3, 4))
    with pytest.raises(ValueError, match="3x4 but the frames are 6x8"):
        saved.check_frames([0], (6, 8))
    (folder / "000000.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: 1 of the 2 .* it holds 2 frames from 2 to 4"):
        saved.check_frames([0, 2], (3, 4))


def test_max_frames_reads_no_source_frame_past_the_last_one_used(tmp_path):
    """Catches: ``stop = start + max_frames * stride``, which asked a live iterable for up to ``stride - 1``
    frames after the last selected one (a live source blocks waiting for frames that are then skipped)."""
    saved = _saved(tmp_path / "p", [np.linspace(1, 2, 12, dtype=np.float32).reshape(3, 4)] * 6)
    served = []

    def source():
        for i in range(100):
            served.append(i)
            yield np.zeros((3, 4, 3), np.uint8)

    out = list(sd.depth_stream(saved, source(), start=2, stride=3, max_frames=2, fov_mask=None))
    assert [f.index for f in out] == [2, 5] and served == list(range(6))


def test_an_opened_reader_is_selected_by_source_index(model, clip, one_torch_thread):
    """Catches ``start``/``stride`` applied to an opened reader's positions instead of its frames' source indices
    (the documented meaning): a reader opened at every second frame, asked for frames 2, 4, 6, gave 4 and 8 (the
    third and fifth it yields), and a reader that skipped an undecodable frame shifted every later selection."""
    path, frames = clip
    reader = sd.open_frames(path, stride=2)  # source frames 0, 2, 4, 6
    try:
        out = list(sd.depth_stream(model, reader, start=2, stride=2, max_frames=3, input_size=SIZE, fov_mask=None))
    finally:
        reader.close()
    assert [f.index for f in out] == [2, 4, 6]
    for f in out:
        np.testing.assert_array_equal(f.rgb, frames[f.index])


@pytest.mark.parametrize("opened, expected", [({"start": 3}, [3, 4]), ({"stride": 2}, [0, 2])])
def test_max_frames_of_an_opened_reader_counts_the_frames_used(model, clip, opened, expected, one_torch_thread):
    """Catches ``max_frames`` on an opened reader turned into a source-index stop counted from ``start`` (0): a
    reader opened at frame 3 gave no frame at all for ``max_frames=2`` (the stop was frame 2), one opened at every
    second frame gave one frame instead of two."""
    path, frames = clip
    reader = sd.open_frames(path, **opened)
    try:
        out = list(sd.depth_stream(model, reader, max_frames=2, input_size=SIZE, fov_mask=None))
    finally:
        reader.close()
    assert [f.index for f in out] == expected
    for f in out:
        np.testing.assert_array_equal(f.rgb, frames[f.index])


@pytest.mark.parametrize("kwargs, name", [({"stride": 0}, "stride"), ({"start": -1}, "start"),
                                          ({"max_frames": 0}, "max_frames"), ({"depth_range": (5, 5)}, "depth_range"),
                                          ({"batch_size": 0}, "batch_size"), ({"batch_size": 1.5}, "batch_size")])
def test_bad_arguments_fail_before_decoding(model, kwargs, name):
    """Catches: bad arguments accepted (an endless or empty stream) or reported only after decoding started."""
    def never():
        raise AssertionError("decoding started")
        yield

    with pytest.raises(ValueError, match=name):
        next(sd.depth_stream(model, never(), **kwargs))


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", *argv], capture_output=True, text=True,
                          timeout=300)


def _events(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]  # every stdout line is one JSON object


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model) -> Path:
    from SurgicalDepthLib.checkpoints import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", model)


def test_predict_then_reconstruct_from_saved_depth(tmp_path, clip, checkpoint):
    """Catches: --progress jsonl mixing human text into stdout or skipping frames, predict's folder unreadable by
    reconstruct --depth, and reconstruct --depth giving other geometry than running the model again."""
    path, _ = clip
    result = _cli("predict", str(path), "--output", str(tmp_path / "pred"), "--model", str(checkpoint),
                  "--input-size", str(SIZE), "--stride", "2", "--device", "cpu", "--progress", "jsonl")
    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [0, 1, 2, 3, 4] and {e["total"] for e in progress} == {4}
    assert {e["stage"] for e in progress} == {"predict"}
    assert events[-1] == {"event": "done", "frames": 4, "output": str(tmp_path / "pred")}
    assert "frames" in result.stderr  # the human summary went to stderr

    common = ["--intrinsics", "40,40,31.5,23.5", "--stride", "2", "--progress", "jsonl"]
    again = _cli("reconstruct", str(path), "--output", str(tmp_path / "model"), "--model", str(checkpoint),
                 "--input-size", str(SIZE), "--device", "cpu", *common)
    saved = _cli("reconstruct", str(path), "--output", str(tmp_path / "saved"), "--depth",
                 str(tmp_path / "pred" / "clip"), *common)
    assert again.returncode == 0 and saved.returncode == 0, again.stderr + saved.stderr
    assert _events(saved.stdout)[-1]["event"] == "done"
    for index in (0, 2, 4, 6):
        a = sd.load_mesh(tmp_path / "model" / f"points_{index:06d}.ply")
        b = sd.load_mesh(tmp_path / "saved" / f"points_{index:06d}.ply")
        assert a.GetNumberOfPoints() == b.GetNumberOfPoints() == 48 * 64
        pa = np.array([a.GetPoint(i) for i in range(0, 48 * 64, 37)])
        pb = np.array([b.GetPoint(i) for i in range(0, 48 * 64, 37)])
        np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-4)
    meta = json.loads((tmp_path / "saved" / "reconstruction.json").read_text())
    assert meta["depth"] == str(tmp_path / "pred" / "clip") and meta["frames"] == 4


def test_saved_raw_maps_are_corrected_to_the_lens_like_the_model(tmp_path, clip, model):
    """Catches: ``reconstruct --depth --intrinsics`` on maps predicted without the calibration silently skipping the
    lens correction that the same command applies to the model's own output (stored maps have no reference lens
    unless predictions.json records it): a 130-degree scope's depth came out up to 60 % off."""
    import dataclasses

    from SurgicalDepthLib.checkpoints import save_checkpoint

    path, _ = clip
    lensed = tiny_model(3)
    lensed.config = dataclasses.replace(lensed.config, reference_fov_deg=100.0)
    checkpoint = save_checkpoint(tmp_path / "lensed.safetensors", lensed)
    assert _cli("predict", str(path), "--output", str(tmp_path / "pred"), "--model", str(checkpoint),
                "--input-size", str(SIZE), "--max-frames", "2", "--device", "cpu").returncode == 0
    info = json.loads((tmp_path / "pred" / "clip" / INFO_NAME).read_text())
    assert info["reference_fov_deg"] == 100.0
    common = ["--intrinsics", "15,15,31.5,23.5", "--max-frames", "2"]  # 130 degrees across the 64-pixel width
    again = _cli("reconstruct", str(path), "--output", str(tmp_path / "model"), "--model", str(checkpoint),
                 "--input-size", str(SIZE), "--device", "cpu", *common)
    saved = _cli("reconstruct", str(path), "--output", str(tmp_path / "saved"), "--depth",
                 str(tmp_path / "pred" / "clip"), *common)
    assert again.returncode == 0 and saved.returncode == 0, again.stderr + saved.stderr
    a = sd.load_mesh(tmp_path / "model" / "points_000000.ply")
    b = sd.load_mesh(tmp_path / "saved" / "points_000000.ply")
    pa = np.array([a.GetPoint(i) for i in range(0, a.GetNumberOfPoints(), 29)])
    pb = np.array([b.GetPoint(i) for i in range(0, b.GetNumberOfPoints(), 29)])
    np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-4)


def test_jsonl_error_event_and_exit_code(tmp_path):
    """Catches: a failing command under --progress jsonl ending without an error event (the Slicer panel would
    wait forever) or with a traceback."""
    result = _cli("reconstruct", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o"),
                  "--progress", "jsonl")
    assert result.returncode == 2
    event = _events(result.stdout)[-1]
    assert event["event"] == "error" and "missing.mp4" in event["message"]
    assert "Traceback" not in result.stderr


def test_jsonl_error_event_for_usage_errors(tmp_path):
    """Catches: a command-line usage error (caught by argparse before any command runs) ending a --progress jsonl
    run without an error event, or printed as argparse's usage block instead of one error line."""
    result = _cli("predict", str(tmp_path), "--output", str(tmp_path / "o"), "--batch-size", "two",
                  "--progress", "jsonl")
    assert result.returncode == 2 and "usage:" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("surgical-depth predict: error: argument --batch-size") and "--help" in line
    (event,) = _events(result.stdout)
    assert event["event"] == "error" and "--batch-size" in event["message"]


def test_depth_frame_contract_and_lazy_depth():
    """Catches: DepthFrame losing a contract field or its frozenness, and depth_mm computed for every frame
    even when a caller never reads it (predict writes only the prediction; ~70 ms per 1080p frame)."""
    import dataclasses

    from SurgicalDepthLib.stream import Deferred, DepthFrame

    assert [f.name for f in dataclasses.fields(DepthFrame)][:4] == ["index", "rgb", "prediction", "depth_mm"]
    calls = []
    pred = np.linspace(1, 2, 12, dtype=np.float32).reshape(3, 4)
    frame = DepthFrame(4, np.zeros((3, 4, 3), np.uint8), pred, Deferred(lambda p: calls.append(1) or 1 / p, pred))
    assert calls == [] and repr(frame) == "DepthFrame(index=4)"
    np.testing.assert_allclose(frame.depth_mm, 1 / pred)
    assert frame.depth_mm is frame.depth_mm and calls == [1]  # computed once
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.depth_mm = pred
    given = DepthFrame(0, frame.rgb, pred, depth_mm=pred)  # an array given by hand is kept as it is
    assert given.depth_mm is pred


class _MeanModel:
    """The inference API of a relative model whose disparity is the frame's red channel plus a ramp (no torch)."""

    output_kind, depth_unit, default_batch_size = "disparity", "relative", 1

    def iter_batches(self, frames, input_size=None, batch_size=None):
        for rgb in frames:
            yield (rgb[..., 0].astype(np.float32) + np.arange(rgb.shape[1], dtype=np.float32))[None]


def test_video_tail_past_the_announced_frame_count_is_streamed(tmp_path):
    """Catches depth_stream pairing frames with ``reader.indices`` (zip): a video whose container announces too
    few frames (a WebM whose Duration says 1 s of 2.4 s; MPEG-1 .mpg) lost its tail, 25 of 60 frames; every
    frame must come out, ``index`` its source frame number, under start/stride/max_frames."""
    import cv2
    from video_files import webm_clip, with_duration

    path = tmp_path / "clip.webm"
    path.write_bytes(with_duration(webm_clip(path, [np.full((24, 32, 3), 4 * i, np.uint8) for i in range(60)]),
                                   1000.0))
    capture, decoded = cv2.VideoCapture(str(path)), []
    while (bgr := capture.read()[1]) is not None:
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(decoded) == 60
    for kwargs, expected in (({}, range(60)), ({"start": 5, "stride": 7}, range(5, 60, 7)),
                             ({"start": 20, "stride": 3, "max_frames": 10}, range(20, 50, 3))):
        out = list(sd.depth_stream(_MeanModel(), path, fov_mask=None, **kwargs))
        assert [f.index for f in out] == list(expected), kwargs
        for f in out:  # the frame sequential decoding gives at that index
            np.testing.assert_array_equal(f.rgb, decoded[f.index])
    with sd.open_frames(path) as reader:  # an opened reader: the same frames
        assert [f.index for f in sd.depth_stream(_MeanModel(), reader, stride=10, fov_mask=None)] == \
            list(range(0, 60, 10))


def test_float_frames_are_refused_with_the_default_field_of_view(model):
    """Catches float frames predicted silently under the default ``fov_mask="auto"``: the field-of-view search
    held frames that look blank PNG-encoded and got a float frame in [0, 1] back as uint8 (0.05 -> 0), which was
    then predicted, where ``fov_mask=None`` refused it (TypeError naming the frame)."""
    frame = np.full((30, 44, 3), 0.05, np.float32)
    for fov_mask in ("auto", None):
        with pytest.raises(TypeError, match="frame 0 must be uint8, got float32"):
            list(sd.depth_stream(model, [frame, frame], fov_mask=fov_mask, input_size=SIZE))


def test_frame_errors_name_the_source_index():
    """Catches a bad frame named by its position among the selected frames: under ``start=2`` an RGBA source frame
    3 was reported as "frame 1", and a frame of another size likewise; a grey ``[N, H, W]`` stack failed deep in
    OpenCV (``imencodeWithMetadata``) instead of naming the frame."""
    frames = [textured(30, 44, seed) for seed in range(3)]
    with pytest.raises(ValueError, match=r"frame 3 must be an RGB image \[H, W, 3\], got shape \(30, 44, 4\)"):
        list(sd.depth_stream(_MeanModel(), frames + [np.zeros((30, 44, 4), np.uint8)], start=2))
    out = []
    with pytest.raises(ValueError, match="frame 3 is 50x40 pixels but frame 2 was 44x30"):
        for f in sd.depth_stream(_MeanModel(), frames + [textured(40, 50, 1)], start=2, fov_mask=None):
            out.append(f.index)
    assert out == [2]  # the frames before it came out first
    with pytest.raises(ValueError, match=r"frame 0 must be an RGB image .* got shape \(2, 30, 44\)"):
        list(sd.depth_stream(_MeanModel(), np.zeros((2, 30, 44), np.uint8)))


def test_a_source_failing_during_the_field_of_view_search_yields_the_frames_before():
    """Catches the frames read before a failing source lost under the default ``fov_mask="auto"``: the source
    failed during the search's look-ahead (its first 8 frames that are not blank), and the error came out before
    any of them, where ``fov_mask=None`` yields them first (a camera unplugged 5 frames in gave nothing)."""
    def camera():
        for seed in range(5):
            yield textured(30, 44, seed)
        raise RuntimeError("camera unplugged")

    for fov_mask in ("auto", None):
        out = []
        with pytest.raises(RuntimeError, match="camera unplugged"):
            for f in sd.depth_stream(_MeanModel(), camera(), fov_mask=fov_mask):
                out.append(f.index)
        assert out == [0, 1, 2, 3, 4], fov_mask


def _scope(cx: int) -> np.ndarray:
    """RGB uint8 [120, 160, 3]: texture inside a circular field of view of radius 50 centred at (cx, 60)."""
    import cv2

    mask = np.zeros((120, 160), np.uint8)
    cv2.circle(mask, (cx, 60), 50, 1, -1)
    return np.maximum(textured(120, 160, 0), 60) * mask[..., None]


def test_temporal_depth_keeps_each_frames_own_field_of_view():
    """Catches temporal depth read lazily with the stream's latest field of view: with ``temporal=True`` a frame's
    ``depth_mm`` (computed on first access) used the field of view current at that time, so after the scope image
    moved, the earlier frames' depth was NaN where their own ``fov_mask`` shows tissue and defined outside it."""
    frames = [_scope(70)] * 30 + [_scope(90)] * 25
    for temporal in (False, True):
        out = list(sd.depth_stream(_MeanModel(), frames, temporal=temporal))
        assert out[-1].fov_mask is not out[0].fov_mask  # the field of view moved
        for f in (out[0], out[-1]):
            np.testing.assert_array_equal(f.valid, f.fov_mask)


def test_numpy_arguments_are_taken_and_bad_ones_named_before_decoding():
    """Catches numpy integers refused (``start=np.int64(1)``: "start must be an integer"), a numpy ``depth_range``
    failing with "truth value of an array is ambiguous", bools taken as 0/1, and bad ``depth_range``, ``input_size``,
    ``fov_mask``, ``intrinsics`` or ``frames`` reported only after decoding started, or without naming them."""
    def never():
        raise AssertionError("decoding started")
        yield

    out = list(sd.depth_stream(_MeanModel(), [textured(20, 30, i) for i in range(6)], start=np.int64(1),
                               stride=np.int32(2), max_frames=np.uint8(2), batch_size=np.int64(1),
                               depth_range=np.array([10.0, 50.0]), fov_mask=None))
    assert [f.index for f in out] == [1, 3]
    assert 10.0 - 1e-4 <= np.nanmin(out[0].depth_mm) and np.nanmax(out[0].depth_mm) <= 50.0 + 1e-3
    for kwargs, name in (({"start": True}, "start"), ({"stride": True}, "stride"),
                         ({"depth_range": "ab"}, "depth_range"), ({"depth_range": 5}, "depth_range"),
                         ({"depth_range": ()}, "depth_range"),
                         ({"input_size": 0}, "input_size"), ({"input_size": 70.0}, "input_size"),
                         ({"fov_mask": 5}, "fov_mask"), ({"intrinsics": (40, 40, 20, 15)}, "intrinsics")):
        with pytest.raises((ValueError, TypeError), match=f"^{name} must be") as error:
            next(sd.depth_stream(_MeanModel(), never(), **kwargs))
        assert "\n" not in str(error.value)
    with pytest.raises(TypeError, match="^frames must be .* got int$"):
        next(sd.depth_stream(_MeanModel(), 5))


@pytest.mark.parametrize("kwargs, name", [({"fps": float("nan")}, "fps"), ({"fps": float("inf")}, "fps"),
                                          ({"spacing": (float("nan"), 1.0)}, "spacing")])
def test_depth_sequence_refuses_non_finite_fps_and_spacing(tmp_path, kwargs, name):
    """Catches NaN / infinite ``fps`` or ``spacing`` passing ``<= 0`` checks: the sequence was written with
    ``axis 3 index values:=nan nan`` (or all times 0 for an infinite rate) or a NaN pixel size, a file Slicer
    cannot order or place; nothing may be written."""
    path = tmp_path / "d.seq.nrrd"
    with pytest.raises(ValueError, match=f"^{name} must be"):
        sd.save_depth_sequence_nrrd(path, np.ones((2, 3, 4), np.float32), **kwargs)
    assert list(tmp_path.iterdir()) == []
