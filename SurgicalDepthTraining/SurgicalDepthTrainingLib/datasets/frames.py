"""Unlabeled frames for semi-supervised training (``frames``): images and videos, no depth files.

``UnlabeledFrames(root)`` lists every frame of ``root``: a video file, one image, or a folder searched at any depth
for images and videos (the suffixes of :mod:`SurgicalDepthLib.video`; hidden files and folders skipped; natural
name order). Samples are dicts with ``image`` (uint8 ``[H, W, 3]`` RGB), ``name`` (a video frame's name is
``path#index``) and, where the frame shows a scope's black border, ``valid`` (bool ``[H, W]``, True = tissue): the
field of view of :func:`SurgicalDepthLib.fov.detect_fov_mask`, found once per image (then kept, bit-packed: a
training run draws each image many times) and per video once from its first
:data:`~SurgicalDepthLib.fov.FOV_FRAMES` frames. Without it a teacher's pseudo-label on the border and on
burned-in text would be fitted like tissue. Frames of one root may differ in size: the training transform resizes
each.

``open_unlabeled(name, root)`` opens the unlabeled set of a training run: ``"frames"`` (the default) is this
dataset; any loader name of :data:`.DATASETS` gives that dataset's images (its depth is never used).
"""
from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from SurgicalDepthLib.fov import FOV_FRAMES, detect_fov_mask
from SurgicalDepthLib.frame_sources import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, frame_source_kind, is_image_file,
                                            is_video_file, natural_key)
from SurgicalDepthLib.video import count_video_frames, open_frames, read_image, read_video_frame
from torch.utils.data import Dataset

UNLABELED_FRAMES = "frames"
logger = logging.getLogger(__name__)


def frame_files(root: Path) -> list[Path]:
    """Image and video files at or below ``root`` (natural order of their relative paths)."""
    try:
        kind = frame_source_kind(root)  # ``root`` exists: "folder", "image" or "video"
    except ValueError as exc:  # a file of another kind
        raise ValueError(f"unlabeled frames: {exc}") from None
    if kind != "folder":
        return [root]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files
                  if not f.startswith(".") and (is_image_file(f) or is_video_file(f))]
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def _video_frames(path: Path) -> int:
    """Frames of the video ``path`` up to its real end: its container's count when the last of them decodes (one
    seek), else counted by decoding (a truncated file, one still being written, an estimated count), so that no
    drawn index lies past the end in the middle of a training run."""
    announced = len(open_frames(path))
    try:
        read_video_frame(path, announced - 1)
        return announced
    except ValueError:
        import cv2

        capture = cv2.VideoCapture(str(path))
        try:
            count = count_video_frames(capture)
        finally:
            capture.release()
        logger.warning("unlabeled frames: %s: the container announces %d frames, %d decode; those are used", path,
                       announced, count)
        return count


class ImageFovMasks:
    """The field of view of each image, found on its first read (:func:`detect_fov_mask`; None: no scope border)
    and kept bit-packed under the image's key (1 bit a pixel: a training run draws each image many times)."""

    def __init__(self) -> None:
        self._packed: dict[Any, tuple[np.ndarray, tuple[int, int]] | None] = {}

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, key: Any) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The packed mask kept for ``key`` (bits, shape), or None for an image without a border."""
        return self._packed[key]

    def mask(self, key: Any, image: np.ndarray) -> np.ndarray | None:
        """bool ``[H, W]`` field of view of ``image`` (True = tissue), None when it shows no scope border."""
        if key not in self._packed:
            fov = detect_fov_mask([image])
            self._packed[key] = None if fov is None else (np.packbits(fov, axis=None), fov.shape)
        if self._packed[key] is None:
            return None
        bits, shape = self._packed[key]
        return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


class UnlabeledFrames(Dataset):
    """Every frame under ``root`` (see the module docstring); ``files`` lists the sources, ``len`` counts frames.

    Raises:
        FileNotFoundError: ``root`` missing, or no image or video file under it (the message names ``root``).
        ValueError: ``root`` is a file of another kind, or a video that cannot be opened.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(f"unlabeled frames: {self.root} does not exist")
        self.files = frame_files(self.root)
        if not self.files:
            raise FileNotFoundError(f"unlabeled frames: no image ({', '.join(IMAGE_SUFFIXES)}) or video "
                                    f"({', '.join(VIDEO_SUFFIXES)}) files under {self.root}")
        self._videos = {p for p in self.files if is_video_file(p)}
        counts = [_video_frames(p) if p in self._videos else 1 for p in self.files]
        self._video_fov: dict[Path, np.ndarray | None] = {}
        self._image_fov = ImageFovMasks()
        self._starts = [0]
        for n in counts:
            self._starts.append(self._starts[-1] + n)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"unlabeled frames: index {index} out of range for {len(self)} frames")
        k = bisect.bisect_right(self._starts, index) - 1
        path = self.files[k]
        if path in self._videos:
            frame = index - self._starts[k]
            sample = {"image": read_video_frame(path, frame), "name": f"{path}#{frame}"}
            fov = self._fov_of_video(path, self._starts[k + 1] - self._starts[k])
        else:
            sample = {"image": read_image(path), "name": str(path)}
            fov = self._image_fov.mask(path, sample["image"])
        if fov is not None and fov.shape == sample["image"].shape[:2]:
            sample["valid"] = fov
        return sample

    def _fov_of_video(self, path: Path, frames: int) -> np.ndarray | None:
        """The field of view of a video (None: no scope border), found once from its first frames."""
        if path not in self._video_fov:
            head = [read_video_frame(path, i) for i in range(min(frames, FOV_FRAMES))]
            same = [f for f in head if f.shape == head[0].shape]
            self._video_fov[path] = detect_fov_mask(same)
        return self._video_fov[path]

    def __repr__(self) -> str:
        return f"UnlabeledFrames(root={str(self.root)!r}, files={len(self.files)}, frames={len(self)})"


def open_unlabeled(name: str, root: str | os.PathLike) -> Dataset:
    """The unlabeled frames of a training run: ``"frames"`` -> :class:`UnlabeledFrames` (image folder or video),
    a dataset loader name -> ``open_dataset(name, root)`` (its images; the depth is ignored).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones); see :class:`UnlabeledFrames`.
    """
    from . import DATASETS, open_dataset

    key = str(name).lower()
    if key == UNLABELED_FRAMES:
        return UnlabeledFrames(root)
    if key not in DATASETS:
        raise ValueError(f"unknown unlabeled dataset {name!r}; expected {UNLABELED_FRAMES!r} (image folders and "
                         f"videos, no depth needed) or one of {list(DATASETS)}")
    return open_dataset(key, root)
