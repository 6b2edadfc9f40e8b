"""The scope's field of view: the part of an endoscopic frame that shows tissue.

Endoscopes and laparoscopes record a circular, octagonal or rectangular image inside a black frame, often with
text overlays (date, patient data, scope settings) printed on that frame. Outside the field of view there is no
tissue, so no depth. :func:`detect_fov_mask` finds it from the first frames of a clip (:class:`FovSearch`: frame
by frame, for streams and live sources; :class:`FovTracker` follows a field of view that moves later):

1. per pixel, the brightest value over the frames and colour channels (a frame border is dark in every frame;
   tissue in shadow is not dark for long while the scope moves). Blank frames (a black screen before the scope
   is on) do not count, and when most frames show a border alone, only those do (one bright or washed-out
   frame would otherwise light the whole border);
2. "dark" = at most ``dark_level`` (0–255): the border of real scopes reads 0–10 after video compression;
3. the dark pixels connected to the image edge are the border candidates; the rest, opened with a small kernel
   (cuts thin overlay text off), has one main component: the field of view is its convex hull (circles,
   octagons and rectangles are convex; the hull also keeps a dark lumen that touches the rim inside), less the
   blanked overlay boxes inside the hull (black regions whose outline steps straight up to tissue; a black lumen
   fades into dark tissue and is kept), shrunk by ``margin`` of the short side (the dim, blurred rim);
4. it is accepted only when it leaves out at least two image corners and ``min_outside`` of the image, and what it
   leaves out (before the margin) is dark (``min_dark_outside``: overlay text is a small part of a border) —
   otherwise the frames have no scope border (a dark lumen or shadow at an edge or in one corner is tissue) and
   every pixel counts (None).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from .video import decode_image_file

#: Brightest value (0–255, any channel) a border pixel may have: real scopes' borders read 0–10 after compression.
DARK_LEVEL = 20
#: Frames (not blank) read from the start of a clip to find its field of view.
FOV_FRAMES = 8
#: A frame with fewer non-dark pixels than this share of the image is blank (shows no tissue): it does not count.
BLANK_SHARE = 0.02
#: Mask files whose compression rings around edges: tissue is above half their largest value, not just nonzero.
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".webp")


def _check_frames(frames: Iterable[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(f) for f in frames]
    if not out:
        raise ValueError("detect_fov_mask: no frame given")
    for i, f in enumerate(out):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i}: expected RGB uint8 [H, W, 3], got {f.dtype} {f.shape}")
        if f.shape != out[0].shape:
            raise ValueError(f"frame {i} has shape {f.shape}, expected {out[0].shape} like the first frame")
    return out


def _edge_connected(mask: np.ndarray) -> np.ndarray:
    """bool ``[H, W]``: the True pixels of ``mask`` 8-connected to the image edge."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge != 0]
    return np.isin(labels, edge)


