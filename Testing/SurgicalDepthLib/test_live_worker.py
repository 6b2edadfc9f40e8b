"""Tests of SurgicalDepthLib.live_worker: live depth off the caller's thread, with a real tiny model (no Slicer;
the module's timer and MRML updates are checked by its self-tests in Slicer)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tiny_model import textured, tiny_model

import SurgicalDepthLib as sd
from SurgicalDepthLib.alignment import DEFAULT_DEPTH_RANGE_MM
from SurgicalDepthLib.live_worker import LiveWorker, new_image_event, worker_options

SIZE = 70


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


def wait_for(condition, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.005)


def frames(n: int, height: int = 40, width: int = 56) -> list[np.ndarray]:
    return [textured(height, width, seed) for seed in range(n)]


def scope_frame(seed: int, height: int = 80, width: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame (never darker than 60) in a black circular scope border, and the circle."""
    yy, xx = np.mgrid[:height, :width]
    scope = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= (height * 3 // 5) ** 2
    frame = np.clip(textured(height, width, seed), 60, 255).astype(np.uint8)
    frame[~scope] = 0
    return frame, scope


def drain(worker: LiveWorker, n: int) -> list:
    out: list = []
    wait_for(lambda: out.extend(worker.results()) or len(out) >= n)
    return out


def test_latest_frame_policy_drops_waiting_frames(model, one_torch_thread):
    """Catches a worker that queues frames (falling behind a live source) instead of taking the newest: frames
    that wait while inference or the caller is busy are replaced and counted as dropped, never processed late."""
    f = frames(6)
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None, max_results=1)
    try:
        for i in range(3):  # before start: each put replaces the waiting frame
            assert worker.put(f[i], meta=i) is (i > 0)
        worker.start()
        wait_for(lambda: worker.stats().processed == 1)  # frame 2, its result waits for the caller
        worker.put(f[3], meta=3)
        wait_for(lambda: worker.stats().processed == 2)  # frame 3: the worker now waits for room for its result
        assert worker.put(f[4], meta=4) is False and worker.put(f[5], meta=5) is True
        results = drain(worker, 3)
    finally:
        assert worker.stop(timeout=10)
    assert [r.number for r in results] == [2, 3, 5] and [r.meta for r in results] == [2, 3, 5]
    stats = worker.stats()
    assert (stats.received, stats.processed, stats.dropped) == (6, 3, 3)
    assert "3 frame(s)" in stats.format() and "3 dropped" in stats.format()


def test_results_pair_with_their_frames_and_match_depth_stream(model, one_torch_thread):
    """Catches results paired with the wrong frame or geometry, and a second depth computation: each result's
    depth is depth_stream's for its own frame, and its outputs hold the frame, depth (NaN, never 0) and a cloud."""
    f = frames(3)
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None, point_budget=200).start()
    results = []
    try:
        for i, rgb in enumerate(f):
            worker.put(rgb.copy(), meta=np.eye(4) * (i + 1))
            results += drain(worker, 1)
    finally:
        worker.stop()
    assert [r.number for r in results] == [0, 1, 2]
    for r, rgb in zip(results, f):
        np.testing.assert_array_equal(r.frame.rgb, rgb)
        np.testing.assert_array_equal(r.meta, np.eye(4) * (r.number + 1))
        ref = next(sd.depth_stream(model, [rgb], depth_range=DEFAULT_DEPTH_RANGE_MM, input_size=SIZE, fov_mask=None))
        np.testing.assert_array_equal(r.outputs["depth"][0], ref.depth_mm)
        np.testing.assert_array_equal(r.outputs["frames"][0], rgb)
        assert not (r.outputs["depth"] == 0).any() and 0 < r.outputs["points"].GetNumberOfPoints() <= 200
        assert type(r.outputs["points"]).__module__.startswith("vtkmodules")  # plain VTK data: no MRML node
        assert r.record is False


