"""Background threads of the streaming pipeline: order, bounded look-ahead, errors, early stops."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from SurgicalDepthLib.background import BackgroundCalls, prefetch


def _threads(name: str) -> int:
    return sum(t.name == name for t in threading.enumerate())


def test_prefetch_keeps_order_and_runs_the_source_in_another_thread():
    seen = []

    def source():
        for i in range(20):
            seen.append(threading.current_thread().name)
            yield i

    assert list(prefetch(source(), 3, name="pf-order")) == list(range(20))
    assert set(seen) == {"pf-order"}
    assert _threads("pf-order") == 0


def test_prefetch_reads_at_most_depth_items_ahead():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    it = prefetch(source(), 2, name="pf-ahead")
    assert next(it) == 0
    time.sleep(0.3)
    # one taken + 2 queued + at most one blocked in put
    assert len(produced) <= 4
    it.close()
    assert _threads("pf-ahead") == 0


def test_prefetch_reraises_after_the_items_before_the_error():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone at item 3")

    got = []
    with pytest.raises(OSError, match="item 3"):
        for x in prefetch(source(), 4, name="pf-err"):
            got.append(x)
    assert got == [1, 2]


def test_prefetch_stopped_from_outside_ends_like_an_exhausted_iterator():
    stop = threading.Event()

    def endless():
        i = 0
        while not stop.is_set():
            yield i
            i += 1

    got = []
    for x in prefetch(endless(), 2, name="pf-stop", stop=stop):
        got.append(x)
        if x == 5:
            stop.set()
    assert got[:6] == list(range(6)) and len(got) <= 6 + 3
    assert _threads("pf-stop") == 0
    with pytest.raises(ValueError, match="depth"):
        next(prefetch([], 0))


def test_background_calls_run_in_order_and_reraise_errors():
    out = []
    with BackgroundCalls(depth=2, name="bc-order") as calls:
        for i in range(50):
            calls.submit(out.append, i)
    assert out == list(range(50)) and _threads("bc-order") == 0

    done = []

    def write(i):
        if i == 3:
            raise OSError(f"cannot write item {i}")
        done.append(i)

    calls = BackgroundCalls(depth=1)
    with pytest.raises(OSError, match="item 3"):
        for i in range(100):
            calls.submit(write, i)
        calls.close()
    calls.close()  # closing again is harmless
    assert done == [0, 1, 2]  # nothing after the failed call ran


def test_background_calls_skip_waiting_calls_when_the_caller_fails():
    started, gate = [], threading.Event()

    def slow(i):
        started.append(i)
        gate.wait(5)

    with pytest.raises(KeyError):
        with BackgroundCalls(depth=8, name="bc-cancel") as calls:
            for i in range(5):
                calls.submit(slow, i)
            threading.Timer(0.2, gate.set).start()
            raise KeyError("caller failed")
    # the call already running may finish (or, on a loaded machine, not have started yet); the waiting ones never run
    assert started in ([], [0]) and _threads("bc-cancel") == 0


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_iter_batches_yields_frames_read_before_a_source_error(prefetch_batches):
    import torch

    from SurgicalDepthLib import load_model

    torch.manual_seed(0)  # a random init whose (ReLU) output is not constant
    model = load_model("random:surgical-depth-tiny", device="cpu")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(5)]
    expected = model.infer_batch(frames, input_size=42, batch_size=4)
    assert np.ptp(expected) > 0

    def source():
        yield from frames
        raise OSError("clip.mp4: decoding stopped at frame 5")

    got = []
    with pytest.raises(OSError, match="frame 5"):
        for batch in model.iter_batches(source(), 42, 4, prefetch_batches=prefetch_batches):
            got.extend(batch)
    assert len(got) == 5  # the full batch of 4 and the partial batch of 1
    np.testing.assert_allclose(np.stack(got), expected, rtol=1e-5, atol=1e-6)


def test_iter_batches_stops_its_threads_when_the_consumer_stops_early():
    import torch

    from SurgicalDepthLib import load_model

    torch.manual_seed(0)
    model = load_model("random:surgical-depth-tiny", device="cpu")
    produced = []

    def endless():
        rng = np.random.default_rng(1)
        while True:
            produced.append(1)
            yield rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)

    batches = model.iter_batches(endless(), 28, 2, prefetch_batches=2)
    assert next(batches).shape == (2, 30, 40)
    batches.close()
    assert _threads("DepthModel.preprocess") == 0
    assert len(produced) <= 2 * (1 + 2 + 2)  # the batch used, the queue, and at most one batch in progress


def test_closing_a_prefetch_whose_source_blocks_does_not_hang(monkeypatch, caplog):
    """Catches ``close()`` of a stream (a ``break`` out of ``depth_stream``, the panel's Stop) hanging for as long
    as the source blocks inside ``next()`` (a camera generator waiting for its next frame): the consumer waits
    PREFETCH_JOIN_SECONDS for the thread, then leaves it (warned) and goes on; the source ends it later."""
    import SurgicalDepthLib.background as background

    monkeypatch.setattr(background, "PREFETCH_JOIN_SECONDS", 0.2)
    release = threading.Event()

    def camera():
        yield 0
        release.wait(30)  # no next frame until released
        yield 1

    it = prefetch(camera(), depth=1, name="camera")
    assert next(it) == 0
    time.sleep(0.05)  # the worker is inside next() of the source now
    started = time.perf_counter()
    it.close()
    assert time.perf_counter() - started < 5 and "camera: the source did not stop" in caplog.text
    release.set()
    for thread in threading.enumerate():
        if thread.name == "camera":
            thread.join(5)
    assert not any(t.name == "camera" for t in threading.enumerate())
