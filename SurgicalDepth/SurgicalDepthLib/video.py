"""Streaming RGB frame readers: video files (OpenCV ``VideoCapture``), image folders, glob patterns, single images.

Frames are decoded one at a time (memory does not depend on the clip length). OpenCV decodes to BGR; every frame
returned here is **RGB** uint8 ``[H, W, 3]``. An optional prefetch thread decodes ahead into a bounded queue so that
decoding overlaps inference.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ._tiff import tiff_page_count
from .atomic_io import atomic_path
from .background import prefetch
from .frame_sources import frame_source_images, frame_source_kind

logger = logging.getLogger(__name__)

#: a container frame count at or above this is no count (OpenCV reports about -2.3e17 or 9.2e18 for none)
MAX_ANNOUNCED_FRAMES = 2 ** 40


#: consecutive frames that fail to decode after which a video counts as ended. OpenCV's ``grab()`` fails alike on a
#: damaged frame (each failed call consumes one frame, decoding goes on after it) and at the end of the data (each
#: call then costs about 20 µs), so a failing run is the end only when it reaches past the announced frame count
#: or this long
MAX_UNDECODABLE_RUN = 1000


class VideoDecodeError(ValueError):
    """A video has no decodable frame at an index that its container announces: the frames asked for all lie past
    the real end of a truncated file (or one still being written). A video that merely ends before its announced
    count ends there with a warning, and frames that fail to decode in the middle are skipped with a warning.

    Attributes:
        path: the video file.
        frame_index: index (in the source video) of the first frame asked for that could not be decoded.
        decoded: number of frames the video holds up to its real end.
    """

    def __init__(self, path: Path, frame_index: int, expected: int, decoded: int | None = None):
        decoded = frame_index if decoded is None else decoded
        where = "no frame decodes" if decoded == 0 else f"the video ends after {decoded} decodable frames"
        super().__init__(f"{path}: frame {frame_index} is past the real end of the video: {where} though the "
                         f"container announces {expected} (truncated, corrupt, or still being written)")
        self.path = path
        self.frame_index = frame_index
        self.decoded = decoded


def decode_image_file(path: str | os.PathLike, flags: int) -> np.ndarray | None:
    """The image in the file ``path`` as OpenCV decodes it with ``flags`` (``cv2.IMREAD_*``), or None when the file
    is empty or cannot be decoded. Decoded from the file's bytes: ``cv2.imread`` cannot open non-ASCII paths on
    Windows. The caller checks that ``path`` is a file."""
    return decode_image_bytes(np.fromfile(str(path), dtype=np.uint8), flags)


def decode_image_bytes(data: np.ndarray, flags: int) -> np.ndarray | None:
    """The image in a file's bytes ``data`` (uint8 ``[N]``) as OpenCV decodes it with ``flags``; None when empty or
    not decodable."""
    return cv2.imdecode(data, flags) if data.size else None


def high_byte(samples: np.ndarray) -> np.ndarray:
    """uint8 samples of uint16 ``samples`` (any shape): their high byte (``value >> 8``, libpng's 16-to-8-bit
    conversion), how every 16-bit RGB frame is read (image files here, Slicer volumes in ``slicer_helpers``)."""
    return (samples >> 8).astype(np.uint8)


def read_image(path: str | os.PathLike, *, orientation: bool = True) -> np.ndarray:
    """Read one image file as RGB uint8 ``[H, W, 3]``: grey is expanded to three channels, alpha is dropped (not
    blended: transparent pixels keep their colour), palette images are expanded, and 16-bit samples keep their high
    byte (:func:`high_byte`). The first page of a TIFF is its image; a multi-page TIFF (a stack) is refused.

    Args:
        orientation: apply the file's EXIF orientation tag, as image viewers show it; False keeps the stored pixel
            grid, which a depth map stored beside the image is aligned to (the dataset loaders).
    Raises:
        FileNotFoundError: ``path`` is not a file. ValueError: OpenCV cannot decode it, its samples are not
        8- or 16-bit unsigned integers (a float TIFF is no RGB image), or it is a TIFF of several pages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    # ANYDEPTH keeps 16 bits (converted here, the same for every format; IMREAD_COLOR would round 16-bit TIFFs
    # but truncate 16-bit PNGs), ANYCOLOR keeps grey as one channel and drops alpha.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | (0 if orientation else cv2.IMREAD_IGNORE_ORIENTATION)
    data = np.fromfile(str(path), dtype=np.uint8)  # kept: a TIFF's pages are counted from the same bytes
    image = decode_image_bytes(data, flags)
    if image is None:
        raise ValueError(f"cannot decode image {path}: not a readable {path.suffix or 'image'} file")
    pages = tiff_page_count(data.data)
    if pages > 1:  # OpenCV decodes the first page alone: the others would be lost without a word
        raise ValueError(f"image {path} is a TIFF stack of {pages} pages; one image per file is read: save each "
                         "page as an image of its own (a folder of frames)")
    if image.dtype == np.uint16:
        image = high_byte(image)
    elif image.dtype != np.uint8:
        raise ValueError(f"image {path} has {image.dtype} samples, expected 8- or 16-bit unsigned integers")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write RGB uint8 ``[H, W, 3]`` as an image file whose format follows the suffix (``.png``, ``.jpg``, ...),
    atomically (temporary name, then rename; no half-written file is left). Returns the path."""
    path = Path(path)
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", bgr)
    except cv2.error:  # unknown extension
        ok = False
    if not ok:
        raise ValueError(f"could not encode {path}: OpenCV cannot write {path.suffix or 'this'} images")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def grab_decodable(capture: cv2.VideoCapture, index: int, announced: int,
                   stop: threading.Event | None = None) -> int | None:
    """Grab the next decodable frame of an opened capture whose next frame has source index ``index``.

    A frame that fails to decode counts as one frame (OpenCV's FFmpeg capture consumes its packet) and is skipped;
    a run of failing frames is the end of the video when it reaches ``announced`` (the container's frame count) or
    :data:`MAX_UNDECODABLE_RUN` frames, or when ``stop`` is set.

    Returns:
        the source index of the frame grabbed (``>= index``; frames ``index`` .. it - 1 did not decode), or None at
        the end (the video then holds ``index`` frames).
    """
    at = index
    while not capture.grab():
        at += 1
        if at >= announced or at - index >= MAX_UNDECODABLE_RUN or (stop is not None and stop.is_set()):
            return None
    return at


def count_video_frames(capture: cv2.VideoCapture) -> int:
    """Number of frames of an opened capture, by decoding (``grab``) from its current position to the end (damaged
    frames in the middle count, :func:`grab_decodable`)."""
    count = 0
    while (grabbed := grab_decodable(capture, count, MAX_ANNOUNCED_FRAMES)) is not None:
        count = grabbed + 1
    return count


def read_video_frame(path: str | os.PathLike, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) of a video file as RGB uint8 ``[H, W, 3]``: random access for samplers that draw
    frames in any order (semi-supervised training). It seeks (``CAP_PROP_POS_FRAMES``) and checks that the frame
    reached has the time stamp of frame ``index`` (``index / fps`` after the first frame's): seeking lands on
    another frame in MPEG program streams (``.mpg``) and variable-frame-rate files, which are then decoded from
    the start, the frames :class:`FrameReader` yields (it never seeks).

    Raises:
        FileNotFoundError: missing file. ValueError: unreadable video, or no frame ``index``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"{path}: frame index must be an integer >= 0, got {index!r}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path}")
        bgr = _seek_frame(capture, int(index)) if index > 0 else None
        if bgr is None:  # no exact seek: decode from the start
            capture.release()
            capture = cv2.VideoCapture(str(path))
            bgr = _decode_to(capture, int(index))
    finally:
        capture.release()
    if bgr is None:
        raise ValueError(f"{path}: frame {index} could not be decoded (past the end, truncated or corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_to(capture: cv2.VideoCapture, index: int) -> np.ndarray | None:
    """BGR frame ``index`` of a capture at its first frame, by decoding every frame before it as
    :class:`FrameReader` does (damaged frames count, :func:`grab_decodable`); None when it does not decode."""
    announced = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    announced = int(announced) if 0 < announced < MAX_ANNOUNCED_FRAMES else MAX_ANNOUNCED_FRAMES
    at = 0
    while (grabbed := grab_decodable(capture, at, max(announced, index + 1))) is not None and grabbed < index:
        at = grabbed + 1
    if grabbed != index:
        return None
    ok, bgr = capture.retrieve()
    return bgr if ok else None


def _seek_frame(capture: cv2.VideoCapture, index: int) -> np.ndarray | None:
    """BGR frame ``index`` of a capture at its first frame, by seeking; None when the seek is not exact (the frame
    reached is not ``index / fps`` seconds after the first) or fails."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps > 0 or not capture.grab():
        return None
    first_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
    if not capture.set(cv2.CAP_PROP_POS_FRAMES, index) or not capture.grab():
        return None
    if abs(capture.get(cv2.CAP_PROP_POS_MSEC) - first_ms - 1000.0 * index / fps) > 250.0 / fps:
        return None
    ok, bgr = capture.retrieve()
    return bgr if ok else None


class FrameReader:
    """Iterable over RGB uint8 ``[H, W, 3]`` frames of one source (use :func:`open_frames`).

    Attributes:
        path: the source as given (file, folder or glob pattern).
        kind: ``"video"`` or ``"images"``.
        fps: frames per second of the video (``None`` for images).
        frame_count: number of frames this reader yields (after ``start``/``stop``/``stride``); for videos it
            comes from the container (exact for mp4/mov/avi written by common tools; counted by decoding when the
            container has none) and is corrected after an iteration that reached the real end of a video holding
            more or fewer frames than it said (a truncated file, one still being written). Frames in it that fail
            to decode are skipped (with a warning), not yielded.
        size: ``(height, width)`` of the frames.
        files: image files in order (``None`` for videos).
        indices: source frame indices that are yielded, in order (``range``).
    """

    def __init__(self, path: str | os.PathLike, *, start: int = 0, stop: int | None = None, stride: int = 1,
                 prefetch: int = 0):
        for name, value in (("start", start), ("stride", stride), ("prefetch", prefetch)):
            if not isinstance(value, int) or value < (1 if name == "stride" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'stride' else 0}, got {value!r}")
        if stop is not None and (not isinstance(stop, int) or stop < 0):
            raise ValueError(f"stop must be None or an integer >= 0, got {stop!r}")
        self.path = str(path)
        self.prefetch = prefetch
        self._stop_event = threading.Event()
        self.files: list[Path] | None = None
        self.fps: float | None = None
        self._start, self._stop, self._stride = start, stop, stride
        self._set_source_count(self._open(Path(path)))

    def _set_source_count(self, source_count: int) -> None:
        """``indices`` and ``frame_count`` for a source of ``source_count`` frames."""
        end = source_count if self._stop is None else min(self._stop, source_count)
        self.indices = range(self._start, max(self._start, end), self._stride)
        self.frame_count = len(self.indices)
        self._source_count = source_count

    # -- opening -------------------------------------------------------------------------------------------------
    def _open(self, path: Path) -> int:
        kind = frame_source_kind(path)
        if kind == "video":
            return self._open_video(path)
        return self._open_images(frame_source_images(path, kind))

    def _open_images(self, files: list[Path]) -> int:
        self.kind = "images"
        self.files = files
        first = read_image(files[0])
        self.size = first.shape[:2]
        return len(files)

    def _open_video(self, path: Path) -> int:
        self.kind = "video"
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            capture.release()
            raise ValueError(f"cannot open video {path}: unreadable, corrupt, or its codec is not supported by "
                             "OpenCV's FFmpeg backend")
        try:
            announced = capture.get(cv2.CAP_PROP_FRAME_COUNT)
            width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = float(capture.get(cv2.CAP_PROP_FPS))
            count = int(announced) if 0 < announced < MAX_ANNOUNCED_FRAMES else None
            if count is None:  # no frame count in the container (a browser's or a live recorder's webm/mkv)
                count = count_video_frames(capture)
                logger.warning("%s: the container does not record its frame count (it reports %g); %d frames "
                               "counted by decoding", path, announced, count)
        finally:
            capture.release()
        if count <= 0 or width <= 0 or height <= 0:
            raise ValueError(f"cannot read video {path}: {count} decodable frames of {width}x{height}")
        self.fps = fps if fps > 0 else None
        self.size = (height, width)
        return count

    # -- decoding ------------------------------------------------------------------------------------------------
    def _iter_images(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        files = self.files or []
        for i in self.indices:
            if stop.is_set():
                return
            rgb = read_image(files[i])
            if rgb.shape[:2] != self.size:
                raise ValueError(f"{files[i]} is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but {files[0]} is "
                                 f"{self.size[0]}x{self.size[1]}; all frames of a sequence must have the same size")
            yield i, rgb

    def _iter_video(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        path = Path(self.path)
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise ValueError(f"cannot open video {path}")
            # past the announced count too: containers that estimate it (mpg, mkv, webm) may announce too few
            wanted = itertools.count(self._start, self._stride)
            target, index, announced = next(wanted), 0, self._source_count
            # grab() every frame and retrieve() only the wanted ones: exact frame positions, unlike seeking
            while (self._stop is None or target < self._stop) and not stop.is_set():
                grabbed = grab_decodable(capture, index, announced, stop)
                if grabbed is None:
                    break  # the real end: the video holds `index` frames
                if grabbed > index:
                    _warn_skipped(path, index, grabbed)
                while target < grabbed:
                    target = next(wanted)
                index = grabbed
                if self._stop is not None and target >= self._stop:
                    return  # the damaged frames reached past the last wanted one
                if index == target:
                    ok, bgr = capture.retrieve()
                    if ok and bgr is not None:
                        yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    else:
                        _warn_skipped(path, index, index + 1)
                    target = next(wanted)
                index += 1
            else:  # past the last wanted frame, or stopped
                if index > announced and not stop.is_set():  # the selection reached past the announced end
                    self._set_source_count(index)
                return
            if not stop.is_set():
                self._ended(path, index)
        finally:
            capture.release()

    def _ended(self, path: Path, count: int) -> None:
        """The video ended after ``count`` frames (decoded to its end): ``indices`` and ``frame_count`` now follow
        the real length, with a warning where the container announced another one.

        Raises:
            VideoDecodeError: the frames asked for all lie past the real end (none was yielded).
        """
        announced, asked = self._source_count, self.indices
        if count == announced:
            return
        self._set_source_count(count)
        if count > announced:
            logger.warning("%s: the container announced %d frames but %d were decoded; all are read",
                           path, announced, count)
        elif len(asked) and asked[0] >= count:
            raise VideoDecodeError(path, asked[0], announced, count)
        else:
            read = f": {len(self.indices)} of the {len(asked)} frames asked for exist" if len(asked) else ""
            logger.warning("%s: the container announced %d frames but the video ends after %d frames "
                           "(truncated, or still being written)%s", path, announced, count, read)

    def _frames(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        return self._iter_video(stop) if self.kind == "video" else self._iter_images(stop)

    def indexed(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(source frame index, rgb)`` pairs, as :meth:`__iter__` yields the frames. A video whose container
        announced fewer frames than it holds yields the rest too; one that ends before its announced count (truncated
        or still being written) ends there with a warning; ``indices`` and ``frame_count`` are then updated at its
        end. Frames that fail to decode before decodable ones are skipped with a warning (the indices of the frames
        after them stay their source indices).

        Raises (during iteration):
            VideoDecodeError: every frame asked for lies past the real end of the video (one line naming the file
                and the first frame index asked for).
        """
        self._stop_event = threading.Event()  # one per iteration: close() ends only the running one
        pairs = self._frames(self._stop_event)
        if self.prefetch > 0:
            return prefetch(pairs, self.prefetch, f"FrameReader({self.path})", self._stop_event)
        return pairs

    def __iter__(self) -> Iterator[np.ndarray]:
        return _second(self.indexed())

    def __len__(self) -> int:
        return self.frame_count

    def close(self) -> None:
        """Stop a running prefetch thread (frames already decoded are dropped)."""
        self._stop_event.set()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FrameReader({self.path!r}, kind={self.kind!r}, frames={self.frame_count}, "
                f"size={self.size}, fps={self.fps})")


def _warn_skipped(path: Path, first: int, end: int) -> None:
    """Warn that frames ``first`` .. ``end - 1`` of the video ``path`` did not decode and are skipped."""
    frames = f"frame {first}" if end == first + 1 else f"frames {first}-{end - 1}"
    logger.warning("%s: %s could not be decoded (damaged data): skipped; decoding goes on at frame %d",
                   path, frames, end)


def _second(pairs: Iterator[tuple[int, np.ndarray]]) -> Iterator[np.ndarray]:
    """The frames of ``(index, frame)`` pairs; closing it closes ``pairs`` (a prefetch thread stops at once)."""
    try:
        for _, frame in pairs:
            yield frame
    finally:
        close = getattr(pairs, "close", None)
        if close is not None:
            close()


def open_frames(path: str | os.PathLike, *, start: int = 0, stop: int | None = None, stride: int = 1,
                prefetch: int = 0) -> FrameReader:
    """Open a video file, an image folder, a glob pattern or one image as a stream of RGB uint8 frames.

    Args:
        path: ``.mp4/.avi/.mov/.mkv/...`` video, a folder of ``.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp`` images
            (suffixes in any case; natural name order: ``2.png`` before ``10.png``; hidden files and the outputs of
            earlier surgical-depth runs left out, :mod:`~SurgicalDepthLib.frame_sources`), a glob such as
            ``"clip/*.png"``, or one image file. Images are read by :func:`read_image` (EXIF orientation applied,
            as viewers show them; the maps predicted follow that grid) and a video's rotation metadata is applied
            as players apply it (OpenCV's ``CAP_PROP_ORIENTATION_AUTO``; ``size`` is the rotated one).
        start, stop, stride: which source frames to yield (``range(start, stop, stride)``).
        prefetch: if > 0, decode up to this many frames ahead in a background thread.
    Returns:
        :class:`FrameReader`; iterate it (more than once if wanted) to get ``[H, W, 3]`` uint8 RGB frames.
    Raises:
        FileNotFoundError: missing path / glob matching nothing. ValueError: empty folder, unsupported suffix,
        unreadable video; during iteration, frames of different sizes (naming the file) and
        :class:`VideoDecodeError` when the frames asked for all lie past the real end of a video that holds fewer
        frames than its container announces. A video that ends early (truncated, still being written) ends there
        with a warning naming the file and both counts; frames that fail to decode in the middle are skipped with a
        warning.
    """
    return FrameReader(path, start=start, stop=stop, stride=stride, prefetch=prefetch)