def test_calibrated_worker_corrects_depth_to_the_lens(one_torch_thread):
    """Catches: live frames of a calibrated wide-angle scope left uncorrected while the run process() made from
    the first image was corrected (a model with a reference lens, like the default model)."""
    import dataclasses

    lensed = tiny_model(5)
    lensed.config = dataclasses.replace(lensed.config, reference_fov_deg=100.0)
    calib = sd.Intrinsics.from_fov(56, 40, 150.0)
    rgb = frames(1)[0]
    worker = LiveWorker(lensed, intrinsics_for=lambda w, h: calib, calibrated=True, input_size=SIZE,
                        fov_mask=None).start()
    try:
        worker.put(rgb)
        result = drain(worker, 1)[0]
    finally:
        worker.stop()
    ref = next(sd.depth_stream(lensed, [rgb], input_size=SIZE, fov_mask=None, intrinsics=calib))
    np.testing.assert_array_equal(result.outputs["depth"][0], ref.depth_mm)


def test_stop_joins_and_results_stop_coming(model, one_torch_thread):
    """Catches a stop that leaves the thread running (or hangs), and frames still taken after it."""
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None)
    assert worker.stop(timeout=1) is True  # never started: nothing to join
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None).start()
    worker.put(frames(1)[0])
    drain(worker, 1)
    assert worker.running
    start = time.monotonic()
    assert worker.stop(timeout=10) is True and not worker.running and time.monotonic() - start < 5
    worker.put(frames(2)[1])
    time.sleep(0.1)
    assert worker.results() == [] and worker.stats().processed == 1
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()


def test_errors_surface_to_the_caller(model, one_torch_thread):
    """Catches a worker that dies silently on a bad frame: the error is raised by results() in the caller
    (once), after the results that came before it, and the worker has stopped."""
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None).start()
    try:
        worker.put(frames(1)[0])
        good = drain(worker, 1)
        worker.put(np.zeros((40, 56), np.float32))  # not an RGB frame
        wait_for(lambda: not worker.running)
        with pytest.raises(ValueError, match="expected RGB uint8"):
            worker.results()
        assert worker.results() == [] and len(good) == 1
    finally:
        worker.stop()
    mask = np.ones((10, 10), bool)  # a given field of view of another size than the frames
    worker = LiveWorker(model, input_size=SIZE, fov_mask=mask).start()
    worker.put(frames(1)[0])
    wait_for(lambda: not worker.running)
    with pytest.raises(ValueError, match="fov_mask has shape"):
        worker.results()


def test_field_of_view_found_per_size_from_frames_that_show_tissue_or_given(model, one_torch_thread, monkeypatch):
    """Catches a live field of view that differs from a clip's (NaN outside the scope), one fixed for good by a
    black first frame (the scope switched on after the stream started: its border got depth forever), one searched
    again on every frame after it has settled, and a given mask that is ignored."""
    from SurgicalDepthLib import fov

    searched = []
    monkeypatch.setattr(fov, "_mask_of_peak", lambda peak, _find=fov._mask_of_peak, **options: searched.append(1)
                        or _find(peak, **options))
    scopes = [scope_frame(seed) for seed in range(fov.FOV_FRAMES + 2)]
    first, scope = scopes[0]
    worker = LiveWorker(model, input_size=SIZE).start()  # "auto"
    try:
        worker.put(np.zeros_like(first))  # the scope is not on yet
        (black,) = drain(worker, 1)
        results = []
        for rgb, _ in scopes:
            worker.put(rgb)
            results += drain(worker, 1)
        worker.put(frames(1)[0])  # another size: its own field of view (none: no border)
        (c,) = drain(worker, 1)
    finally:
        worker.stop()
    a, b, calls = results[0], results[1], len(searched)
    assert calls <= 2 * fov.FOV_FRAMES + 2  # settled after FOV_FRAMES frames showing tissue (+ the other size's)
    assert black.frame.fov_mask is None and a.frame.fov_mask is not None and not (a.frame.fov_mask & ~scope).any()
    np.testing.assert_array_equal(a.frame.fov_mask, fov.detect_fov_mask([first]))
    np.testing.assert_array_equal(b.frame.fov_mask, fov.detect_fov_mask([first, scopes[1][0]]))
    np.testing.assert_array_equal(results[-1].frame.fov_mask, results[-3].frame.fov_mask)
    assert np.isnan(a.outputs["depth"][0][~a.frame.fov_mask]).all() and c.frame.fov_mask is None
    ref = next(sd.depth_stream(model, [first], input_size=SIZE, depth_range=DEFAULT_DEPTH_RANGE_MM))
    np.testing.assert_array_equal(a.frame.fov_mask, ref.fov_mask)  # the stream's own detection, same frame
    np.testing.assert_array_equal(a.outputs["depth"][0], ref.depth_mm)
    given = np.zeros(first.shape[:2], bool)
    given[10:70, 10:100] = True
    worker = LiveWorker(model, input_size=SIZE, fov_mask=given, point_budget=None).start()
    try:
        worker.put(first[None])  # a one-slice vector volume array [1, H, W, 3]
        (d,) = drain(worker, 1)
    finally:
        worker.stop()
    np.testing.assert_array_equal(d.frame.fov_mask, given)
    assert np.isnan(d.outputs["depth"][0][~given]).all() and "points" not in d.outputs


