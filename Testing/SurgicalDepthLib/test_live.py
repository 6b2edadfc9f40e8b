"""``DepthService`` / ``surgical-depth stream``: a real service on 127.0.0.1 with a real tiny model, talking to
pyigtl's client and server and to a plain-socket client that keeps every reply; every wait is bounded."""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tiny_model import textured, tiny_model

pyigtl = pytest.importorskip("pyigtl")

import SurgicalDepthLib as sd  # noqa: E402
from SurgicalDepthLib.live import DepthService, PointCloudMessage, decimation_grid  # noqa: E402

SIZE = 70  # network input side: keeps the tiny model at a few ms per frame
WAIT = 10.0  # seconds any single reply may take on a loaded 2-core machine before a test fails


@pytest.fixture(scope="module")
def model():
    return tiny_model(5)


@contextlib.contextmanager
def running(model, **options):
    service = DepthService(model, port=0, input_size=SIZE, status_interval=None, **options)
    service.start()
    try:
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def pyigtl_client(service):
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", service.address[1])
    try:
        yield client
    finally:
        client.stop()


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def as_received(message):
    """The message as a receiver decodes it (pack, then pyigtl's own header and body parsing)."""
    raw = message.pack()
    fields = pyigtl.MessageBase.parse_header(raw[:58])
    decoded = pyigtl.MessageBase.create_message(fields["message_type"])
    decoded.unpack(fields, raw[58:])
    return decoded


def depth_of(model, rgb: np.ndarray) -> np.ndarray:
    return next(sd.depth_stream(model, [rgb], batch_size=1, input_size=SIZE, fov_mask=None)).depth_mm