def _main_component_hull(inside: np.ndarray, open_px: int) -> np.ndarray:
    """Convex hull (filled, bool) of the largest 8-connected component of ``inside`` after an opening."""
    candidate = inside.astype(np.uint8)
    if open_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * open_px + 1, 2 * open_px + 1))
        candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=8)
    if n <= 1:
        return np.zeros(inside.shape, bool)
    main = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == main).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    filled = np.zeros(inside.shape, np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    return filled.astype(bool)


def _blanked_boxes(black: np.ndarray, border: np.ndarray, hull: np.ndarray, ring_px: int = 4,
                   sharp: float = 0.5) -> np.ndarray:
    """bool ``[H, W]``: the parts of ``black`` (black border pixels inside ``hull``) that are blanked overlay boxes:
    components whose outline inside the hull steps up to tissue within ``ring_px`` (at least ``sharp`` of the ring
    ``ring_px``–``2 ring_px`` pixels around them is brighter than the border; the first pixels are the step's
    compression blur). A dark lumen at the rim fades through a wider band of dark pixels (border): it is kept."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(black.astype(np.uint8), connectivity=8)
    boxes = np.zeros(black.shape, bool)
    near, far = (cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) for r in (ring_px, 2 * ring_px))
    pad = 2 * ring_px
    for label in range(1, n):
        x, y, w, h = stats[label, :4]
        window = (slice(max(y - pad, 0), y + h + pad), slice(max(x - pad, 0), x + w + pad))  # the ring's reach
        part = labels[window] == label
        grown = [cv2.dilate(part.astype(np.uint8), k).astype(bool) for k in (near, far)]
        ring = grown[1] & ~grown[0] & hull[window]
        if ring.any() and (~border[window][ring]).mean() >= sharp:
            boxes[window] |= part
    return boxes


def detect_fov_mask(frames: Iterable[np.ndarray], *, dark_level: int = DARK_LEVEL, margin: float = 0.005,
                    min_outside: float = 0.005, min_dark_outside: float = 0.9) -> np.ndarray | None:
    """Field of view of a scope from one or more RGB frames (see the module docstring).

    Args:
        frames: RGB uint8 ``[H, W, 3]`` frames of one clip (the first :data:`FOV_FRAMES` are enough).
        dark_level: brightest value (0–255, any channel) a border pixel may have.
        margin: the field of view is eroded by this fraction of the short image side (at least 1 pixel).
        min_outside: smallest fraction of the image a border must cover to count.
        min_dark_outside: fraction of the pixels outside the field of view that must be dark.
    Returns:
        bool ``[H, W]`` (True = tissue), or None when the frames have no scope border (or are all blank).
    """
    search = FovSearch(None, dark_level=dark_level, margin=margin, min_outside=min_outside,
                       min_dark_outside=min_dark_outside)
    for rgb in _check_frames(frames):
        search.add(rgb)
    return search.mask


class FovSearch:
    """The field of view of one source, found from its frames as they come (``"auto"`` of streams and live
    sources; :func:`detect_fov_mask` is one search over a list). Each :meth:`add` ed frame that is not blank counts,
    up to ``frames`` of them (None: no limit); :attr:`mask` is the field of view found from those so far (None: no
    border, or nothing counted yet), the same array object for as long as it does not change. Holds two
    ``[H, W]`` uint8 peaks until it has settled, nothing after that."""

    def __init__(self, frames: int | None = FOV_FRAMES, **detect_options: float) -> None:
        self.limit, self.counted, self.mask = frames, 0, None
        self._options = detect_options
        self._shape: tuple[int, ...] | None = None
        self._peaks: list[np.ndarray | None] = [None, None]  # over every counted frame / those that show a border
        self._with_border = 0

    @property
    def settled(self) -> bool:
        return self.limit is not None and self.counted >= self.limit

    def add(self, rgb: np.ndarray) -> bool:
        """Take RGB uint8 ``[H, W, 3]`` ``rgb`` into the search; returns whether it counted (False when settled,
        blank, or of another size than the first frame)."""
        if self.settled:  # live sources call this for every frame: nothing to compute once settled
            return False
        level = _brightest(rgb)
        if self._shape not in (None, level.shape) or _is_blank(level, self._options.get("dark_level", DARK_LEVEL)):
            return False
        self._shape, self.counted = level.shape, self.counted + 1
        own = _mask_of_peak(level, **self._options)
        if own is not None:  # this frame alone shows a border
            self._with_border += 1
            self._peaks[1] = level if self._peaks[1] is None else np.maximum(self._peaks[1], level)
        self._peaks[0] = level if self._peaks[0] is None else np.maximum(self._peaks[0], level)
        peak = self._peaks[1] if 2 * self._with_border > self.counted else self._peaks[0]
        mask = own if self.counted == 1 else _mask_of_peak(peak, **self._options)  # one frame: its peak is itself
        if mask is None or self.mask is None or not np.array_equal(mask, self.mask):
            self.mask = mask
        if self.settled:
            self._peaks = [None, None]
        return True


class FovTracker:
    """The field of view of a clip frame by frame, after its first search (``initial``: :class:`FovSearch`'s mask,
    None when it found no border): the frames that are not blank are searched again in windows of ``window`` (the
    peak of each window, one detection per window), and a window's mask replaces the current one when they overlap
    less than ``min_iou`` (intersection over union): a scope image that moves in the frame (a laparoscope turned or
    zoomed in its camera coupler), or a border that appears only after the first frames. A window that finds no
    border (a washed-out frame lights the border) changes nothing. Holds one ``[H, W]`` uint8 peak."""

    def __init__(self, initial: np.ndarray | None, window: int = 25, min_iou: float = 0.98) -> None:
        self.mask, self.window, self.min_iou = initial, window, min_iou
        self.blank = False  # whether the frame of the last update was blank (shows no tissue)
        self._peak: np.ndarray | None = None
        self._count = 0

    def update(self, rgb: np.ndarray) -> np.ndarray | None:
        """The field of view for RGB uint8 ``[H, W, 3]`` ``rgb`` (found from the frames before it as well); sets
        :attr:`blank` for ``rgb``."""
        level = _brightest(rgb)
        self.blank = _is_blank(level)
        if self.blank:
            return self.mask
        same = self._peak is not None and self._peak.shape == level.shape
        self._peak = np.maximum(self._peak, level, out=self._peak) if same else level
        self._count = self._count + 1 if same else 1
        if self._count >= self.window:
            found, self._peak = _mask_of_peak(self._peak), None
            if found is not None and (self.mask is None or self.mask.shape != found.shape
                                      or _iou(found, self.mask) < self.min_iou):
                self.mask = found
        return self.mask


def _brightest(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]``: the brightest channel of each pixel of RGB ``[H, W, 3]`` (ten times faster than
    ``max(axis=2)``, which reduces over the innermost, 3-long axis one pixel at a time: 32 ms at 720p)."""
    rgb = np.asarray(rgb)
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def is_blank(rgb: np.ndarray) -> bool:
    """Whether RGB uint8 ``[H, W, 3]`` ``rgb`` shows no tissue: fewer than :data:`BLANK_SHARE` of its pixels are
    brighter than :data:`DARK_LEVEL` in any channel (a black screen before the scope is on, or between scenes)."""
    return _is_blank(_brightest(rgb))


def _is_blank(level: np.ndarray, dark_level: int = DARK_LEVEL) -> bool:
    """Whether a frame's brightest channel per pixel (uint8 ``[H, W]``) shows no tissue (:data:`BLANK_SHARE`)."""
    return np.count_nonzero(level > dark_level) < BLANK_SHARE * level.size


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b)) / max(1, np.count_nonzero(a | b))


