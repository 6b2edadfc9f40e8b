"""Shared machinery of the dataset loaders: the ``DepthDataset`` class, pair matching and file readers.

Every loader yields the same sample dict (documented once, here):

- ``image``: uint8 ``[H, W, 3]`` RGB;
- ``depth``: float32 ``[H, W]``, millimetres when ``depth_unit == "mm"``, unitless when ``"relative"``;
  0 where not valid;
- ``valid``: bool ``[H, W]``, pixels whose stored value encodes a depth (the dataset's invalid code excluded);
  the evaluation range ``[min_depth, max_depth]`` is *not* applied here (evaluation applies it);
- ``depth_unit``: ``"mm"`` or ``"relative"`` (also an attribute of the dataset);
- ``intrinsics``: :class:`SurgicalDepthLib.camera.Intrinsics` of this image, or None;
- ``pose``: float64 ``[4, 4]`` camera-to-world (mm), or None;
- ``name``: the source RGB file path (str).

Listing (construction) only walks folders and matches names: no image is decoded until ``__getitem__``.
Nothing in a dataset folder is ever written.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthLib.text_files import read_text_file
from SurgicalDepthLib.frame_sources import natural_key
from SurgicalDepthLib.video import decode_image_file, read_image

logger = logging.getLogger(__name__)

DEPTH_UNITS = ("mm", "relative")


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class Pair:
    """One RGB file and its depth file, plus the sequence folder and frame index the loader needs."""

    rgb: Path
    depth: Path
    sequence: Path
    index: int | None = None


# ---------------------------------------------------------------------------------------------- file readers
def _imread(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    img = decode_image_file(path, flags)  # from the bytes: non-ASCII paths open on Windows too
    if img is None:
        hint = (" (OpenEXR needs OPENCV_IO_ENABLE_OPENEXR=1 set before Python starts)"
                if path.suffix.lower() == ".exr" else "")
        raise DatasetError(f"{path}: unreadable image file (OpenCV could not decode it){hint}")
    return img


def read_rgb(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB from an 8- or 16-bit grey/RGB/RGBA image (:func:`SurgicalDepthLib.video.read_image`
    on the stored pixel grid: an EXIF orientation tag is not applied, the depth map is aligned to the stored pixels)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return read_image(path, orientation=False)
    except ValueError as exc:  # the message names the file
        raise DatasetError(str(exc)) from exc


def read_tiff(path: Path) -> np.ndarray:
    """The stored array of a TIFF file, channels in stored order (SimpleITK: uint16 and float32, single- or
    multi-channel, are read without conversion; ``cv2.imread`` would reverse a 3-channel file's order)."""
    import SimpleITK as sitk  # lazy: heavy import

    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:  # SimpleITK reports every read failure as RuntimeError
        reason = str(exc).strip().splitlines()[-1]
        raise DatasetError(f"{path}: unreadable TIFF file ({reason})") from exc


def read_raw(path: Path) -> np.ndarray:
    """The stored array of an image file, unchanged (TIFF via SimpleITK, .npy via numpy, others via
    ``cv2.IMREAD_UNCHANGED``)."""
    import cv2  # lazy: heavy import

    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise DatasetError(f"{path}: file not found")
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DatasetError(f"{path}: unreadable .npy file ({exc})") from exc
    return _imread(path, cv2.IMREAD_UNCHANGED)


def read_text(path: Path, what: str) -> str:
    """The text of a dataset's small text file (calibration, poses, split list, metadata); a binary or
    non-UTF-8 file raises :class:`DatasetError` naming it (``Path.read_text`` names only the codec)."""
    try:
        return read_text_file(path, what)
    except (ValueError, FileNotFoundError) as exc:
        raise DatasetError(str(exc)) from None


def read_uint16(path: Path) -> np.ndarray:
    """uint16 ``[H, W]`` from a single-channel 16-bit PNG/TIFF; 8-bit or multi-channel files are refused.

    ``cv2.imread(path)`` with default flags would convert a 16-bit file to 8 bits (dropping the low byte),
    so the file is read unchanged and its dtype checked.
    """
    arr = read_raw(path)
    if arr.dtype != np.uint16:
        bits = f"{arr.dtype.itemsize * 8}-bit" if arr.dtype.kind in "ui" else str(arr.dtype)
        raise DatasetError(f"{path}: depth file is {bits} {arr.dtype}, expected 16-bit unsigned (uint16)")
    if arr.ndim != 2:
        raise DatasetError(f"{path}: depth file has shape {arr.shape}, expected a single-channel [H, W] image")
    return arr


# ---------------------------------------------------------------------------------------------- listing helpers
def check_root(root: str | os.PathLike, dataset: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{dataset} dataset root not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{dataset} dataset root must be a folder, got a file: {path}")
    return path


def natural_order(path: Path) -> tuple[list, str]:
    """Sort key of a file: its path in natural order (``frame_2`` before ``frame_10``), then as stored
    (deterministic when names differ only in case)."""
    return natural_key(path.as_posix()), path.as_posix()


def sorted_files(folder: Path, pattern: str | re.Pattern) -> list[tuple[re.Match, Path]]:
    """Files of ``folder`` whose name fully matches ``pattern``, in natural name order (:func:`natural_order`;
    frame numbers need not be zero-padded)."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            m = rx.fullmatch(entry.name)
            if m and entry.is_file():
                out.append((m, Path(entry.path)))
    return sorted(out, key=lambda mp: natural_order(Path(mp[1].name)))


def find_dirs(root: Path, predicate: Callable[[Path], bool], max_depth: int = 5) -> list[Path]:
    """Folders at or below ``root`` (up to ``max_depth`` levels) satisfying ``predicate``, sorted; a matching
    folder is not searched further."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if predicate(folder):
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        except PermissionError:
            logger.warning("cannot list %s (permission denied); skipped", folder)
            return
        for child in children:
            walk(child, depth + 1)

    walk(root, 0)
    return found


def child_dir(folder: Path, *names: str) -> Path | None:
    """The sub-folder of ``folder`` whose name equals one of ``names`` ignoring case, spaces and underscores."""
    def key(s: str) -> str:
        return re.sub(r"[\s_\-]", "", s).lower()

    wanted = {key(n) for n in names}
    try:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_dir() and key(entry.name) in wanted:
                return Path(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return None


def frame_number(name: str) -> int | None:
    """The last run of digits in a file stem, as an int (None when there is none)."""
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else None


# ---------------------------------------------------------------------------------------------- the Dataset
class DepthDataset(Dataset):
    """Base class: a sorted list of :class:`Pair` and a per-dataset depth decoder.

    Subclasses set the class attributes ``name``, ``depth_unit``, ``min_depth``/``max_depth`` (default
    evaluation range, mm; None for relative data) and implement :meth:`_list_pairs` and :meth:`decode_depth`;
    they may override :meth:`intrinsics_for` and :meth:`pose_for`.

    Common options: ``skip_bad`` (bool, default False): pairs whose depth file is missing are dropped at
    listing, and pairs that fail to read (wrong size, 8-bit where 16-bit is required, all-invalid, unreadable)
    are replaced in ``__getitem__`` by the next readable pair; each is logged as a warning and counted in
    ``skipped`` (names in ``bad``). Without it, the first bad pair raises :class:`DatasetError`.
    ``min_depth``/``max_depth`` override the default range; ``intrinsics`` (an ``Intrinsics`` or a calibration
    file) overrides the dataset's camera.
    """

    name: str = ""
    depth_unit: str = "mm"
    min_depth: float | None = 1e-3
    max_depth: float | None = None

    def __init__(self, root: str | os.PathLike, split: str | Sequence[str] | None = None, *,
                 skip_bad: bool = False, min_depth: float | None = None, max_depth: float | None = None,
                 intrinsics: Intrinsics | str | os.PathLike | None = None) -> None:
        super().__init__()
        self.root = check_root(root, self.name)
        self.split = split
        self.skip_bad = bool(skip_bad)
        self.skipped = 0
        self.bad: list[str] = []
        self._bad_set: set[str] = set()
        if min_depth is not None:
            self.min_depth = float(min_depth)
        if max_depth is not None:
            self.max_depth = float(max_depth)
        if self.min_depth is not None and self.max_depth is not None and not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"{self.name}: need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        self._intrinsics_override = self._parse_intrinsics(intrinsics)
        self._override_cache: dict[tuple[int, int], Intrinsics] = {}
        pairs = self._list_pairs()
        if not pairs:
            raise FileNotFoundError(f"{self.name}: no RGB/depth pairs found under {self.root}"
                                    f"{'' if split is None else f' for split {split!r}'}; {self.layout_hint()}")
        self.pairs: list[Pair] = pairs

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The keyword options this loader takes: the keyword parameters of its ``__init__`` and, where that
        passes ``**options`` on, those of the base classes' (``root`` and ``split`` excluded)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]  # without self
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            if klass is DepthDataset or not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return frozenset(names - {"root", "split"})

    # -------------------------------------------------------------- to implement
    def _list_pairs(self) -> list[Pair]:
        raise NotImplementedError

    def decode_depth(self, raw_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Read one depth file -> (depth float32 [H, W] in ``depth_unit``, valid bool [H, W])."""
        raise NotImplementedError

    def layout_hint(self) -> str:
        return "see the loader's docstring for the expected layout"

    def intrinsics_for(self, pair: Pair, width: int, height: int) -> Intrinsics | None:
        return None

    def pose_for(self, pair: Pair) -> np.ndarray | None:
        return None

    # -------------------------------------------------------------- helpers for subclasses
    @staticmethod
    def _parse_intrinsics(value: Intrinsics | str | os.PathLike | None) -> Intrinsics | Path | None:
        """The ``intrinsics=`` override: an ``Intrinsics``, or a calibration file checked now and read per image
        size in :meth:`_override_for` (a bare 3x3 K states no size: it is the images' own)."""
        from SurgicalDepthLib.calibration_files import check_calibration_file  # lazy: heavy import

        if value is None or isinstance(value, Intrinsics):
            return value
        if isinstance(value, (str, os.PathLike)):
            check_calibration_file(Path(value))
            return Path(value)
        raise TypeError(f"intrinsics must be an Intrinsics, a calibration file path or None, "
                        f"got {type(value).__name__}")

    def _override_for(self, rgb: Path, width: int, height: int) -> Intrinsics:
        """The ``intrinsics=`` override fitted to a ``width x height`` image: rescaled from another size of the same
        aspect ratio; another aspect ratio raises :class:`DatasetError` (stretching would skew the camera)."""
        from SurgicalDepthLib.calibration_files import read_calibration_at  # lazy: heavy import

        given = self._intrinsics_override
        if (width, height) not in self._override_cache:
            intr = given if isinstance(given, Intrinsics) else read_calibration_at(given, width, height)
            try:
                self._override_cache[width, height] = intr.fitted(width, height)
            except ValueError as exc:
                source = "" if isinstance(given, Intrinsics) else f" from {given}"
                raise DatasetError(f"{rgb}: intrinsics{source}: {exc}") from None
        return self._override_cache[width, height]

    def _missing(self, rgb: Path, depth: Path) -> None:
        """An RGB without its depth file: raise, or (``skip_bad``) log and count."""
        msg = f"{rgb}: RGB image has no depth file (expected {depth})"
        if not self.skip_bad:
            raise DatasetError(msg)
        logger.warning("%s: skipped: %s", self.name, msg)
        self._mark_bad(rgb)

    def _mark_bad(self, rgb: Path) -> None:
        self.skipped += 1
        self.bad.append(str(rgb))
        self._bad_set.add(str(rgb))

    def _pairs_by_index(self, rgbs: Iterable[tuple[int, Path]], depths: dict[int, Path], sequence: Path,
                        expected: Callable[[int, Path], Path]) -> list[Pair]:
        out = []
        for idx, rgb in rgbs:
            depth = depths.get(idx)
            if depth is None:
                self._missing(rgb, expected(idx, rgb))
                continue
            out.append(Pair(rgb, depth, sequence, idx))
        return out

    # -------------------------------------------------------------- Dataset protocol
    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.pairs)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} pairs")
        index %= n
        if not self.skip_bad:
            return self.load(self.pairs[index])
        for k in range(n):
            pair = self.pairs[(index + k) % n]
            if str(pair.rgb) in self._bad_set:
                continue
            try:
                return self.load(pair)
            except DatasetError as exc:
                logger.warning("%s: skipped bad pair: %s", self.name, exc)
                self._mark_bad(pair.rgb)
        raise DatasetError(f"{self.name}: every pair under {self.root} is bad ({len(self.bad)} skipped)")

    def load(self, pair: Pair) -> dict[str, Any]:
        """Read one pair into a sample dict (see the module docstring); raises :class:`DatasetError`."""
        image = read_rgb(pair.rgb)
        depth, valid = self.decode_depth(pair.depth)
        if depth.shape != image.shape[:2]:
            raise DatasetError(f"{pair.depth}: depth is {depth.shape[1]}x{depth.shape[0]} (WxH) but its RGB "
                               f"{pair.rgb} is {image.shape[1]}x{image.shape[0]}")
        if not valid.any():
            raise DatasetError(f"{pair.depth}: depth has no valid pixel (all values are the invalid code)")
        depth = np.where(valid, depth, 0).astype(np.float32, copy=False)
        h, w = depth.shape
        if self._intrinsics_override is not None:
            intr = self._override_for(pair.rgb, w, h)
        else:
            intr = self.intrinsics_for(pair, w, h)
        return {"image": image, "depth": depth, "valid": valid, "depth_unit": self.depth_unit,
                "intrinsics": intr, "pose": self.pose_for(pair), "name": str(pair.rgb)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self.pairs)}, "
                f"depth_unit={self.depth_unit!r}, range=[{self.min_depth}, {self.max_depth}])")


def uint16_linear(path: Path, mm_per_unit: float, invalid: Sequence[int] = (0,)) -> tuple[np.ndarray, np.ndarray]:
    """Depth from a 16-bit file with ``depth_mm = value * mm_per_unit``; values in ``invalid`` are invalid."""
    raw = read_uint16(path)
    valid = ~np.isin(raw, np.asarray(invalid, dtype=np.uint16))
    return (raw.astype(np.float32) * np.float32(mm_per_unit)), valid


def select_split(names: Sequence[str], split: str | Sequence[str] | None, dataset: str,
                 normalise: Callable[[str], str] = lambda s: s.lower()) -> set[str] | None:
    """The set of normalised split names asked for (None = all); a comma-separated string is split."""
    if split is None:
        return None
    items = [s.strip() for s in split.split(",")] if isinstance(split, str) else [str(s) for s in split]
    wanted = {normalise(s) for s in items if s}
    if not wanted:
        raise ValueError(f"{dataset}: empty split {split!r}; expected one of {list(names)}")
    return wanted


def collate_samples(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``DataLoader`` ``collate_fn`` for sample dicts: numpy arrays of equal shape are stacked into tensors
    (``image`` uint8 [B, H, W, 3], ``depth`` float32 [B, H, W], ``valid`` bool [B, H, W]); other values
    (``intrinsics``, ``pose`` — either may be None —, ``name``, ``depth_unit``) and arrays of differing shapes
    stay lists of length B. (torch's default collate cannot take None or ``Intrinsics``.)"""
    import torch  # lazy: heavy import

    if not batch:
        raise ValueError("collate_samples: empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if all(isinstance(v, np.ndarray) for v in values) and len({v.shape for v in values}) == 1 \
                and key != "pose":
            out[key] = torch.from_numpy(np.stack(values))
        else:
            out[key] = values
    return out
