"""``surgical-depth stream``: live depth over OpenIGTLink (:class:`~SurgicalDepthLib.live.DepthService`).

Each IMAGE ``X`` (one uint8 grey/RGB/RGBA frame) is answered with an IMAGE ``X_depth`` (float32 depth in mm, NaN
where undefined, same size, the input's timestamp and IJK→RAS), and with ``--points`` a POLYDATA ``X_points``
(the camera-frame point cloud on a regular pixel grid of at most ``--point-budget`` points, with ``Depth`` and
``RGB`` attributes). Outside the scope's field of view (``--fov-mask``; by default found per device and frame size,
from its first frames that are not blank) depth is NaN and no point is sent. Frames that arrive while the model is
busy are dropped (latest-frame policy), never queued.

As a server (``--port``; ``--host 0.0.0.0`` accepts other machines) it answers every client on its own connection;
with ``--connect HOST:PORT`` it connects to a PLUS (or any OpenIGTLink) server, takes the images it broadcasts and
sends the results back to it. A status line (frames in/out/dropped, output frames/s, latency p50/p95) is logged
every ``--status-interval`` seconds (``--progress jsonl``: as ``progress`` events). Ctrl-C or SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
from pathlib import Path

from . import (CliError, add_depth_range_arg, add_model_args, check_intrinsics_arg, fov_mask_arg, model_hints,
               progress_of)

logger = logging.getLogger(__name__)



def host_port_arg(text: str) -> tuple[str, int]:
    """argparse type of ``--connect``: ``HOST:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1-65535, got {text!r}")
    return host.strip("[]"), int(port)


def register(subparsers) -> None:
    p = subparsers.add_parser("stream", help="live OpenIGTLink depth: IMAGE X in -> IMAGE X_depth out",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=None,
                   help="listen on this TCP port (default 18944, the OpenIGTLink port; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all interfaces)")
    p.add_argument("--connect", type=host_port_arg, default=None, metavar="HOST:PORT",
                   help="instead of listening, connect to this OpenIGTLink server (e.g. PLUS) and answer it")
    add_model_args(p, batch_size=False, detail=False)  # live: one read per frame
    add_depth_range_arg(p)
    p.add_argument("--fov-mask", type=fov_mask_arg, default="auto", metavar="auto|none|FILE",
                   help="the scope's field of view: 'auto' (default: found per device and frame size from its first "
                        "frames that are not blank; black borders and the overlay text on them get no depth), "
                        "'none' (every pixel is tissue) or a mask image of the frames' size (nonzero = tissue); "
                        "outside it depth is NaN and no point is sent")
    p.add_argument("--points", action="store_true", help="also send a POLYDATA point cloud X_points per frame")
    p.add_argument("--point-budget", type=int, default=20000,  # = live.LIVE_POINT_BUDGET (live imports pyigtl)
                   help="at most this many points per cloud")
    p.add_argument("--intrinsics", default=None,
                   help="the scope's calibration: 'fx,fy,cx,cy' in pixels or a calibration file; the depth of "
                        "models with a reference lens (the default model) is corrected to it, and --points uses it; "
                        "default: no correction and, for --points, a 70 degree horizontal field of view (warned)")
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines")
    p.add_argument("--max-clients", type=int, default=16,  # = live.MAX_CLIENTS (live imports pyigtl)
                   help="clients served at once when listening (default 16); more connections are closed at once")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.connect is not None and args.port is not None:
        raise CliError("--port (listen) and --connect (client) exclude each other")
    if args.port is not None and not 0 <= args.port < 65536:
        raise CliError(f"--port must be in 0-65535, got {args.port}")
    near, far = args.depth_range
    if not 0 < near < far:
        raise CliError(f"--depth-range needs 0 < NEAR < FAR, got {near:g} {far:g}")
    if args.point_budget < 1:
        raise CliError(f"--point-budget must be >= 1, got {args.point_budget}")
    if args.max_clients < 1:
        raise CliError(f"--max-clients must be >= 1, got {args.max_clients}")
    if not args.status_interval > 0:
        raise CliError(f"--status-interval must be > 0 seconds, got {args.status_interval:g}")
    check_intrinsics_arg(args.intrinsics)
    _check_calibration_file(args.intrinsics)


def _check_calibration_file(text: str | None) -> None:
    """Read the calibration file ``--intrinsics`` names before the service starts, so an unreadable one stops the
    command here (exit 2) instead of being logged at the first frame (one without its image size is read up to
    that size, which the frames give)."""
    if text is None or not Path(text).is_file():
        return  # none, or 'fx,fy,cx,cy' (check_intrinsics_arg)
    from ..calibration_files import check_calibration_file

    path = Path(text)
    try:
        check_calibration_file(path)
    except (OSError, ValueError) as exc:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        raise CliError(f"--intrinsics: {message}") from None


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        from ..live import DEFAULT_PORT, DepthService
    except ImportError as exc:
        raise CliError(f"the stream command needs pyigtl ({exc}): pip install 'surgical-depth[igtl]'") from None
    from ..loading import load_model

    model = load_model(args.model, device=args.device, precision=args.precision, backend=args.backend,
                       **model_hints(args))
    reporter = progress_of(args)

    def report(stats) -> None:
        logger.info("%s", stats.format())
        reporter.emit("progress", stage="stream", step=stats.frames_out, total=None, **{
            k: v for k, v in stats.as_dict().items() if k != "frames_out"})

    stop = threading.Event()
    service = DepthService(model, host=args.host, port=DEFAULT_PORT if args.port is None else args.port,
                           connect=args.connect, points=args.points, point_budget=args.point_budget,
                           intrinsics=args.intrinsics, depth_range=tuple(args.depth_range),
                           input_size=args.input_size, fov_mask=args.fov_mask,
                           status_interval=args.status_interval, on_status=report,
                           max_clients=args.max_clients)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.start()
        # the address the service listens on (--port 0: the one the system chose) or connects to, for programs
        host, port = service.address
        reporter.emit("progress", stage="stream", step=0, total=None, host=host, port=port,
                      mode="connect" if args.connect else "listen")
        print(f"depth: {model.source} ({model.output_kind}) on {getattr(model, 'device', '?')}; Ctrl-C stops",
              flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stats = service.stats(window=math.inf)  # rates and latencies over the whole run
    logger.info("stopped: %s", stats.format())
    args.result = {k: v for k, v in stats.as_dict().items() if isinstance(v, int)}
    return 0