class RawClient:
    """A plain-socket OpenIGTLink client that keeps every reply with its arrival time (pyigtl's client keeps only
    the latest message per device) and can send arbitrary bytes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.replies: list[tuple[float, object]] = []
        self.closed_by_server = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _recv(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def _read(self) -> None:
        while (header := self._recv(58)) is not None:
            fields = pyigtl.MessageBase.parse_header(header)
            body = self._recv(fields["body_size"])
            if body is None:
                break
            message = pyigtl.MessageBase.create_message(fields["message_type"])
            if message is not None:  # types pyigtl cannot read are skipped
                message.unpack(fields, body)
                self.replies.append((time.perf_counter(), message))
        self.closed_by_server.set()

    def send(self, data) -> None:
        self.sock.sendall(data.pack() if hasattr(data, "pack") else data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(WAIT)


class SlowModel:
    """The tiny model behind a fixed delay per frame: inference much slower than a 25 frames/s source."""

    def __init__(self, model, delay: float):
        self.model, self.delay = model, delay
        self.output_kind, self.depth_unit, self.device = model.output_kind, model.depth_unit, model.device

    def iter_batches(self, frames, input_size=None, batch_size=None):
        for batch in self.model.iter_batches(frames, input_size, batch_size):
            time.sleep(self.delay)
            yield batch


class HeldBackModel:
    """The tiny model with a GPU stream's order of events: a result comes out only after the next frame has been
    taken (its upload overlaps the previous inference), or when the input ends."""

    def __init__(self, model):
        self.model, self.output_kind, self.depth_unit = model, model.output_kind, model.depth_unit
        self.device = type("Device", (), {"type": "cuda"})()

    def iter_batches(self, frames, input_size=None, batch_size=None):
        held = None
        for batch in self.model.iter_batches(frames, input_size, batch_size):
            if held is not None:
                yield held
            held = batch
        if held is not None:
            yield held


def test_results_held_back_by_a_gpu_stream_come_out_without_the_next_frame(model, one_torch_thread):
    """Catches: a reply waiting for the next frame to arrive (a GPU stream keeps its last result until then),
    and a deadlock or lost frame when frames do arrive while a result is held."""
    rgb = textured(24, 32, 9)
    with running(HeldBackModel(model)) as service:
        client = RawClient(service.address[1])
        try:
            client.send(pyigtl.ImageMessage(rgb[None], timestamp=1.0, device_name="Video"))
            assert wait_until(lambda: len(client.replies) == 1, timeout=3.0), "reply held until the next frame"
            for i in range(20):  # a burst: frames while results are held
                client.send(pyigtl.ImageMessage(rgb[None], timestamp=2.0 + i, device_name="Video"))
            assert wait_until(lambda: service.stats().frames_out + service.stats().dropped == 21)
            assert wait_until(lambda: client.replies[-1][1].timestamp == 21.0), "the last frame was not answered"
        finally:
            client.close()


def test_reply_has_depth_timestamp_and_geometry_of_its_frame(model, one_torch_thread):
    """Catches: a reply under another device name, a depth map transposed or not float32, the timestamp
    re-stamped or rounded, the IJK->RAS matrix or coordinate system lost, depth differing from depth_stream on
    the same frame, grey frames or a change of frame size breaking the stream."""
    rgb, grey = textured(40, 56, 1), textured(30, 44, 2)[..., 1]
    ijk_to_ras = np.array([[0.3, 0, 0, -12.5], [0, -0.3, 0, 40.25], [0, 0, 1.5, 7], [0, 0, 0, 1]])
    sent = [pyigtl.ImageMessage(rgb[None], ijk_to_world_matrix=ijk_to_ras, world_coordinate_system="ras",
                                timestamp=1733389211.123456789, device_name="Video"),
            pyigtl.ImageMessage(grey[None], timestamp=1733389212.987654321, device_name="Grey")]
    with running(model) as service, pyigtl_client(service) as client:
        replies = []
        for message in sent:
            client.send_message(message, wait=False)
            replies.append(client.wait_for_message(message.device_name + "_depth", timeout=WAIT))
    for message, image, reply in zip(sent, (rgb, np.repeat(grey[..., None], 3, axis=2)), replies):
        assert reply is not None, f"no reply to {message.device_name}"
        expected = as_received(message)
        assert reply.image.shape == (1, *image.shape[:2]) and reply.image.dtype == np.float32
        assert reply.timestamp == expected.timestamp
        np.testing.assert_array_equal(reply.ijk_to_world_matrix, expected.ijk_to_world_matrix)
        assert reply.world_coordinate_system == expected.world_coordinate_system
        np.testing.assert_allclose(reply.image[0], depth_of(model, image), rtol=1e-6, equal_nan=True)
    assert replies[0].world_coordinate_system == "ras"


def test_calibrated_service_replies_with_depth_corrected_to_the_lens(one_torch_thread):
    """Catches: the service's --intrinsics used for points only, so a wide-angle scope's depth (of a model with a
    reference lens, like the default model) goes out uncorrected; the calibration read for another frame size."""
    import dataclasses

    lensed = tiny_model(4)
    lensed.config = dataclasses.replace(lensed.config, reference_fov_deg=100.0)
    rgb = textured(40, 56, 3)
    calib = sd.Intrinsics.from_fov(56, 40, 150.0)
    with running(lensed, intrinsics=f"{calib.fx},{calib.fy},{calib.cx},{calib.cy}") as service, \
            pyigtl_client(service) as client:
        client.send_message(pyigtl.ImageMessage(rgb[None], device_name="Video"), wait=False)
        reply = client.wait_for_message("Video_depth", timeout=WAIT)
    assert reply is not None
    expected = next(sd.depth_stream(lensed, [rgb], batch_size=1, input_size=SIZE, fov_mask=None,
                                    intrinsics=calib)).depth_mm
    np.testing.assert_allclose(reply.image[0], expected, rtol=1e-5, equal_nan=True)
    assert not np.allclose(expected, depth_of(lensed, rgb), rtol=1e-3, equal_nan=True)


def test_frames_faster_than_inference_are_dropped_not_queued(model, one_torch_thread):
    """Catches: frames queued behind a slow model (latency growing with time), drops not counted, counters
    that do not add up, replies out of order or for frames never sent."""
    delay, fps, count = 0.15, 25.0, 50
    frame = textured(40, 56, 3)
    sent: dict[float, float] = {}  # timestamp -> time sent
    with running(SlowModel(model, delay)) as service:
        client = RawClient(service.address[1])
        try:
            start = time.perf_counter()
            for i in range(count):
                time.sleep(max(0.0, start + i / fps - time.perf_counter()))
                message = pyigtl.ImageMessage(frame[None], timestamp=1000.0 + i, device_name="Video")
                client.send(message)
                sent[as_received(message).timestamp] = time.perf_counter()
            last_sent = time.perf_counter()
            assert wait_until(lambda: service.stats().frames_in == count
                              and sum(service.stats().as_dict()[k] for k in ("frames_out", "dropped", "lost"))
                              == count)
            stats = service.stats(window=60)
            assert wait_until(lambda: len(client.replies) == stats.frames_out)
        finally:
            client.close()
    assert stats.dropped >= count // 2 and stats.frames_out >= 4 and stats.lost == 0, stats
    stamps = [reply.timestamp for _, reply in client.replies]
    assert stamps == sorted(stamps) and set(stamps) <= set(sent)
    latencies = [arrived - sent[reply.timestamp] for arrived, reply in client.replies]
    # answered as they come: at most one frame waits while another is inferred (queued, the last of 50 frames
    # sent over 2 s would wait ~5 s behind the others)
    assert max(latencies) < 4 * delay + 0.4, latencies
    assert sum(arrived > last_sent for arrived, _ in client.replies) <= 3
    assert stats.latency_p95_ms < 1000 * (4 * delay + 0.4)


def test_bad_messages_are_skipped_and_logged_once(model, caplog, one_torch_thread):
    """Catches: a malformed or unsupported message ending the connection or the service, the log flooded by
    a repeating bad message, other message types answered or counted as bad, a stream that cannot be parsed
    further keeping its connection."""
    caplog.set_level(logging.INFO, logger="SurgicalDepthLib.live")
    rgb = textured(24, 32, 4)
    good = pyigtl.ImageMessage(rgb[None], timestamp=5.0, device_name="Video").pack()
    truncated = bytearray(good[:58 + 40])
    truncated[42:50] = struct.pack(">Q", 40)  # a consistent header whose IMAGE body ends inside the image header
    bad = {"dtype": pyigtl.ImageMessage(rgb[None].astype(np.float32), device_name="Bad"),
           "shape": pyigtl.ImageMessage(np.stack([rgb[..., 0]] * 2), device_name="Bad"),
           "components": pyigtl.ImageMessage(rgb[None, :, :, :2].copy(), device_name="Bad"),
           # a strip: read at its aspect ratio it would hold the service for tens of seconds
           "aspect": pyigtl.ImageMessage(textured(10, 600, 1)[None], device_name="Bad")}
    with running(model) as service:
        client = RawClient(service.address[1])
        try:
            for _ in range(3):
                client.send(pyigtl.StringMessage("hello", device_name="Text"))
                for message in bad.values():
                    client.send(message)
                client.send(bytes(truncated))
            client.send(good)
            assert wait_until(lambda: len(client.replies) == 1), "no reply after the bad messages"
            assert client.replies[0][1].device_name == "Video_depth"
            stats = service.stats()
            assert (stats.bad, stats.ignored, stats.frames_in) == (15, 3, 1)
            # garbage where a header should be: this connection closes, the service goes on
            client.send(b"\x07" * 58)
            assert client.closed_by_server.wait(WAIT)
        finally:
            client.close()
        other = RawClient(service.address[1])
        try:
            other.send(good)
            assert wait_until(lambda: len(other.replies) == 1)
        finally:
            other.close()
    text = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    for reason in ("expected uint8", "2 slices", "2 components", "malformed IMAGE", "'Text'", "600x10 pixels",
                   "not an OpenIGTLink header"):
        assert sum(reason in line for line in text) == 1, (reason, text)


def test_a_device_name_that_is_not_utf8_is_answered(model, one_torch_thread):
    """Catches: a device name with a byte that is no UTF-8 (b"Vid\\xe9o", Latin-1) read as a broken stream: the
    connection was closed although the message's framing is intact."""
    message = bytearray(pyigtl.ImageMessage(textured(24, 32, 4)[None], timestamp=5.0, device_name="Video").pack())
    message[14:34] = b"Vid\xe9o".ljust(20, b"\0")  # header: version 2, type 12, device name 20 bytes
    with running(model) as service:
        client = RawClient(service.address[1])
        try:
            client.send(bytes(message))
            assert wait_until(lambda: len(client.replies) == 1), "no reply"
            assert client.replies[0][1].device_name == "Vido_depth"
            assert not client.closed_by_server.is_set()
        finally:
            client.close()


