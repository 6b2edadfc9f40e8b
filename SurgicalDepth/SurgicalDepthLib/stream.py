"""``sd.depth_stream``: the one frames → depth loop of ``predict``, ``reconstruct``, the stream service and Slicer.

Frames are decoded in a background thread, batched and predicted by the model (:meth:`DepthModel.iter_batches`:
preprocessing ahead of inference, GPU upload overlapped), and come out one :class:`DepthFrame` at a time, in
order, in constant memory. Writing results is the caller's (``predict`` writes in a background thread).

Depth in millimetres (``DepthFrame.depth_mm``):

- relative models predict disparity with no scale: each frame's disparity percentiles 2 and 98 map to
  ``depth_range`` = (near, far) mm linearly in inverse depth (:func:`alignment.prediction_to_mm`). With
  ``temporal=True`` the disparity is first stabilised over time (:class:`temporal.TemporalAligner`) and the mapping
  is fixed by the first frame, so depth does not flicker with each frame's own range;
- metric models' output is converted from the model's unit to mm;
- invalid pixels are NaN, never 0: pixels outside the scope's field of view (``fov_mask``, by default detected
  from the first frames and followed when it moves, :mod:`SurgicalDepthLib.fov`) are invalid, and the percentiles
  above are taken inside it;
- it is computed when ``depth_mm`` is first read (``predict`` writes only the prediction and never pays for it).
"""
from __future__ import annotations

import itertools
import logging
import numbers
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import cv2
import numpy as np

from .alignment import DEFAULT_DEPTH_RANGE_MM, disparity_to_depth, prediction_to_mm
from .camera import Intrinsics
from .depth_kind import OutputKind, invert
from .detail import check_detail_size
from .fov import FovSearch, FovTracker, check_fov_mask, is_blank, nan_outside
from .lens import LensCorrection, model_reference_fov
from .temporal import TemporalAligner
from .video import FrameReader, open_frames

logger = logging.getLogger(__name__)

#: Disparity percentiles mapped to (near, far) for relative models.
RANGE_PERCENTILES = (2.0, 98.0)


class Deferred:
    """A value computed on first use: ``Deferred(function, *args)`` (for :attr:`DepthFrame.depth_mm`)."""

    def __init__(self, function: Callable[..., np.ndarray], *args: Any):
        self.function, self.args = function, args

    def __call__(self) -> np.ndarray:
        return self.function(*self.args)