def _border_floor(peak: np.ndarray, flat: int = 12, highest: int = 40) -> int:
    """The black level (0–255) of a scope border in ``peak`` (uint8 ``[H, W]``): the median of the image corner
    that is second darkest (a border darkens two corners at least), when that corner is flat (its 10th to 90th
    percentile within ``flat``) and at most ``highest``; else 0. Analogue capture cards and 10-bit video scaled to
    8 bits put black at 16 with noise, and some scopes' borders are dark grey (20–30): the peak over frames and
    channels of such a border lies above :data:`DARK_LEVEL`, so the border was not found at all."""
    k = max(2, round(0.02 * min(peak.shape)))
    corners = [peak[:k, :k], peak[:k, -k:], peak[-k:, :k], peak[-k:, -k:]]
    corner = sorted(corners, key=np.median)[1]
    low, mid, high = np.percentile(corner, (10, 50, 90))
    return int(mid) if high - low <= flat and mid <= highest else 0


#: Short side (pixels) above which the field of view is found on a max-pooled peak (4K: 0.9 s a detection before).
WORK_SIDE = 540


def _max_pooled(peak: np.ndarray) -> tuple[np.ndarray, int]:
    """``peak`` (uint8 ``[H, W]``) max-pooled by the integer factor that brings its short side to at most
    :data:`WORK_SIDE` (a block is dark only when all its pixels are), and that factor (1: unchanged)."""
    f = -(-min(peak.shape) // WORK_SIDE)
    if f == 1:
        return peak, 1
    h, w = peak.shape
    padded = np.pad(peak, ((0, -h % f), (0, -w % f)), mode="edge")
    return padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).max(axis=(1, 3)), f