def test_clients_that_leave_do_not_stop_the_server(model, one_torch_thread):
    """Catches: a client that disconnects (before its reply, or in the middle of a message) stopping the
    service or blocking the next clients, replies sent to the wrong client."""
    rgb = textured(24, 32, 5)
    with running(model) as service:
        gone = RawClient(service.address[1])
        gone.send(pyigtl.ImageMessage(rgb[None], device_name="Gone"))
        gone.close()
        cut = RawClient(service.address[1])
        cut.send(pyigtl.ImageMessage(rgb[None], device_name="Cut").pack()[:500])
        cut.close()
        assert wait_until(lambda: service.stats().clients == 0)
        with pyigtl_client(service) as first, pyigtl_client(service) as second:
            first.send_message(pyigtl.ImageMessage(rgb[None], device_name="First"), wait=False)
            second.send_message(pyigtl.ImageMessage(rgb[None], device_name="Second"), wait=False)
            assert first.wait_for_message("First_depth", timeout=WAIT) is not None
            assert second.wait_for_message("Second_depth", timeout=WAIT) is not None
            assert first.wait_for_message("Second_depth", timeout=0.2) is None
            assert second.wait_for_message("First_depth", timeout=0.2) is None
        stats = service.stats()  # final: the replies leave in order, so the one to "Gone" was tried before
    assert stats.bad == 1 and stats.frames_out >= 2  # "Cut" is bad; "Gone" is lost (or sent before it was seen)
    assert stats.frames_in == stats.frames_out + stats.lost + stats.dropped


def test_points_are_the_depth_on_a_pixel_grid_within_budget(model, monkeypatch, one_torch_thread):
    """Catches: more points than the budget, points not at the depth of their pixel (wrong intrinsics, grid
    or row order), colours from other pixels, a POLYDATA with another timestamp than its depth image."""
    monkeypatch.setitem(pyigtl.messages.message_type_to_class_constructor, "POLYDATA", PointCloudMessage)
    rgb, budget, (fx, fy, cx, cy) = textured(40, 56, 6), 100, (50.0, 48.0, 27.0, 20.5)
    with running(model, points=True, point_budget=budget, intrinsics=f"{fx},{fy},{cx},{cy}") as service, \
            pyigtl_client(service) as client:
        client.send_message(pyigtl.ImageMessage(rgb[None], timestamp=77.5, device_name="Video"), wait=False)
        depth = client.wait_for_message("Video_depth", timeout=WAIT)
        cloud = client.wait_for_message("Video_points", timeout=WAIT)
    assert depth is not None and cloud is not None and cloud.timestamp == depth.timestamp
    grid = decimation_grid(40, 56, budget) & np.isfinite(depth.image[0])
    v, u = np.nonzero(grid)
    z = depth.image[0][grid]
    assert 0 < len(cloud.points) == grid.sum() <= budget
    np.testing.assert_allclose(cloud.points, np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], 1), rtol=1e-5)
    np.testing.assert_allclose(cloud.attributes["Depth"][:, 0], z, rtol=1e-6)
    np.testing.assert_allclose(cloud.attributes["RGB"], rgb[grid] / 255, atol=1e-6)
    np.testing.assert_array_equal(cloud.vertices.reshape(-1, 2), np.stack([np.ones_like(v), np.arange(len(v))], 1))


