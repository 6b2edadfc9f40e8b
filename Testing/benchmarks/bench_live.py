"""Live OpenIGTLink depth service, end to end: a sender at a fixed frame rate → ``surgical-depth stream`` → replies.

The service runs as its own process (``python -m SurgicalDepthLib.cli stream --port 0 --progress jsonl``), so the
sender and receiver here do not share its interpreter. This process sends IMAGE messages over loopback at
``--fps`` (frames of the shared laparoscopy clip when present, else a synthetic texture, resized to ``--size``;
packed once, only the 8 timestamp bytes of the header change per send) and reads every reply on the same
connection. Latency = reply fully received − its frame sent, matched by the echoed timestamp: both hops, the
mailbox wait, inference, depth conversion and packing. Reported over the whole run and over its first and last
thirds (by send time) to show whether latency grows; frames in/out/dropped are the service's own counters.

A warm-up (until the first reply) is not counted. Usage:
``python Testing/benchmarks/bench_live.py [--seconds 45] [--fps 25] [--size 320x240] [--model default]
[--device cpu|cuda] [--precision auto] [--input-size N] [--points]``.
GPU target (RESULTS.md): ``--device cuda --model depth-anything-v2-small --size 1920x1080 --fps 30`` (or
``random:depth-anything-v2-small`` where the weights are not cached: same computation): ≥ 30 frames/s out, p95
≤ 100 ms.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyigtl

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "real" / "video" / "laparoscopy_endo.mp4"
HEADER = 58
STAMP = slice(34, 42)  # timestamp bytes in the OpenIGTLink header


def frames_for(size: tuple[int, int], count: int = 50) -> list[np.ndarray]:
    w, h = size
    frames = []
    if SAMPLE.is_file():
        cap = cv2.VideoCapture(str(SAMPLE))
        while len(frames) < count:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
        cap.release()
    if not frames:
        rng = np.random.default_rng(0)
        base = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w + count, h))
        frames = [np.ascontiguousarray(base[:, i:i + w]) for i in range(count)]
    return frames


def stamp_bytes(i: int) -> bytes:
    """Frame number ``i`` as the header timestamp (seconds = i, fraction 0): echoed back by the service."""
    return struct.pack(">II", i, 0)


class Receiver(threading.Thread):
    """Reads every reply; records (frame number, arrival time) of the depth images."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock, self.arrivals, self.bytes = sock, queue.Queue(), 0

    def _fill(self, view: memoryview) -> bool:
        got = 0
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:])
            except OSError:
                return False
            if n == 0:
                return False
            got += n
        return True

    def run(self) -> None:
        header, body = bytearray(HEADER), bytearray(1 << 20)
        while self._fill(memoryview(header)):
            mtype = bytes(header[2:14]).rstrip(b"\0")
            size = struct.unpack_from(">Q", header, 42)[0]
            if size > len(body):
                body = bytearray(size)
            if not self._fill(memoryview(body)[:size]):
                return
            self.bytes += HEADER + size
            if mtype == b"IMAGE":
                self.arrivals.put((struct.unpack_from(">I", header, 34)[0], time.perf_counter()))