def test_recording_budget_marks_the_first_results(model, one_torch_thread):
    """Catches a recording that does not stop at its frame budget."""
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None, record_frames=2, first_number=1).start()
    results = []
    try:
        for rgb in frames(4):
            worker.put(rgb)
            results += drain(worker, 1)
    finally:
        worker.stop()
    assert [r.record for r in results] == [True, True, False, False]
    assert [r.number for r in results] == [1, 2, 3, 4] and worker.stats().recorded == 2
    assert "2 recorded" in worker.stats().format()


def test_worker_options_follow_the_process_arguments():
    """Catches live frames computed with other settings than the run process() made from the first image: the
    camera, depth range, input size and point budget; the run's field of view (or, with "auto" where the first
    image showed none, a search on live frames: not "none" for good); the budget counting process's frame; numbering
    after process's item 0."""
    options = {"fx": 50.0, "fy": 50.0, "cx": 27.5, "cy": 19.5, "nearMm": 10.0, "farMm": 90.0, "inputSize": 98,
               "pointBudget": 500, "startFrame": 3, "colorByDepth": True}
    mask = np.ones((40, 56), bool)
    kw = worker_options(options, mask, record_frames=5)
    assert kw["depth_range"] == (10.0, 90.0) and kw["input_size"] == 98 and kw["point_budget"] == 500
    assert kw["fov_mask"] is mask and kw["record_frames"] == 4 and kw["first_number"] == 1
    intr = kw["intrinsics_for"](56, 40)
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (50.0, 50.0, 27.5, 19.5, 56, 40)
    assert kw["calibrated"] is True  # GUI fields are a calibration: the depth is corrected to that lens
    kw = worker_options({"pointCloud": False, "fovMask": "none"}, None)
    assert kw["point_budget"] is None and kw["record_frames"] == 0 and kw["input_size"] is None
    assert kw["calibrated"] is False  # the 70° guess corrects nothing
    assert kw["intrinsics_for"](56, 40).size == (56, 40)  # the 70 degree default
    worker = LiveWorker(object.__new__(object), **kw)  # accepted as LiveWorker arguments
    assert worker.depth_range == DEFAULT_DEPTH_RANGE_MM and worker.fov_mask is None
    # "auto" and the first image showed no border (a black screen): the worker goes on looking
    assert worker_options({}, None)["fov_mask"] == "auto" == worker_options({"fovMask": "auto"}, None)["fov_mask"]


def test_a_black_frame_gets_no_depth_after_an_auto_run_found_the_field_of_view(model, one_torch_thread):
    """Catches the black-frame rule lost in the Slicer live panel: live depth starts with a run on the current image,
    and when that image showed the scope's border the worker is given the mask found (an array), not "auto", so a
    black screen later (scope taken out, light off) was drawn with the network's depth and points. With
    ``fovMask="auto"`` it gets none whatever the run found; with the mask chosen by the user it is predicted."""
    frame, scope = scope_frame(1)
    black = np.zeros_like(frame)
    for options, expected in (({"fovMask": "auto"}, True), ({}, True), ({"fovMask": scope}, False)):
        worker = LiveWorker(model, **worker_options({**options, "inputSize": SIZE, "pointBudget": 500}, scope)).start()
        try:
            worker.put(frame, meta=0)
            (seen,) = drain(worker, 1)
            worker.put(black, meta=1)
            (dark,) = drain(worker, 1)
        finally:
            assert worker.stop(timeout=10)
        assert seen.frame.fov_mask is not None and np.isfinite(seen.frame.depth_mm[scope]).any()
        assert np.isnan(dark.frame.depth_mm).all() == expected, options
        assert (dark.outputs["points"].GetNumberOfPoints() == 0) == expected, options