def scope_frame(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame with a circular field of view (cut by the top and bottom edges) in a black, slightly noisy border,
    and that field of view (bool ``[h, w]``); tissue inside never darker than 45."""
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.53 * h) ** 2
    frame = (45 + textured(h, w, seed) * (210 / 255)).astype(np.uint8)
    frame[~inside] = np.random.default_rng(seed).integers(0, 9, (int((~inside).sum()), 3))
    return frame, inside


@pytest.mark.parametrize("fov_mask", ["auto", None])
def test_field_of_view_from_the_first_frame_masks_depth_and_points(model, monkeypatch, fov_mask, one_torch_thread):
    """Catches: the live service ignoring the scope's border (depth and points on the black frame), waiting for
    more frames before answering the first, fov_mask=None still masking."""
    monkeypatch.setitem(pyigtl.messages.message_type_to_class_constructor, "POLYDATA", PointCloudMessage)
    (h, w), (fx, fy, cx, cy) = (96, 128), (80.0, 80.0, 63.5, 47.5)
    rgb, inside = scope_frame(h, w, 10)
    with running(model, fov_mask=fov_mask, points=True, point_budget=h * w, intrinsics=f"{fx},{fy},{cx},{cy}"
                 ) as service, pyigtl_client(service) as client:
        client.send_message(pyigtl.ImageMessage(rgb[None], timestamp=3.0, device_name="Scope"), wait=False)
        depth = client.wait_for_message("Scope_depth", timeout=WAIT)
        cloud = client.wait_for_message("Scope_points", timeout=WAIT)
    assert depth is not None and cloud is not None, "no reply to a single frame"
    valid = np.isfinite(depth.image[0])
    assert valid[inside].mean() >= 0.95
    u = np.round(cloud.points[:, 0] / cloud.points[:, 2] * fx + cx).astype(int)
    v = np.round(cloud.points[:, 1] / cloud.points[:, 2] * fy + cy).astype(int)
    assert len(cloud.points) == valid.sum()
    if fov_mask == "auto":
        assert (~valid[~inside]).mean() >= 0.95
        assert inside[v, u].all(), "points outside the field of view"
    else:
        assert valid.all()


def test_stream_cli_defaults_are_the_services():
    """Catches: ``stream --point-budget``'s or ``--max-clients``'s default (written out in the CLI, which does not
    import pyigtl) drifting from ``LIVE_POINT_BUDGET`` or ``MAX_CLIENTS``, what ``DepthService`` uses by default."""
    import argparse

    from SurgicalDepthLib._live_replies import LIVE_POINT_BUDGET
    from SurgicalDepthLib.cli import stream
    from SurgicalDepthLib.live import MAX_CLIENTS

    parser = argparse.ArgumentParser()
    stream.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stream"])
    assert (args.point_budget, args.max_clients) == (LIVE_POINT_BUDGET, MAX_CLIENTS)


def test_fov_mask_is_checked():
    """Catches: a misspelt fov_mask accepted (and the mask silently off)."""
    with pytest.raises(ValueError, match="fov_mask"):
        DepthService(None, fov_mask="atuo")
    with pytest.raises(ValueError, match="fov_mask"):
        DepthService(None, fov_mask=np.ones(5, bool))


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (40, 56), (1080, 1920), (3, 2000)])
@pytest.mark.parametrize("budget", [1, 10, 999, 20000])
def test_decimation_grid_is_regular_and_within_budget(shape, budget):
    """Catches: a cloud larger than its budget, a grid much sparser than needed, a non-deterministic choice."""
    mask = decimation_grid(*shape, budget)
    assert mask.shape == shape and 1 <= mask.sum() <= budget and (decimation_grid(*shape, budget) == mask).all()
    if budget >= mask.size:
        assert mask.all()
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    assert mask.sum() == len(rows) * len(cols) and len(set(np.diff(rows))) <= 1 and len(set(np.diff(cols))) <= 1
    assert abs(rows[0] - (shape[0] - 1 - rows[-1])) <= 1 and abs(cols[0] - (shape[1] - 1 - cols[-1])) <= 1  # centred
    step = max(np.diff(rows).max(initial=1), np.diff(cols).max(initial=1))
    if step > 1:  # one step finer would exceed the budget
        assert ((shape[0] - 1) // (step - 1) + 1) * ((shape[1] - 1) // (step - 1) + 1) > budget


def test_client_mode_takes_frames_from_a_server_and_answers_it(model, one_torch_thread):
    """Catches: --connect not reading what a PLUS-like server broadcasts, replies not sent back over the same
    connection, no reconnection after the server restarts."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    rgb = textured(24, 32, 7)

    def plus_server(port: int):
        server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        for sig, handler in handlers.items():  # pyigtl installs its own; keep pytest's
            signal.signal(sig, handler)
        return server

    server = plus_server(0)
    port = server.server_address[1]
    service = DepthService(model, connect=("127.0.0.1", port), input_size=SIZE, status_interval=None,
                           retry_interval=0.1)
    try:
        service.start()
        server.send_message(pyigtl.ImageMessage(rgb[None], timestamp=9.25, device_name="Image"), wait=False)
        reply = server.wait_for_message("Image_depth", timeout=WAIT)
        assert reply is not None and reply.timestamp == 9.25 and reply.image.shape == (1, 24, 32)
        server.stop()
        server = plus_server(port)
        server.send_message(pyigtl.ImageMessage(rgb[None], timestamp=10.5, device_name="Image"), wait=False)
        assert server.wait_for_message("Image_depth", timeout=WAIT) is not None, "no reply after reconnecting"
    finally:
        service.stop()
        server.stop()


def test_cli_serves_and_exits_cleanly_on_sigterm(tmp_path):
    """Catches: the stream command missing from the CLI, no reply from the command-line server, SIGTERM ending
    it with a traceback or a non-zero exit code, no status events in --progress jsonl, and no event giving the
    address (with --port 0 a program had to read the port from stderr's log line)."""
    from SurgicalDepthLib.checkpoints import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", tiny_model(5))
    proc = subprocess.Popen([sys.executable, "-m", "SurgicalDepthLib.cli", "stream", "--port", "0", "--model",
                             str(checkpoint), "--device", "cpu", "--input-size", str(SIZE), "--progress", "jsonl",
                             "--status-interval", "0.3", "--fov-mask", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: dict[str, queue.Queue] = {"out": queue.Queue(), "err": queue.Queue()}
    for name, pipe in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=lambda p=pipe, q=lines[name]: [q.put(line) for line in p], daemon=True).start()
    seen: dict[str, list[str]] = {"out": [], "err": []}

    def wait_line(name: str, pattern: str, timeout: float = 60.0) -> re.Match | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen[name].append(lines[name].get(timeout=0.1))
            except queue.Empty:
                if proc.poll() is not None:
                    return None
                continue
            if match := re.search(pattern, seen[name][-1]):
                return match
        return None

    try:
        match = wait_line("out", r'"host": "127\.0\.0\.1", "port": (\d+), "mode": "listen"')
        assert match, "".join(seen["out"]) + "".join(seen["err"])
        assert wait_line("err", rf"listening on 127\.0\.0\.1:{match.group(1)}"), "".join(seen["err"])
        client = RawClient(int(match.group(1)))
        try:
            client.send(pyigtl.ImageMessage(textured(24, 32, 8)[None], device_name="Video"))
            assert wait_until(lambda: len(client.replies) == 1), "".join(seen["err"])
        finally:
            client.close()
        assert wait_line("out", r'"step": 1'), "".join(seen["out"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    wait_line("out", r'"event": "done"', timeout=1.0)
    wait_line("err", r"$^", timeout=0.5)  # drain
    assert "Traceback" not in "".join(seen["err"]), "".join(seen["err"])
    events = [json.loads(line) for line in seen["out"]]
    assert events[-1]["event"] == "done" and events[-1]["frames_out"] == 1, events[-1]
    assert all(e["stage"] == "stream" and e["total"] is None for e in events if e["event"] == "progress")


@pytest.mark.parametrize("content", [b"hello\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff"])
def test_cli_refuses_an_unreadable_calibration_file_at_startup(content, tmp_path):
    """Catches: ``stream --intrinsics bad.txt`` starting the service anyway and only logging an error (depth not
    corrected) when the first frame arrived, instead of exit code 2 at startup with one line naming the file."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    run = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", "stream", "--port", "0", "--intrinsics",
                          str(bad), "--progress", "none"], capture_output=True, text=True, timeout=WAIT * 4)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("surgical-depth stream: error: --intrinsics: ") and str(bad) in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_calibration_file_without_its_size_is_checked_per_frame_size(tmp_path):
    """Catches: the startup check refusing a good calibration file that does not state its image size (its pixels
    are the frames' and can only be read at their size)."""
    from SurgicalDepthLib.cli.stream import _check_calibration_file

    for name, text in [("k.txt", "500 500 320 240\n"), ("k.json", '{"fx": 500, "fy": 500, "cx": 320, "cy": 240}')]:
        (tmp_path / name).write_text(text)
        _check_calibration_file(str(tmp_path / name))


# -- hardening: memory, slow peers, shared device names, long names, dead peers, the first frames' view -------------
def _header(size: int, device: str = "Video") -> bytes:
    """An OpenIGTLink v1 IMAGE header announcing a body of ``size`` bytes (CRC 0: that of a body of zeros)."""
    return struct.pack(">H12s20s8sQQ", 1, b"IMAGE", device.encode(), bytes(8), size, 0)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a real TCP connection on 127.0.0.1 (``socket.socketpair`` is a Unix socket: no TCP options)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname()[:2], timeout=WAIT)
        ours, _ = listener.accept()
    return ours, theirs


def test_an_announced_body_size_allocates_only_what_arrives():
    """Catches a body buffer allocated (and zero-filled) at the size a header announces before any byte of it came:
    four connections announcing 256 MB each took 1 GB of memory while sending nothing."""
    import tracemalloc

    from SurgicalDepthLib._igtl import Connection, StreamBroken

    ours, theirs = _tcp_pair()
    conn = Connection(ours, "test", io_timeout=2.0)
    theirs.sendall(_header(200 << 20) + b"\0" * 1000)
    theirs.close()
    tracemalloc.start()
    try:
        with pytest.raises(StreamBroken, match="closed after 1000 of"):
            conn.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        conn.close()
    assert peak < 8 << 20, peak


def test_a_body_that_trickles_in_is_dropped(monkeypatch):
    """Catches a message whose bytes come just often enough never to stall (one every 0.2 s) holding its
    connection and buffer for hours: a message must keep up a minimum rate once it has started."""
    from SurgicalDepthLib import _igtl

    monkeypatch.setattr(_igtl, "MIN_BODY_RATE", 4096)  # 1 s for this body: the test stays short
    ours, theirs = _tcp_pair()
    conn = _igtl.Connection(ours, "test", io_timeout=0.5)
    stop = threading.Event()

    def trickle():
        theirs.sendall(_header(2048))
        while not stop.wait(0.2):
            with contextlib.suppress(OSError):
                theirs.sendall(b"\0")

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    started = time.monotonic()
    try:
        with pytest.raises(_igtl.StreamBroken, match="slower than"):
            conn.read()
        assert time.monotonic() - started < 5.0
    finally:
        stop.set()
        sender.join(WAIT)
        conn.close()
        theirs.close()


def test_two_clients_with_the_same_device_name_are_both_answered(model, one_torch_thread):
    """Catches frames keyed by device name alone: two clients that both send "Image" (Slicer's and pyigtl's
    default) replaced each other's waiting frame, so one of them got no reply while the model was busy."""
    rgb = textured(24, 32, 6)
    with running(SlowModel(model, 0.5)) as service:
        busy, first, second = (RawClient(service.address[1]) for _ in range(3))
        try:
            busy.send(pyigtl.ImageMessage(rgb[None], device_name="Busy"))
            assert wait_until(lambda: service.stats().frames_in == 1)  # the model is now busy with it
            first.send(pyigtl.ImageMessage(rgb[None], device_name="Image"))
            second.send(pyigtl.ImageMessage(rgb[None], device_name="Image"))
            assert wait_until(lambda: len(first.replies) == 1 and len(second.replies) == 1), \
                (len(first.replies), len(second.replies))
            assert service.stats().dropped == 0
        finally:
            for client in (busy, first, second):
                client.close()


def test_long_device_names_get_reply_names_of_their_own():
    """Catches reply names cut at OpenIGTLink's 20 bytes so that two devices sharing their start
    (``LeftEndoscopeCam1`` / ``LeftEndoscopeCam2``) were both answered as ``LeftEndoscopeC_depth``: one Slicer
    node received both cameras' depth. Short names keep the contract's ``X_depth``."""
    from SurgicalDepthLib._igtl import DEVICE_NAME_BYTES, reply_name

    assert reply_name("Video", "_depth") == "Video_depth"
    assert reply_name("Image_Refere", "_depth") == "Image_Refere_depth"  # 18 bytes: as it is
    names = {reply_name(f"LeftEndoscopeCam{i}", suffix) for i in (1, 2) for suffix in ("_depth", "_points")}
    assert len(names) == 4 and all(len(n.encode()) <= DEVICE_NAME_BYTES for n in names), names
    assert reply_name("LeftEndoscopeCam1", "_depth") == reply_name("LeftEndoscopeCam1", "_depth")
    assert reply_name("LeftEndoscopeCam1", "_depth").startswith("LeftEndos")


def test_connections_notice_a_peer_that_is_gone():
    """Catches connections without TCP keepalive: in client mode (``--connect``) a PLUS server whose host
    rebooted or whose cable was pulled left the service waiting on that connection for ever, never reconnecting."""
    from SurgicalDepthLib._igtl import KEEPALIVE, Connection

    ours, theirs = _tcp_pair()
    conn = Connection(ours, "test", io_timeout=1.0)
    try:
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE[0]
            assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE[2]
    finally:
        conn.close()
        theirs.close()


def test_auto_field_of_view_is_not_fixed_by_a_black_first_frame(model, one_torch_thread):
    """Catches the field of view detected from a source's first frame(s) only and kept for good: a grabber that
    starts on a black screen (no border found; longer than the frames the search looks at) left every later frame
    unmasked, depth on the black border."""
    from SurgicalDepthLib.fov import FOV_FRAMES

    h, w = 96, 128
    rgb, inside = scope_frame(h, w, 11)
    black = FOV_FRAMES + 1
    with running(model, fov_mask="auto") as service, pyigtl_client(service) as client:
        for i in range(black):
            client.send_message(pyigtl.ImageMessage(np.zeros((1, h, w, 3), np.uint8), timestamp=float(i),
                                                    device_name="Scope"), wait=False)
            assert wait_until(lambda: service.stats().frames_out == i + 1)
        for i in range(3):
            client.send_message(pyigtl.ImageMessage(rgb[None], timestamp=float(black + i), device_name="Scope"),
                                wait=False)
            assert wait_until(lambda: service.stats().frames_out == black + i + 1)
        depth = client.wait_for_message("Scope_depth", timeout=WAIT)
    valid = np.isfinite(depth.image[0])
    assert (~valid[~inside]).mean() >= 0.95 and valid[inside].mean() >= 0.95


def test_a_client_that_does_not_read_holds_up_no_other_client():
    """Catches replies sent in one order shared by all connections: a client that stops reading (its send blocks
    until the I/O timeout) held every other client's replies for seconds. Another connection's reply leaves at
    once; the stuck client's next reply is dropped, not queued."""
    from SurgicalDepthLib._igtl import Connection
    from SurgicalDepthLib._live_replies import ReceivedFrame, ReplySender
    from SurgicalDepthLib._live_stats import ServiceCounters

    def frame(conn, h, w):
        rgb = np.zeros((h, w, 3), np.uint8)
        out = type("Out", (), {"depth_mm": np.ones((h, w), np.float32)})()
        return out, ReceivedFrame(rgb, "Video", bytes(8), 1, bytes(48), time.perf_counter(), conn)

    stuck_ours, stuck_theirs = _tcp_pair()
    stuck_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stuck_theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fine_ours, fine_theirs = _tcp_pair()
    stuck, fine = Connection(stuck_ours, "stuck", io_timeout=4.0), Connection(fine_ours, "fine", io_timeout=4.0)
    counters, stop = ServiceCounters(), threading.Event()
    sender = ReplySender(3, counters, stop, lambda *args: None, points=False, point_budget=1, intrinsics=None)
    try:
        sender.submit(*frame(stuck, 480, 640))  # 1.2 MB that nobody reads: blocks in sendall
        time.sleep(0.3)
        sender.submit(*frame(stuck, 480, 640))  # its second reply: the thread it would hold stays free
        sender.submit(*frame(stuck, 480, 640))  # over its share: dropped
        started = time.monotonic()
        sender.submit(*frame(fine, 24, 32))
        fine_theirs.settimeout(3.0)
        assert fine_theirs.recv(58) and time.monotonic() - started < 1.5
        assert counters.snapshot(5.0, 2, 1.0).dropped >= 1
    finally:
        stop.set()
        sender.wake()
        for sock in (stuck, fine):
            sock.close()
        sender.shutdown()
        stuck_theirs.close()
        fine_theirs.close()


def test_a_reply_to_a_slow_but_steady_client_is_not_cut_off(monkeypatch):
    """Catches replies sent with ``sendall`` under the I/O timeout, which bounds the whole message: a client on a
    slow link (a 4K depth reply of 33 MB read at 3 MB/s) was disconnected after 5 s of steady sending, although the
    service gives an incoming message of that size 37 s. A reply may stall ``io_timeout`` and must keep up
    ``MIN_BODY_RATE`` on the whole, as a message read must (an incoming one of the size of this reply: 8 s)."""
    from SurgicalDepthLib import _igtl

    monkeypatch.setattr(_igtl, "MIN_BODY_RATE", 256 << 10)  # scaled down with the message: the test stays short
    header, depth = b"\1" * 58, np.zeros(1 << 19, "<f4")  # a 2 MiB reply
    size, rate = len(header) + depth.nbytes, 2e6  # read at 2 MB/s: ~1 s, longer than the I/O timeout
    ours, theirs = _tcp_pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)  # the kernel's buffers hold little of it
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    conn = _igtl.Connection(ours, "slow", io_timeout=0.3)
    got = []

    def read_steadily():
        started, n = time.monotonic(), 0
        while n < size and (chunk := theirs.recv(1 << 16)):
            n += len(chunk)
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
        got.append(n)

    reader = threading.Thread(target=read_steadily, daemon=True)
    reader.start()
    try:
        assert conn.send([header, memoryview(depth).cast("B")]), "connection closed"
        reader.join(WAIT)
        assert got == [size] and not conn.closed
    finally:
        conn.close()
        theirs.close()


def _v2_image(message, metadata: list[tuple[bytes, int, bytes]]) -> bytes:
    """``message`` as the OpenIGTLink C++ library packs a header-v2 (protocol v3) message: extended header,
    content, then metadata (``(key, IANA encoding, value bytes)``, stored as given: the library decodes nothing)."""
    from pyigtl.messages import CRC64

    content = message._pack_content()
    meta_header = struct.pack(">H", len(metadata)) + b"".join(
        struct.pack(">HHI", len(key), encoding, len(value)) for key, encoding, value in metadata)
    body = (struct.pack(">HHII", 12, len(meta_header), sum(len(k) + len(v) for k, _, v in metadata), 0) + content
            + meta_header + b"".join(key + value for key, _, value in metadata))
    raw = message.pack()
    return struct.pack(">H", 2) + raw[2:42] + struct.pack(">QQ", len(body), CRC64(body)) + body


def test_images_with_metadata_pyigtl_cannot_decode_are_answered(model, one_torch_thread):
    """Catches the metadata of a header-v2 IMAGE decoded (by pyigtl) although the service needs none of it: a
    frame whose metadata has a value in ISO-8859-1 (IANA 4), or non-ASCII bytes tagged US-ASCII (PLUS tags every
    value so: a frame field "µm"), was skipped as malformed, every frame of that source, while the OpenIGTLink
    library, and so Slicer, reads it. The content is found by the sizes in the extended header."""
    rgb = textured(40, 56, 7)
    ijk_to_ras = np.array([[0, 0.4, 0, -3], [-0.4, 0, 0, 12], [0, 0, 2, 5], [0, 0, 0, 1]])
    image = pyigtl.ImageMessage(rgb[None], ijk_to_world_matrix=ijk_to_ras, timestamp=7.25, device_name="Video")
    sent = [_v2_image(image, [(b"Unit", 3, "µm".encode())]),
            _v2_image(image, [(b"Name", 4, "Müller".encode("latin-1")), (b"Probe", 3, b"L14")])]
    with running(model, fov_mask=None) as service:
        client = RawClient(service.address[1])
        try:
            for i, raw in enumerate(sent, 1):  # one at a time: a frame sent while the model is busy may be dropped
                client.send(raw)
                assert wait_until(lambda: len(client.replies) == i), service.stats()
        finally:
            client.close()
    expected = as_received(image)
    for _, reply in client.replies:
        assert reply.timestamp == expected.timestamp and reply.image.shape == (1, 40, 56)
        np.testing.assert_array_equal(reply.ijk_to_world_matrix, expected.ijk_to_world_matrix)
        np.testing.assert_allclose(reply.image[0], depth_of(model, rgb), rtol=1e-6, equal_nan=True)


def test_a_connection_refusing_tcp_options_does_not_end_the_accept_loop(model, monkeypatch, one_torch_thread):
    """Catches the TCP options of a new connection set unguarded: macOS refuses them (EINVAL, the socket shut down)
    when the peer closed at once (a port check, a connector toggled off and on); the OSError ended the thread that
    accepts connections, so that no later client was ever served (in client mode, nothing reconnected)."""
    import errno

    from SurgicalDepthLib import _igtl

    keep_alive, refused = _igtl._keep_alive, []

    def refuse_once(sock):
        if not refused:
            refused.append(sock)
            raise OSError(errno.EINVAL, "Invalid argument")  # as macOS's setsockopt on such a socket
        keep_alive(sock)

    monkeypatch.setattr(_igtl, "_keep_alive", refuse_once)
    rgb = textured(24, 32, 5)
    with running(model) as service:
        gone = RawClient(service.address[1])
        assert wait_until(lambda: refused)
        gone.close()
        client = RawClient(service.address[1])
        try:
            client.send(pyigtl.ImageMessage(rgb[None], device_name="Video"))
            assert wait_until(lambda: len(client.replies) == 1), "the service accepts no more connections"
        finally:
            client.close()


# -- the receiving side against the OpenIGTLink library's rules: CRC, type names, bounded per-source/per-size state --
def test_an_image_corrupted_on_the_way_is_not_answered(model, caplog, one_torch_thread):
    """Catches the body's CRC-64 (header field CRC, ECMA-182 over the body) never checked: an IMAGE with one pixel
    byte changed after it was packed was predicted on and answered with depth, where the OpenIGTLink library
    (``MessageBase::UnpackBody``, which Slicer's OpenIGTLinkIF runs with its CRC check on) drops it. Checked when
    the frame's turn comes: counted bad, not in; the connection is kept and the next intact frame answered."""
    caplog.set_level(logging.INFO, logger="SurgicalDepthLib.live")
    rgb = textured(24, 32, 8)
    corrupted = bytearray(pyigtl.ImageMessage(rgb[None], timestamp=1.0, device_name="Video").pack())
    corrupted[58 + 72 + 100] ^= 0x10  # one pixel byte (header 58 bytes, IMAGE header 72), the header's CRC kept
    with running(model, fov_mask=None) as service:
        client = RawClient(service.address[1])
        try:
            for i in range(2):  # the second: still skipped, logged once
                client.send(bytes(corrupted))
                assert wait_until(lambda: service.stats().bad == i + 1), service.stats()
            client.send(pyigtl.ImageMessage(rgb[None], timestamp=2.0, device_name="Video"))
            assert wait_until(lambda: len(client.replies) == 1)
            time.sleep(0.2)
            stats = service.stats()
            assert not client.closed_by_server.is_set()
        finally:
            client.close()
    assert [reply.timestamp for _, reply in client.replies] == [2.0]
    assert (stats.frames_in, stats.frames_out, stats.bad, stats.lost) == (1, 1, 2, 0), stats
    assert sum("CRC-64" in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO) == 1


def test_message_types_are_read_up_to_their_nul_and_queries_keep_the_connection(model, one_torch_thread):
    """Catches a type field read past its terminating NUL: b"IMAGE\\0" followed by other bytes (the OpenIGTLink
    library reads the type with strncpy, up to the NUL) was taken for a stream out of sync and the connection
    closed. Also: GET_/STT_/STP_ queries (header v1, and v2 with an empty extended header) are ignored, not
    answered with depth, and do not close the connection."""
    from pyigtl.messages import CRC64

    def message(mtype: bytes, body: bytes = b"", version: int = 1) -> bytes:
        return struct.pack(">H12s20s8sQQ", version, mtype, b"Video", bytes(8), len(body), CRC64(body)) + body

    rgb = textured(24, 32, 9)
    good = pyigtl.ImageMessage(rgb[None], timestamp=3.0, device_name="Video").pack()
    queries = [message(b"GET_IMAGE"), message(b"STT_IMAGE", struct.pack(">I", 0)), message(b"STP_IMAGE"),
               message(b"GET_CAPABIL"), message(b"GET_IMAGE", struct.pack(">HHIIH", 12, 2, 0, 0, 0), version=2)]
    with running(model, fov_mask=None) as service:
        client = RawClient(service.address[1])
        try:
            client.send(b"".join(queries))
            client.send(good[:2] + b"IMAGE\0\xff\xffjunk" + good[14:])
            assert wait_until(lambda: len(client.replies) == 1), service.stats()
            stats = service.stats()
        finally:
            client.close()
    assert client.replies[0][1].device_name == "Video_depth" and client.replies[0][1].timestamp == 3.0
    assert (stats.ignored, stats.bad, stats.frames_in) == (5, 0, 1), stats


def test_point_grids_are_kept_for_a_few_frame_sizes(model, monkeypatch, one_torch_thread):
    """Catches the (decimation grid, camera) cache of the point replies growing with every frame size seen: a source
    whose frame size keeps changing (a resized capture window) made the service keep one bool [H, W] grid per size
    for good (25 sizes, 25 grids; 2 MB each at 1080p). It keeps the SIZES_KEPT sizes used last."""
    from SurgicalDepthLib import _live_replies

    monkeypatch.setattr(_live_replies, "SIZES_KEPT", 3, raising=False)  # raising: the test also runs without it
    monkeypatch.setitem(pyigtl.messages.message_type_to_class_constructor, "POLYDATA", PointCloudMessage)
    with running(model, points=True, point_budget=50, fov_mask=None, intrinsics="40,40,15.5,12") as service:
        client = RawClient(service.address[1])
        try:
            for i in range(6):  # one at a time: each size gets its reply
                client.send(pyigtl.ImageMessage(textured(24 + i, 32, i)[None], device_name="Video"))
                assert wait_until(lambda: len(client.replies) == 2 * (i + 1)), service.stats()
            grids = service._replies._grids.keys()
        finally:
            client.close()
    assert sorted(grids) == [(27, 32), (28, 32), (29, 32)]
    clouds = [reply for _, reply in client.replies if reply.device_name == "Video_points"]
    assert len(clouds) == 6 and all(0 < len(cloud.points) <= 50 for cloud in clouds)


def test_frames_under_ever_new_device_names_do_not_queue(model, one_torch_thread):
    """Catches the latest-frame mailbox keeping one frame per (connection, device) without a limit: a client sending
    each frame under a new device name had every one of them wait for the model (300 names: 297 frames queued,
    none ever dropped). At most live._WAITING_SOURCES wait; the others are dropped, and the counts add up."""
    from SurgicalDepthLib import live

    n, rgb = 150, textured(24, 32, 10)
    with running(SlowModel(model, 0.5), fov_mask=None) as service:
        client = RawClient(service.address[1])
        try:
            client.send(b"".join(pyigtl.ImageMessage(rgb[None], device_name=f"Cam{i}").pack() for i in range(n)))
            assert wait_until(lambda: service.stats().frames_in == n)
            waiting, stats = len(service._mailbox), service.stats()
        finally:
            client.close()
    limit = getattr(live, "_WAITING_SOURCES", 64)  # getattr: the test also runs on a service without the limit
    assert waiting <= limit
    assert stats.dropped >= n - limit - stats.frames_out - 2, stats


def test_connections_beyond_max_clients_are_closed_and_the_others_kept(model, caplog, one_torch_thread):
    """Catches a server without a cap on its clients: a client reconnecting in a loop (or a port scanner) got a
    thread and buffers per connection until threads or memory ran out. Beyond ``max_clients`` a connection is closed
    at once (counted as refused, logged once); those connected are still answered, and a place that frees up is
    taken by the next client."""
    rgb = textured(24, 32, 6)
    with caplog.at_level(logging.WARNING, logger="SurgicalDepthLib.live"), running(model, max_clients=2) as service:
        kept = [RawClient(service.address[1]) for _ in range(2)]
        assert wait_until(lambda: service.stats().clients == 2)
        extra = [RawClient(service.address[1]) for _ in range(3)]
        try:
            assert all(c.closed_by_server.wait(WAIT) for c in extra)
            assert not any(c.closed_by_server.is_set() for c in kept)
            stats = service.stats()
            assert stats.refused == 3 and stats.clients == 2, stats
            assert "refused 3" in stats.format()
            kept[0].send(pyigtl.ImageMessage(rgb[None], device_name="Kept"))
            assert wait_until(lambda: len(kept[0].replies) == 1)
            kept[1].close()
            assert wait_until(lambda: service.stats().clients == 1)
            late = RawClient(service.address[1])
            late.send(pyigtl.ImageMessage(rgb[None], device_name="Late"))
            assert wait_until(lambda: len(late.replies) == 1) and not late.closed_by_server.is_set()
            late.close()
        finally:
            for c in kept + extra:
                c.close()
    assert sum("max_clients" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="max_clients"):
        DepthService(model, max_clients=0)


def test_a_black_frame_is_answered_with_no_depth_and_no_points(model, monkeypatch, one_torch_thread):
    """Catches a live black screen (the scope not on yet, a camera switching over) answered with the network's
    depth of black: Slicer drew a surface for nothing. With the default "auto" field of view a blank frame's depth
    is all NaN and its cloud empty; the frames around it are answered as before. Also catches the network run on
    the black frames anyway (its answer thrown away: a GPU busy for nothing while the scope is off): two forward
    runs for the five frames, the black one between two tissue frames included."""
    monkeypatch.setitem(pyigtl.messages.message_type_to_class_constructor, "POLYDATA", PointCloudMessage)
    black, rgb = np.zeros((24, 32, 3), np.uint8), textured(24, 32, 3)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with running(model, points=True, point_budget=50, intrinsics="40,40,15.5,11.5") as service:
            client = RawClient(service.address[1])
            try:
                for i, frame in enumerate([black, black, rgb, black, rgb]):
                    client.send(pyigtl.ImageMessage(frame[None], device_name="Video"))
                    assert wait_until(lambda: len(client.replies) == 2 * (i + 1)), service.stats()
            finally:
                client.close()
    finally:
        hook.remove()
    depths = [m.image[0] for _, m in client.replies if m.device_name == "Video_depth"]
    clouds = [m for _, m in client.replies if m.device_name == "Video_points"]
    assert [np.isnan(d).all() for d in depths] == [True, True, False, True, False]
    for i in (2, 4):
        np.testing.assert_allclose(depths[i], depth_of(model, rgb), rtol=1e-6, equal_nan=True)
    assert [len(c.points) > 0 for c in clouds] == [False, False, True, False, True]
    assert len(calls) == 2


def test_a_client_whose_thread_cannot_start_does_not_keep_its_place(model, monkeypatch, one_torch_thread):
    """Catches a connection counted against ``max_clients`` for good when its thread could not start (the system
    out of threads: ``RuntimeError: can't start new thread``): with one place, every later client was refused. The
    connection is closed and its place freed; the next client is served."""
    rgb = textured(24, 32, 4)
    with running(model, max_clients=1) as service:
        spawn, failed = service._spawn, []

        def spawn_once_failing(target, name, *args):
            if name.startswith("client") and not failed:
                failed.append(name)
                raise RuntimeError("can't start new thread")
            return spawn(target, name, *args)

        monkeypatch.setattr(service, "_spawn", spawn_once_failing)
        first = RawClient(service.address[1])
        assert first.closed_by_server.wait(WAIT) and failed
        second = RawClient(service.address[1])
        try:
            second.send(pyigtl.ImageMessage(rgb[None], device_name="Video"))
            assert wait_until(lambda: len(second.replies) == 1), service.stats()
            assert service.stats().refused == 0
        finally:
            first.close()
            second.close()