def start_service(args: argparse.Namespace) -> tuple[subprocess.Popen, int, queue.Queue]:
    cmd = [sys.executable, "-m", "SurgicalDepthLib.cli", "stream", "--port", "0", "--model", args.model,
           "--device", args.device, "--precision", args.precision, "--progress", "jsonl", "--status-interval", "5"]
    if args.input_size:
        cmd += ["--input-size", str(args.input_size)]
    if args.points:
        cmd += ["--points"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: queue.Queue = queue.Queue()
    port: queue.Queue = queue.Queue()

    def read_err() -> None:
        for line in proc.stderr:
            if m := re.search(r"listening on [\d.]+:(\d+)", line):
                port.put(int(m.group(1)))
            if args.verbose or "Traceback" in line or "error" in line.lower():
                print("  service:", line.rstrip(), file=sys.stderr)

    def read_out() -> None:
        for line in proc.stdout:
            events.put(json.loads(line))

    threading.Thread(target=read_err, daemon=True).start()
    threading.Thread(target=read_out, daemon=True).start()
    try:
        return proc, port.get(timeout=300), events
    except queue.Empty:
        proc.kill()
        raise SystemExit("the service did not start listening within 300 s") from None


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux), to show it does not grow over the run."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    line = next((line for line in status.read_text().splitlines() if line.startswith("VmRSS:")), None)
    return int(line.split()[1]) / 1024 if line else None


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return f"{p50:.0f} / {p95:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=45.0, help="measured sending time")
    ap.add_argument("--fps", type=float, default=25.0, help="sending rate (frames/s)")
    ap.add_argument("--size", default="320x240", help="frame size WxH")
    ap.add_argument("--model", default="default", help="model source (see load_model)")
    ap.add_argument("--device", default="cpu", help="cpu|cuda|auto")
    ap.add_argument("--precision", default="auto", help="auto|fp32|fp16|bf16")
    ap.add_argument("--input-size", type=int, default=None, help="network input lower bound (default: the model's)")
    ap.add_argument("--points", action="store_true", help="also have the service send point clouds")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the service's log")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    packed = []
    for i, rgb in enumerate(frames_for((w, h))):
        packed.append(bytearray(pyigtl.ImageMessage(rgb[None], device_name="Video", timestamp=0.0).pack()))
    crc_ext = importlib.util.find_spec("crcmod._crcfunext") is not None

    proc, port, events = start_service(args)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    receiver = Receiver(sock)
    receiver.start()
    sent: dict[int, float] = {}

    def send(i: int) -> None:
        message = packed[i % len(packed)]
        message[STAMP] = stamp_bytes(i)
        sent[i] = time.perf_counter()
        sock.sendall(message)

    # warm-up: one frame at a time until the first reply (model initialisation), not counted
    warm = time.perf_counter()
    send(0)
    try:
        receiver.arrivals.get(timeout=300)
    except queue.Empty:
        proc.kill()
        raise SystemExit("no reply within 300 s") from None
    warmup_s = time.perf_counter() - warm
    time.sleep(0.5)
    rss = [rss_mb(proc.pid)]
    load = [os.getloadavg()[0]]
    first = 1
    n = int(args.seconds * args.fps)
    t0 = time.perf_counter()
    for k in range(n):
        time.sleep(max(0.0, t0 + k / args.fps - time.perf_counter()))
        send(first + k)
    send_end = time.perf_counter()
    rss.append(rss_mb(proc.pid))
    load.append(os.getloadavg()[0])
    time.sleep(3.0)  # replies still on their way
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    receiver.join(10)
    sock.close()
    done = None
    while not events.empty():
        event = events.get()
        done = event if event.get("event") == "done" else done
    arrivals = {}
    while not receiver.arrivals.empty():
        i, t = receiver.arrivals.get()
        arrivals[i] = t
    got = sorted(i for i in arrivals if i >= first)
    latency = {i: arrivals[i] - sent[i] for i in got}
    thirds = [[latency[i] for i in got if first + j * n / 3 <= i < first + (j + 1) * n / 3] for j in range(3)]
    out_fps = len(got) / (send_end - t0)
    warmup = {"frames_in": 1, "frames_out": 1}  # frame 0
    server = {k: (done or {}).get(k, 0) - warmup.get(k, 0)
              for k in ("frames_in", "frames_out", "dropped", "bad", "lost")}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    print(f"\nlive depth over OpenIGTLink: {w}x{h} frames at {args.fps:g} frames/s for {args.seconds:g} s, model "
          f"{args.model} on {args.device} ({args.precision}), points {'on' if args.points else 'off'}")
    print(f"machine: {cpu}, {platform.python_version()}; crcmod C extension: {crc_ext}; service exit code {code}; "
          f"warm-up {warmup_s:.1f} s; load average {load[0]:.2f} -> {load[1]:.2f}; service memory "
          f"{rss[0] or 0:.0f} -> {rss[1] or 0:.0f} MB")
    print(f"sent {n}, service in {server['frames_in']} out {server['frames_out']} dropped {server['dropped']} "
          f"lost {server['lost']} bad {server['bad']}; replies received {len(got)} ({out_fps:.1f} frames/s)")
    print("latency ms (send -> reply received)  p50 / p95   max")
    rows = [("all", [latency[i] for i in got])] + [(f"third {j + 1}", thirds[j]) for j in range(3)]
    for name, values in rows:
        print(f"  {name:<10} {len(values):5d} replies  {percentiles(values):>12}  "
              f"{(max(values) * 1000 if values else float('nan')):6.0f}")
    if args.json:
        args.json.write_text(json.dumps({
            "size": [w, h], "fps_in": args.fps, "seconds": args.seconds, "model": args.model, "device": args.device,
            "machine": cpu, "load_average": load, "service_rss_mb": rss, "service": server, "replies": len(got),
            "fps_out": out_fps,
            "latency_ms": {name: (np.percentile(np.asarray(v) * 1000, [50, 95]).tolist() if v else None)
                           for name, v in rows}}, indent=2))


if __name__ == "__main__":
    main()
