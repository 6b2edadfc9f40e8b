"""Live depth of an updating image source, off the caller's thread (the Slicer module's *Live* input).

The caller (Slicer's GUI thread, on each update of the input volume) :meth:`~LiveWorker.put` s a copy of the
newest frame into a one-slot mailbox (:class:`~latest_frame.LatestFrameMailbox`): a frame that waits there is
replaced by a newer one (counted as dropped), so inference always works on the newest frame and never falls behind
the source. A worker thread takes the frame, runs it through ``sd.depth_stream`` (the one inference loop: the same
depth conversion and field of view as a clip) and computes what the scene shows (:func:`~slicer_run.frame_outputs`:
the frame, the depth map and a point cloud decimated to the point budget), so that the GUI thread only copies
results into its nodes. The caller drains finished results with :meth:`~LiveWorker.results` from a timer; an error
in the worker is raised there. Nothing here touches MRML.

Why one ``depth_stream`` call per frame instead of one stream over a generator fed from the mailbox: the stream
(and the model's ``iter_batches``) read frames ahead of inference (its prefetch thread; an ``"auto"`` field of view
reads :data:`~fov.FOV_FRAMES` frames before the first prediction), and every frame read ahead is a stale frame;
one frame per call keeps the latency at one inference. The field of view is given, or ``"auto"``: per frame size,
found from the first :data:`~fov.FOV_FRAMES` frames that are not blank as they come (:class:`~fov.FovSearch`: a
scope that starts on a black screen is masked once it shows tissue), and passed to each call as an array.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .latest_frame import LatestFrameMailbox
from .memory_budget import DEFAULT_POINT_BUDGET
from .recent import RecentlyUsed
from .slicer_helpers import has_calibration, resolve_intrinsics, rgb_from_volume_array

logger = logging.getLogger(__name__)

#: frame sizes whose field of view and intrinsics are kept: a source whose size keeps changing must not grow them
SIZES_KEPT = 8


@dataclass(frozen=True)
class LiveResult:
    """One processed frame.

    Attributes:
        number: the frame's number among all frames put (from ``first_number``; numbers missing between results
            are frames that were dropped).
        meta: what the caller put with the frame (the Slicer module: the input volume's 4×4 IJK→RAS).
        frame: the :class:`~stream.DepthFrame` (``rgb`` is the frame put, ``fov_mask`` the field of view or None).
        outputs: :func:`~slicer_run.frame_outputs` of the frame: "frames" uint8 ``[1, H, W, 3]``, "depth" float32
            ``[1, H, W]`` mm (NaN = invalid) and, with a point budget, "points" (RAS ``vtkPolyData``).
        record: whether this result is one of the first ``record_frames`` (to be appended to a recording).
    """

    number: int
    meta: Any
    frame: Any
    outputs: dict
    record: bool


@dataclass(frozen=True)
class LiveWorkerStats:
    """What :meth:`LiveWorker.stats` returns: counts since start of frames put (``received``), processed,
    replaced in the mailbox before inference took them (``dropped``) and results marked for recording
    (``recorded``); ``fps``: processed frames per second over the last 2 s."""

    received: int
    processed: int
    dropped: int
    recorded: int
    fps: float

    def format(self) -> str:
        text = f"Live: {self.processed} frame(s), {self.fps:.1f} /s, {self.dropped} dropped"
        return text + (f", {self.recorded} recorded" if self.recorded else "")


class LiveWorker:
    """Depth of the newest frame of a live source in a worker thread (see the module docstring).

    Args:
        model: a ``DepthModel`` (or an object with its inference API).
        intrinsics_for: ``(width, height) -> Intrinsics`` of a frame size (called in the worker, once per size);
            default :func:`~slicer_helpers.resolve_intrinsics` without calibration (70° field of view).
        calibrated: ``intrinsics_for`` gives the scope's calibration (not a guessed field of view), so the depth is
            corrected to its lens (:mod:`.lens`), as in the run that ``process`` made.
        depth_range: (near, far) mm for relative models (None or a None item: the library default).
        input_size: network input lower bound (None: the model's own).
        fov_mask: ``"auto"`` (found per frame size from the first frames that are not blank), ``"none"``/None, a
            bool ``[H, W]`` array or a mask image path (:func:`~slicer_run.resolve_fov`).
        blank_no_depth: a blank frame (:func:`~fov.is_blank`: a black screen) gets no depth, as ``depth_stream``
            gives it under the ``"auto"`` field of view; None: only with ``fov_mask="auto"``
            (:func:`worker_options` sets it for the mask an ``"auto"`` run found).
        point_budget: points of each frame's cloud (0 = every valid pixel); None = no point cloud.
        record_frames: the first this many results are marked ``record``.
        first_number: :attr:`LiveResult.number` of the first frame put.
        max_results: finished results waiting for the caller; when they are all waiting, the worker waits too (the
            mailbox keeps dropping old frames meanwhile).
    """

    def __init__(self, model: Any, *, intrinsics_for: Callable[[int, int], Any] | None = None, calibrated: bool = False,
                 depth_range: tuple[float | None, float | None] | None = None, input_size: int | None = None,
                 fov_mask: Any = "auto", point_budget: int | None = DEFAULT_POINT_BUDGET, record_frames: int = 0,
                 first_number: int = 0, max_results: int = 2, blank_no_depth: bool | None = None):
        from .alignment import DEFAULT_DEPTH_RANGE_MM
        from .slicer_run import resolve_fov

        if point_budget is not None and point_budget < 0:
            raise ValueError(f"point_budget must be None or >= 0, got {point_budget}")
        if record_frames < 0 or max_results < 1:
            raise ValueError(f"record_frames must be >= 0 and max_results >= 1, got {record_frames}, {max_results}")
        near, far = depth_range or (None, None)
        self.model, self.input_size = model, input_size
        self.intrinsics_for = intrinsics_for or (lambda width, height: resolve_intrinsics(width, height))
        self.calibrated = bool(calibrated)
        self.depth_range = (near or DEFAULT_DEPTH_RANGE_MM[0], far or DEFAULT_DEPTH_RANGE_MM[1])
        self.fov_mask, self.point_budget, self.record_frames = resolve_fov(fov_mask), point_budget, record_frames
        self.blank_no_depth = isinstance(self.fov_mask, str) if blank_no_depth is None else bool(blank_no_depth)
        self._mailbox, self._results = LatestFrameMailbox(), queue.Queue(maxsize=max_results)
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._next_number = first_number
        self._counts = {"received": 0, "processed": 0, "dropped": 0, "recorded": 0}
        self._done_times: deque[float] = deque(maxlen=256)
        # (H, W) -> (fov mask, FovSearch or None; intrinsics), for the SIZES_KEPT sizes seen last
        self._by_size: RecentlyUsed[tuple[int, int], tuple[Any, Any]] = RecentlyUsed(SIZES_KEPT)

    # -- caller's side ------------------------------------------------------------------------------------
    def start(self) -> "LiveWorker":
        if self._thread is not None:
            raise RuntimeError("the live worker was already started")
        self._thread = threading.Thread(target=self._run, name="SurgicalDepth.live", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def put(self, frame: np.ndarray, meta: Any = None) -> bool:
        """Offer the newest frame: RGB uint8 ``[H, W, 3]`` or a one-slice vector volume's ``[1, H, W, C >= 3]``
        (checked and converted in the worker: a bad frame stops it, and :meth:`results` raises). The worker owns
        it from now on: pass a copy, never a view of memory the caller changes. Returns True when it replaced a
        waiting frame (dropped)."""
        with self._lock:
            number, self._next_number = self._next_number, self._next_number + 1
            self._counts["received"] += 1
        dropped = self._mailbox.put((number, frame, meta))
        if dropped:
            with self._lock:
                self._counts["dropped"] += 1
        return dropped

    def results(self) -> list[LiveResult]:
        """The finished results in order (possibly none). Once those are taken, an error that stopped the worker
        is raised here (the original exception)."""
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                break
        if not out and self._error is not None:
            error, self._error = self._error, None
            raise error
        return out

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop taking frames and join the worker (it finishes the frame in inference); returns whether it ended
        within ``timeout`` seconds (else it ends by itself after that frame; it never blocks interpreter exit)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> LiveWorkerStats:
        with self._lock:
            counts, times = dict(self._counts), list(self._done_times)
        recent = [t for t in times if t >= time.monotonic() - 2.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        return LiveWorkerStats(fps=fps, **counts)

    # -- worker thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._mailbox.take(0.05)
                if item is None:
                    continue
                result = self._process(*item)
                while not self._stop.is_set():  # the caller lags: wait (the mailbox keeps the newest frame)
                    try:
                        self._results.put(result, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except Exception as exc:  # raised in the caller by results()
            logger.debug("live worker stopped by %r", exc)
            self._error = exc

    def _frame_setup(self, rgb: np.ndarray) -> tuple[Any, Any]:
        """Field of view (None = every pixel) and intrinsics of ``rgb``'s size (intrinsics and a given mask found
        once per size, kept for the :data:`SIZES_KEPT` sizes seen last; ``"auto"`` searches on with each frame until
        it has settled)."""
        from .fov import FovSearch, check_fov_mask

        size = rgb.shape[:2]

        def setup() -> tuple[Any, Any]:
            fov = self.fov_mask
            if isinstance(fov, str):
                fov = FovSearch()
            elif fov is not None:
                fov = check_fov_mask(fov, size)
            return fov, self.intrinsics_for(size[1], size[0])

        fov, intrinsics = self._by_size.get(size, setup)
        if isinstance(fov, FovSearch):
            fov.add(rgb)
            fov = fov.mask
        return fov, intrinsics

    def _process(self, number: int, frame: np.ndarray, meta: Any) -> LiveResult:
        from .fov import is_blank
        from .slicer_run import frame_outputs
        from .stream import black_frame, depth_stream

        rgb = np.asarray(frame)
        if rgb.ndim == 4:
            rgb = rgb_from_volume_array(rgb, f"live frame {number}")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"live frame {number}: expected RGB uint8 [H, W, 3] or a one-slice RGB vector volume, "
                             f"got {rgb.dtype} {rgb.shape}")
        fov, intrinsics = self._frame_setup(rgb)
        if self.blank_no_depth and is_blank(rgb):  # "auto": a black screen shows no tissue, so no model run either
            depth = black_frame(0, rgb, fov)
        else:
            stream = depth_stream(self.model, [rgb], depth_range=self.depth_range, batch_size=1,
                                  input_size=self.input_size, fov_mask=fov,
                                  intrinsics=intrinsics if self.calibrated else None)
            with closing(stream):
                depth = next(stream)
        kinds = ["frames", "depth"] + (["points"] if self.point_budget is not None else [])
        outputs = frame_outputs(depth, intrinsics, kinds, point_budget=self.point_budget or 0)
        with self._lock:
            record = self._counts["recorded"] < self.record_frames
            self._counts["recorded"] += record
            self._counts["processed"] += 1
            self._done_times.append(time.monotonic())
        return LiveResult(number, meta, depth, outputs, record)


def worker_options(options: dict[str, Any], fov_mask: Any, record_frames: int = 0) -> dict[str, Any]:
    """:class:`LiveWorker` keyword arguments that match ``SurgicalDepthLogic.process`` keyword ``options`` (camera:
    ``intrinsics`` / ``calibration`` / ``fx, fy, cx, cy``; ``nearMm, farMm``; ``inputSize``; ``pointCloud,
    pointBudget``; ``fovMask``; the others are ignored), so that live frames are computed like the run that
    ``process`` made from the first image: its field of view ``fov_mask`` (None with ``fovMask="auto"``: that
    image showed no border, e.g. a black screen: the worker goes on looking; either way, as ``"auto"``, a black frame
    gets no depth) and ``record_frames`` in all, the first (process's) included. Numbers start at 1 (item 0 is
    process's)."""
    fields = tuple(float(options.get(key, 0.0)) for key in ("fx", "fy", "cx", "cy"))
    budget = options.get("pointBudget", DEFAULT_POINT_BUDGET)
    choice = options.get("fovMask", "auto")
    auto = isinstance(choice, str) and choice == "auto"
    return {"intrinsics_for": partial(resolve_intrinsics, intrinsics=options.get("intrinsics"),
                                      calibration=options.get("calibration"), fields=fields),
            "calibrated": has_calibration(options.get("intrinsics"), options.get("calibration"), fields[0]),
            "depth_range": (options.get("nearMm"), options.get("farMm")),
            "input_size": options.get("inputSize") or None,
            "fov_mask": "auto" if fov_mask is None and auto else fov_mask, "blank_no_depth": auto,
            "point_budget": budget if options.get("pointCloud", True) else None,
            "record_frames": max(int(record_frames) - 1, 0), "first_number": 1}


def new_image_event(volume: Any, mrml: Any) -> int:
    """The event an updating MRML volume node sends with each new image (``mrml``: the module holding Slicer's MRML
    classes, ``slicer``). A streaming volume (OpenIGTLink VIDEO, compressed IMAGE messages) sends
    ``FrameModifiedEvent`` and decodes the frame, sending ``ImageDataModifiedEvent``, only when its image is read: a
    live source listening for the latter alone could wait forever (vtkMRMLStreamingVolumeNode.cxx)."""
    if volume.IsA("vtkMRMLStreamingVolumeNode"):
        return mrml.vtkMRMLStreamingVolumeNode.FrameModifiedEvent
    return mrml.vtkMRMLVolumeNode.ImageDataModifiedEvent