def test_no_thread_left_after_stop(model, one_torch_thread):
    before = {t.name for t in threading.enumerate()}
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None).start()
    worker.put(frames(1)[0])
    drain(worker, 1)
    worker.stop()
    assert "SurgicalDepth.live" not in {t.name for t in threading.enumerate()} - before


def test_streaming_volumes_are_followed_by_their_frame_event():
    """Catches: live mode on a streaming volume (OpenIGTLink VIDEO) listening for ImageDataModifiedEvent alone,
    which such a node sends only when something else decodes its frame. Slicer is stood in for by its two event
    constants (vtkMRMLVolumeNode.h: ImageDataModifiedEvent = 18001; vtkMRMLStreamingVolumeNode.h: FrameModifiedEvent
    = 18002) and a node answering IsA as a vtkObject does for its own class and its bases."""
    class Node:
        def __init__(self, *classes):
            self.classes = classes

        def IsA(self, name):  # noqa: N802 (VTK's name)
            return name in self.classes

    mrml = type("slicer", (), {"vtkMRMLVolumeNode": type("V", (), {"ImageDataModifiedEvent": 18001}),
                               "vtkMRMLStreamingVolumeNode": type("S", (), {"FrameModifiedEvent": 18002})})
    video = Node("vtkMRMLStreamingVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLVolumeNode")
    assert new_image_event(video, mrml) == 18002
    assert new_image_event(Node("vtkMRMLVectorVolumeNode", "vtkMRMLVolumeNode"), mrml) == 18001


def test_per_size_setup_is_kept_for_a_few_frame_sizes(model, monkeypatch, one_torch_thread):
    """Catches the worker's per-size cache (field of view search or mask, intrinsics) growing with every frame size:
    a live volume whose size keeps changing left one entry per size for good (26 sizes, 26 entries). It keeps the
    SIZES_KEPT sizes seen last; a size seen again gets its setup anew and the same depth."""
    from SurgicalDepthLib import live_worker

    monkeypatch.setattr(live_worker, "SIZES_KEPT", 3, raising=False)  # raising: the test also runs without it
    sizes = [(40 + i, 56) for i in range(5)] + [(40, 56)]
    worker = LiveWorker(model, input_size=SIZE, fov_mask=None, point_budget=None).start()
    results = []
    try:
        for i, (h, w) in enumerate(sizes):  # one at a time: every frame processed
            worker.put(textured(h, w, 0), meta=i)
            results.extend(drain(worker, 1))
        kept = worker._by_size.keys()
    finally:
        assert worker.stop(timeout=10)
    assert kept == [(43, 56), (44, 56), (40, 56)]
    assert [r.meta for r in results] == list(range(6))
    np.testing.assert_array_equal(results[-1].frame.depth_mm, results[0].frame.depth_mm)


def test_a_black_frame_gets_no_depth_with_the_auto_field_of_view(model, one_torch_thread):
    """Catches the Slicer live panel drawing the network's depth of a black screen (scope not on yet): with
    ``fov_mask="auto"`` a blank frame's depth is all NaN and it gives no points; with ``fov_mask=None`` (every
    pixel is tissue) it is predicted; the frame after it is predicted as usual. Also catches the network run on
    the black screen anyway (its answer thrown away: a GPU busy for nothing at every frame while the scope is
    off): the model's forward runs once for the two frames under "auto"."""
    black = np.zeros((40, 56, 3), np.uint8)
    for fov_mask, expected, runs in (("auto", [True, False], 1), (None, [False, False], 2)):
        calls = []
        hook = model.register_forward_hook(lambda *_: calls.append(1))
        worker = LiveWorker(model, input_size=SIZE, fov_mask=fov_mask, point_budget=500).start()
        try:
            results = []
            for i, rgb in enumerate([black, textured(40, 56, 1)]):
                worker.put(rgb, meta=i)
                results.extend(drain(worker, 1))
        finally:
            assert worker.stop(timeout=10)
            hook.remove()
        assert [np.isnan(r.frame.depth_mm).all() for r in results] == expected, fov_mask
        assert np.isnan(results[0].frame.prediction).all() == expected[0]
        assert len(calls) == runs, fov_mask