def _mask_of_peak(peak: np.ndarray, *, dark_level: int = DARK_LEVEL, margin: float = 0.005,
                  min_outside: float = 0.005, min_dark_outside: float = 0.9) -> np.ndarray | None:
    """Steps 2–4 of the module docstring on ``peak`` (uint8 ``[H, W]``: brightest value per pixel), found on its
    max-pooled copy (:func:`_max_pooled`) and scaled back before the margin."""
    small, f = _max_pooled(peak)
    fov = _fov_of_peak(small, dark_level, min_outside, min_dark_outside)
    if fov is None:
        return None
    if f > 1:
        h, w = peak.shape
        fov = cv2.resize(fov.astype(np.uint8) * 255, (fov.shape[1] * f, fov.shape[0] * f),
                         interpolation=cv2.INTER_LINEAR)[:h, :w] >= 128
    erode = max(1, round(margin * min(peak.shape)))
    fov = cv2.erode(fov.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                    (2 * erode + 1, 2 * erode + 1))).astype(bool)
    return fov if fov.any() else None


def _fov_of_peak(peak: np.ndarray, dark_level: int, min_outside: float, min_dark_outside: float) -> np.ndarray | None:
    """The field of view (bool ``[H, W]``, before the margin) of ``peak`` (uint8 ``[H, W]``), or None."""
    level = max(dark_level, _border_floor(peak) + dark_level // 2)
    dark = peak <= level
    border = _edge_connected(dark)
    if border.mean() < min_outside:
        return None
    short = min(peak.shape)
    fov = _main_component_hull(~border, open_px=max(1, round(0.01 * short)))
    black = fov & border & (peak <= level - dark_level + dark_level // 4)  # black: a quarter of dark
    fov &= ~_blanked_boxes(black, border, fov, max(3, round(0.008 * short)))
    corners = fov[[0, 0, -1, -1], [0, -1, 0, -1]]
    if np.count_nonzero(~corners) < 2:  # a scope's frame darkens two corners at least; one is a lumen or shadow
        return None
    outside = ~fov  # before the margin: the dim rim it takes off is tissue, not border
    if not fov.any() or outside.mean() < min_outside or dark[outside].mean() < min_dark_outside:
        return None
    return fov


def nan_outside(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``values`` (float ``[H, W]``) with NaN outside the field of view ``mask`` (None: unchanged); in place."""
    if mask is not None:
        values[~mask] = np.nan
    return values


def check_fov_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An explicit field-of-view mask as bool ``[H, W]`` (nonzero = tissue); ValueError on a shape mismatch."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (1, 3, 4):  # a mask image read as colour
        m = m[..., 0]
    if m.shape != tuple(shape):
        raise ValueError(f"fov_mask has shape {m.shape}, expected {tuple(shape)} (height, width) like the frames: "
                         "a field-of-view mask must have the size of the frames it masks")
    if not m.any():
        raise ValueError("fov_mask is empty: no pixel is inside the field of view")
    return m.astype(bool)


def write_fov_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Save a field-of-view mask as an 8-bit PNG (255 = tissue, 0 = outside), atomically."""
    from .atomic_io import atomic_path

    path = Path(path)
    ok, buf = cv2.imencode(".png", np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))
    if not ok:
        raise ValueError(f"could not encode the field-of-view mask for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def read_fov_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image (any 8/16-bit PNG, TIFF, JPEG, ...) as bool ``[H, W]``: nonzero = tissue; in a lossy file
    (JPEG, WebP) above half its largest value, since its compression rings around the edge. Read from its bytes
    (:func:`~.video.decode_image_file`: a non-ASCII path, such as Slicer's temp folder under an accented user name,
    opens on Windows too)."""
    mask = decode_image_file(path, cv2.IMREAD_ANYDEPTH) if os.path.isfile(path) else None  # grey, 16 bits kept
    if mask is None:
        raise FileNotFoundError(f"field-of-view mask {path} does not exist or is not an image")
    return mask > (mask.max() / 2 if Path(path).suffix.lower() in LOSSY_SUFFIXES else 0)