class _DeferredField:
    """Dataclass field descriptor: stores an array or a :class:`Deferred`, and hands out the array (computed once,
    on first access)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return None  # the field's default
        value = instance.__dict__.get(self.slot)
        if isinstance(value, Deferred):
            value = instance.__dict__[self.slot] = value()
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.slot] = value


@dataclass(frozen=True, eq=False)
class DepthFrame:
    """One frame of :func:`depth_stream`.

    Attributes:
        index: the frame's index in its source (kept under ``start``/``stride``).
        rgb: uint8 ``[H, W, 3]`` RGB input frame.
        prediction: float32 ``[H, W]``, the model's output (``output_kind`` of the model: disparity or depth in
            the model's unit); corrected to the real lens when ``intrinsics`` are given (:mod:`.lens`), and with
            ``temporal=True`` after the temporal scale+shift alignment. All NaN for a blank frame (a black screen:
            fewer than :data:`fov.BLANK_SHARE` of its pixels above :data:`fov.DARK_LEVEL`) when the field of view
            is ``"auto"``.
        depth_mm: float32 ``[H, W]`` depth in mm along the optical axis, NaN where invalid (never 0). The stream
            computes it on first access (a 1080p frame takes ~70 ms on one core, longer than a GPU forward pass,
            and callers that write only the prediction never pay for it), then keeps it; constructed by hand it
            may be given as an array.
        fov_mask: bool ``[H, W]``, True inside the scope's field of view (one array shared by the frames until an
            ``"auto"`` field of view moves), or None when every pixel shows tissue.
    """

    index: int
    rgb: np.ndarray = field(repr=False)
    prediction: np.ndarray = field(repr=False)
    depth_mm: np.ndarray = field(default=_DeferredField(), repr=False)
    fov_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def valid(self) -> np.ndarray:
        """bool ``[H, W]``: pixels with a depth."""
        return np.isfinite(self.depth_mm)


def _indexed_frames(frames: Any, start: int, stride: int, max_frames: int | None,
                    prefetch: int) -> tuple[Iterator[tuple[int, np.ndarray]], FrameReader | None]:
    """``(source index, rgb)`` pairs of the selected frames, and the reader to close (None for iterables)."""
    # one past the last selected frame: a live iterable is not asked for frames that would be skipped
    stop = None if max_frames is None else start + (max_frames - 1) * stride + 1
    if isinstance(frames, (str, os.PathLike)):
        reader = open_frames(frames, start=start, stop=stop, stride=stride, prefetch=prefetch)
        return reader.indexed(), reader  # not zip(indices, ...): a video may hold more frames than it announced
    if isinstance(frames, FrameReader):  # already opened: its frames carry their source indices
        selected = _source_frames(frames.indexed(), start, stride)
        # max_frames counts the frames used, not source indices: a reader opened at frame 100 (or at every 2nd)
        # gave no frame (or half of them) for a stop computed from start = 0
        return (selected if max_frames is None else itertools.islice(selected, max_frames)), frames
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]  # one image
    try:
        numbered = enumerate(frames)
    except TypeError:
        raise TypeError("frames must be a video, image folder, glob or image path, an opened FrameReader or an "
                        f"iterable of RGB uint8 [H, W, 3] arrays, got {type(frames).__name__}") from None
    return itertools.islice(numbered, start, stop, stride), None


def black_frame(index: int, rgb: np.ndarray, fov: np.ndarray | None) -> DepthFrame:
    """The :class:`DepthFrame` of a black frame ``rgb`` (no tissue, no model run): NaN prediction and depth."""
    shape = rgb.shape[:2]
    return DepthFrame(int(index), rgb, np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32), fov)


def no_depth_if_black(frame: DepthFrame) -> DepthFrame:
    """``frame``, or without depth (NaN prediction and depth) when it is black (:func:`~.fov.is_blank`), as
    ``depth_stream`` gives it under ``fov_mask="auto"``; for callers that hand ``depth_stream`` the field of view
    an ``"auto"`` search found themselves (the live paths, ``predict``'s single images)."""
    return black_frame(frame.index, frame.rgb, frame.fov_mask) if is_blank(frame.rgb) else frame


def _source_frames(items: Iterator[tuple[int, np.ndarray]], start: int,
                   stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """The ``(source index, rgb)`` pairs of ``items`` whose index is ``start + k · stride``: by index, not
    position, since a reader opened with its own selection, or one that skipped a frame it could not decode, yields
    frames whose positions are not their indices."""
    for index, rgb in items:
        if index >= start and (index - start) % stride == 0:
            yield index, rgb


def _checked_frames(items: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """``items`` with each frame checked before anything else sees it (:func:`preprocess.check_rgb`): RGB uint8
    ``[H, W, 3]`` of the first frame's size; errors name the frame's source index. Checked before the
    field-of-view search, which holds frames that look blank as PNG: a float or 16-bit frame came back from it as
    uint8 and was predicted silently."""
    from .preprocess import check_rgb  # torch: imported once frames come (the model is loaded by then)

    first: tuple[int, tuple[int, ...]] | None = None
    for index, rgb in items:
        check_rgb(rgb, f"frame {index}")
        if first is None:
            first = (index, rgb.shape[:2])
        elif rgb.shape[:2] != first[1]:
            (h, w), (h0, w0) = rgb.shape[:2], first[1]
            raise ValueError(f"frame {index} is {w}x{h} pixels but frame {first[0]} was {w0}x{h0}: one stream is "
                             "one camera, every frame must have the first one's size")
        yield index, rgb


def _check_detail_size(model: Any, detail_size: Any, input_size: int | None) -> None:
    """``detail_size``: None, or an integer above the first read's network size (a model, not stored
    predictions)."""
    if detail_size is None:
        return
    if hasattr(model, "predictions"):
        raise ValueError("detail_size needs a model: stored predictions cannot be read again")
    check_detail_size(detail_size, model.config.input_size if input_size is None else input_size)


def _predictions(model: Any, items: Iterator[tuple[int, np.ndarray]], input_size: int | None,
                 batch_size: int | None, detail_size: int | None = None
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(index, rgb, prediction)`` in order: ``model.predictions(items)`` when the source has stored
    predictions (:class:`~SurgicalDepthLib.saved_predictions.SavedPredictions`), else batched inference."""
    if hasattr(model, "predictions"):
        yield from model.predictions(items)
        return
    pending: deque[tuple[int, np.ndarray]] = deque()

    def rgbs() -> Iterator[np.ndarray]:
        for index, rgb in items:
            pending.append((index, rgb))
            yield rgb

    detail = {} if detail_size is None else {"detail_size": detail_size}  # other iter_batches need not take it
    for batch in model.iter_batches(rgbs(), input_size, batch_size, **detail):
        for pred in batch:
            index, rgb = pending.popleft()
            yield index, rgb, pred


@dataclass
class _BlankFrames:
    """How many of a stream's frames were of one kind (no disparity range, :func:`_depth_mm`; or black): a count,
    not a list, so memory stays constant however long a scope shows black."""

    count: int = 0

    def add(self) -> bool:
        """Count one more blank frame; True when it is the stream's first."""
        self.count += 1
        return self.count == 1


def _depth_mm(kind: OutputKind, unit: str, near_far: tuple[float, float], fov: np.ndarray | None,
              blanks: _BlankFrames, index: int, pred: np.ndarray) -> np.ndarray:
    """:func:`prediction_to_mm` inside ``fov``, except that a frame with no disparity range (blank, all invalid)
    gets an all-NaN depth instead of ending the stream: the stream's first such frame is warned about, later ones
    (counted in ``blanks``) only logged at DEBUG — a scope showing black at 25 frames/s must not write 25 warnings
    a second."""
    if kind is OutputKind.DISPARITY:
        ok = np.isfinite(pred) if fov is None else np.isfinite(pred) & fov
        lo, hi = np.percentile(pred[ok], RANGE_PERCENTILES) if ok.any() else (0.0, 0.0)
        if not hi > lo:
            first = blanks.add()
            logger.log(logging.WARNING if first else logging.DEBUG, "frame %d: the predicted disparity "
                       "has no range (blank frame?); its depth is left undefined (NaN)%s", index,
                       "; later such frames are logged at DEBUG" if first else "")
            return np.full(pred.shape, np.nan, np.float32)
    return prediction_to_mm(pred, kind.value, unit, near_far, RANGE_PERCENTILES, mask=fov)


#: frames over which ``temporal=True`` lets a metric model's depth follow a lasting change (the camera approaching)
METRIC_FOLLOW = 30.0


class _TemporalDepth:
    """Temporal stabilisation in disparity space and a depth mapping fixed by the first frame."""

    def __init__(self, kind: OutputKind, unit: str, depth_range: tuple[float, float], fov: np.ndarray | None):
        self.kind, self.unit, self.depth_range, self.fov = kind, unit, depth_range, fov
        # a metric model's scale is its measurement: followed (a lag of ~30 frames), not held at the first frame's
        self.aligner = TemporalAligner(follow=METRIC_FOLLOW if kind is OutputKind.DEPTH else 0.0)
        self.scale_shift: tuple[float, float] | None = None
        self.band: tuple[float, float] = (-np.inf, np.inf)  # the first frame's disparity percentiles

    def __call__(self, pred: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Aligned prediction of the next frame and its conversion to mm (bound to this frame's field of view:
        the conversion runs when ``depth_mm`` is first read, maybe after the field of view has moved)."""
        fov = self.fov
        if self.kind is OutputKind.DEPTH:
            aligned = invert(self.aligner.update(invert(pred), fov))
            return aligned, partial(prediction_to_mm, output_kind=self.kind.value, unit=self.unit, mask=fov)
        aligned = self.aligner.update(pred, fov)
        if self.scale_shift is None:
            ok = np.isfinite(aligned) if fov is None else np.isfinite(aligned) & fov
            lo, hi = np.percentile(aligned[ok], RANGE_PERCENTILES) if ok.any() else (0.0, 0.0)
            if not hi > lo:  # a flat first frame: no range to fix yet
                return aligned, lambda p: np.full(p.shape, np.nan, np.float32)
            near, far = self.depth_range
            scale = (1.0 / near - 1.0 / far) / (hi - lo)  # lo -> 1/far, hi -> 1/near (inverse depth)
            self.scale_shift = (scale, 1.0 / far - scale * lo)
            self.band = (lo, hi)
        convert = partial(disparity_to_depth, scale=self.scale_shift[0], shift=self.scale_shift[1])
        # disparity beyond the first frame's band is clipped to it, so depth stays in depth_range as without
        # temporal (a later frame's far lumen would otherwise go past far, or to 1/z <= 0: NaN on tissue)
        band = self.band
        return aligned, lambda p: nan_outside(convert(np.clip(p, *band)), fov)


#: Most frames an ``"auto"`` field of view reads ahead to find :data:`~fov.FOV_FRAMES` that are not blank (a clip
#: that starts on a black screen); the others are held PNG-compressed (lossless) until they are predicted.
FOV_LOOKAHEAD = 150


def _field_of_view(fov_mask: Any, items: Iterator[tuple[int, np.ndarray]]
                   ) -> tuple[np.ndarray | None, Iterator[tuple[int, np.ndarray]]]:
    """The stream's field of view (``"auto"``: found from the first frames that are not blank, at most
    :data:`FOV_LOOKAHEAD` read ahead, which are put back in front of ``items``) and the items to iterate."""
    if fov_mask is None:
        return None, items
    if not isinstance(fov_mask, str):  # only the first frame's size is needed (a live source may have no more yet)
        head = list(itertools.islice(items, 1))
        return (check_fov_mask(fov_mask, head[0][1].shape[:2]) if head else None), itertools.chain(head, items)
    search, head = FovSearch(), []
    try:
        for index, rgb in items:
            head.append((index, rgb) if search.add(rgb) else (index, _Packed(rgb)))
            if search.settled or len(head) >= FOV_LOOKAHEAD:
                break
    except Exception as error:  # the frames read before a failing source are still predicted, then it is raised
        items = _raising(error)
    if search.mask is not None:
        shape = search.mask.shape
        logger.info("field of view detected: %.1f %% of the %dx%d frame", 100 * search.mask.mean(), shape[1], shape[0])
    return search.mask, itertools.chain(((i, _Packed.unpack(rgb)) for i, rgb in head), items)


def _raising(error: Exception) -> Iterator[Any]:
    """An iterator that raises ``error`` when first asked for an item."""
    raise error
    yield  # a generator: raises on next(), not when called


class _Packed:
    """An RGB uint8 frame held PNG-encoded (a blank frame compresses to almost nothing); :meth:`unpack` gives it
    back bit for bit."""

    def __init__(self, rgb: np.ndarray) -> None:
        ok, self.data = cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError(f"could not hold frame {rgb.shape} {rgb.dtype} for the field-of-view search")

    @staticmethod
    def unpack(rgb: Any) -> np.ndarray:
        return cv2.imdecode(rgb.data, cv2.IMREAD_UNCHANGED) if isinstance(rgb, _Packed) else rgb


def _integer(name: str, value: Any, minimum: int, none: str = "") -> int:
    """``value`` as an int (numpy integers too; not a bool) of at least ``minimum``, else a ValueError naming
    ``name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be {none}an integer >= {minimum}, got {value!r}")
    return int(value)


def _near_far(depth_range: Any) -> tuple[float, float]:
    """``depth_range`` (None: the default) as ``(near, far)`` mm floats, ``0 < near < far < inf``."""
    try:
        near_far = tuple(float(v) for v in (DEFAULT_DEPTH_RANGE_MM if depth_range is None else depth_range))
    except (TypeError, ValueError):
        near_far = ()
    if len(near_far) != 2 or not 0 < near_far[0] < near_far[1] or not np.isfinite(near_far[1]):
        raise ValueError(f"depth_range must be (near, far) mm with 0 < near < far, got {depth_range!r}")
    return near_far


def depth_stream(model: Any, frames: Any, *, depth_range: tuple[float, float] | None = None, start: int = 0,
                 stride: int = 1, max_frames: int | None = None, batch_size: int | None = None,
                 temporal: bool = False, input_size: int | None = None,
                 fov_mask: str | np.ndarray | None = "auto", intrinsics: Any = None,
                 detail_size: int | None = None) -> Iterator[DepthFrame]:
    """Predict depth frame by frame (see the module docstring for the depth conventions).

    Args:
        model: a :class:`DepthModel` (or an object with its inference API: ``iter_batches``, ``output_kind``,
            ``depth_unit``), or stored predictions (:class:`~SurgicalDepthLib.saved_predictions.SavedPredictions`).
        frames: anything :func:`open_frames` takes (video, image folder, glob, image), an opened
            :class:`FrameReader`, or an iterable of RGB uint8 ``[H, W, 3]`` arrays. One stream is one camera: every
            frame has the first one's size (a frame of another size is a ValueError after the frames before it are
            yielded; the live service starts a new stream when the size changes).
        depth_range: (near, far) mm for relative models; default :data:`alignment.DEFAULT_DEPTH_RANGE_MM`.
        start, stride, max_frames: use source frames ``start, start + stride, ...``, at most ``max_frames`` of
            them (an opened :class:`FrameReader`'s frames by their source index; an iterable's by position).
        batch_size: frames per forward pass (default: the model's, 1 on CPU and 4 on a GPU).
        temporal: stabilise relative depth over time (videos).
        input_size: network input lower bound (multiple of 14; default the model's own).
        fov_mask: the scope's field of view: ``"auto"`` detects it from the first :data:`fov.FOV_FRAMES` frames
            that are not blank (None when they have no black border) and follows it if it moves later
            (:class:`~fov.FovTracker`; each frame's is its ``fov_mask``; a blank frame gets no depth), a bool
            ``[H, W]`` array gives it, None turns it off (every pixel of every frame is tissue).
        intrinsics: the real camera of the frames (``sd.Intrinsics``, a calibration: not a guessed field of view).
            With a model that has a reference lens (``config.reference_fov_deg``, e.g. the default model) the
            prediction is corrected to this lens (:mod:`SurgicalDepthLib.lens`: z-depth of wide-angle and fisheye
            scopes); other models ignore it.
        detail_size: also read each frame at this larger network size and keep that read's detail on the first
            read's layout (:mod:`SurgicalDepthLib.detail`: polyps and folds stand out more; about 3x the
            inference time); None: one read.
    Yields:
        :class:`DepthFrame` in source order. Closing the generator stops decoding.
    Raises:
        ValueError: bad arguments (before anything is decoded); decoding errors after the frames before them.
    """
    start, stride = _integer("start", start, 0), _integer("stride", stride, 1)
    max_frames = None if max_frames is None else _integer("max_frames", max_frames, 1, "None or ")
    batch_size = None if batch_size is None else _integer("batch_size", batch_size, 1, "None or ")
    input_size = None if input_size is None else _integer("input_size", input_size, 1, "None or ")
    near_far = _near_far(depth_range)
    _check_detail_size(model, detail_size, input_size)
    if isinstance(fov_mask, str) and fov_mask != "auto" or not (
            fov_mask is None or isinstance(fov_mask, str) or np.ndim(fov_mask) in (2, 3)):
        raise ValueError(f"fov_mask must be 'auto', None or a bool [H, W] array, got {fov_mask!r}")
    if intrinsics is not None and not isinstance(intrinsics, Intrinsics):
        raise TypeError(f"intrinsics must be None or an sd.Intrinsics, got {type(intrinsics).__name__}")
    kind = OutputKind.parse(model.output_kind)
    reference = model_reference_fov(model)
    lens = LensCorrection(intrinsics, reference, kind.value) if intrinsics is not None and reference else None
    items, reader = _indexed_frames(frames, start, stride, max_frames,
                                    prefetch=2 * (batch_size or getattr(model, "default_batch_size", 1)))
    try:
        fov, items = _field_of_view(fov_mask, _checked_frames(items))
        follow = FovTracker(fov) if isinstance(fov_mask, str) else None  # "auto": the scope image may move
        stabilise = _TemporalDepth(kind, model.depth_unit, near_far, fov) if temporal else None
        blanks, black = _BlankFrames(), _BlankFrames()  # frames with no disparity range (_depth_mm); black frames
        for index, rgb, pred in _predictions(model, items, input_size, batch_size, detail_size):
            if follow is not None and follow.update(rgb) is not fov:
                fov = follow.mask
                logger.info("frame %d: the field of view moved (%.1f %% of the frame)", index, 100 * fov.mean())
                if stabilise is not None:
                    stabilise.fov = fov
            if follow is not None and follow.blank:  # a black screen shows no tissue: no depth, and it fixes no
                if black.add():  # colour range or temporal depth mapping either
                    logger.info("frame %d is black (no tissue): no depth for it and the black frames after it", index)
                yield black_frame(index, rgb, fov)
                continue
            if lens is not None:
                pred = lens(pred)
            if stabilise is not None:
                pred, to_mm = stabilise(pred)
            else:
                to_mm = partial(_depth_mm, kind, model.depth_unit, near_far, fov, blanks, int(index))
            pred = np.asarray(pred, np.float32)
            yield DepthFrame(int(index), rgb, pred, Deferred(to_mm, pred), fov)
    finally:
        if reader is not None:
            reader.close()
