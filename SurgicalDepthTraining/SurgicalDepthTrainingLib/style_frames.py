"""Real frames that lend labeled training frames their broad look (Fourier Domain Adaptation, Yang & Soatto 2020).

A renderer's frames differ from a real scope's in their lowest spatial frequencies first: overall colour, exposure,
the broad fall-off of light. ``StyleFrames(root)`` holds a folder of real frames (no depth needed) and, with
:meth:`StyleFrames.apply`, gives a rendered frame the low-frequency amplitude of one of them
(:func:`.photometric.low_frequency_swap`): the rendered geometry (the phase) and its exact depth stay, the look
becomes a real frame's. Only the central part of each real frame is used (:data:`CENTRAL_MARGIN` cut from every
side), so the scope's black border and on-screen text never lend their darkness.

Frames are read when drawn (nothing is cached: a swap costs 15–40 ms on two CPU cores, mostly decoding the frame,
beside a training step's seconds), in the order of their paths below ``root`` (plain string order), so a run's
draws are the same on every machine.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
from SurgicalDepthLib.frame_sources import IMAGE_SUFFIXES, is_image_file
from SurgicalDepthLib.video import read_image

from .datasets.frames import frame_files
from .photometric import amplitude_spectrum, low_frequency_swap

#: fraction of the height and of the width cut from each side of a real frame before its spectrum is taken (the
#: central 60 % stays: inside the scope's circular or octagonal field of view and clear of its overlays)
CENTRAL_MARGIN = 0.2


def _image_files(root: Path) -> list[Path]:
    """The image files among a folder's frame files (:func:`.datasets.frames.frame_files`: at any depth, hidden
    files and folders skipped), in plain order of their relative paths."""
    images = [p for p in frame_files(root) if is_image_file(p)]
    return sorted(images, key=lambda p: p.relative_to(root).as_posix())


def _central(n: int) -> slice:
    """The central part of ``n`` pixels: :data:`CENTRAL_MARGIN` of ``n`` cut from each end, at least one pixel."""
    start = int(CENTRAL_MARGIN * n)
    return slice(start, max(start + 1, int((1 - CENTRAL_MARGIN) * n)))


def checked_beta(beta: tuple[float, float]) -> tuple[float, float]:
    """``beta`` as two floats ``(low, high)``; ValueError naming ``style_beta`` unless ``0 <= low <= high <= 0.5``."""
    values = tuple(float(v) for v in beta)
    if len(values) != 2 or not 0.0 <= values[0] <= values[1] <= 0.5:
        raise ValueError(f"style_beta must be (low, high) with 0 <= low <= high <= 0.5, got {tuple(beta)!r}")
    return values


class StyleFrames:
    """The real frames of ``root`` (a folder searched at any depth, or one image) for low-frequency swaps.

    Args:
        root: images of real scope video (any size; each is cropped to its centre and resized per swap).
        beta: range of the swapped window's half-width as a fraction of ``min(h, w)`` of the training frame, drawn
            uniformly per swap (Yang & Soatto use 0.01–0.09; larger windows carry more of the real frame's shading).
    Raises:
        FileNotFoundError: ``root`` missing or without images (the message names it).
        ValueError: ``beta`` not ``0 <= low <= high <= 0.5``.
    """

    def __init__(self, root: str | os.PathLike, beta: tuple[float, float] = (0.01, 0.04)) -> None:
        self.root = Path(root).expanduser()
        self.beta = checked_beta(beta)
        if not self.root.exists():
            raise FileNotFoundError(f"style frames: {self.root} does not exist")
        self.files = _image_files(self.root) if self.root.is_dir() else [self.root] if is_image_file(self.root) \
            else []
        if not self.files:
            raise FileNotFoundError(f"style frames: no image files ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def amplitude(self, index: int, height: int, width: int) -> np.ndarray:
        """``amplitude_spectrum`` (float32 ``[height, width, 3]``) of frame ``index``'s centre, resized (area
        interpolation) to ``height`` x ``width``, values in [0, 1]. A frame of one or two pixels a side gives its
        middle pixel (nothing is cut that would leave none)."""
        image = read_image(self.files[index])
        rows, cols = (_central(n) for n in image.shape[:2])
        centre = image[rows, cols]
        centre = cv2.resize(centre, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        return amplitude_spectrum(centre)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``image`` (float32 ``[h, w, 3]`` in [0, 1]) with the low frequencies of a frame drawn from ``rng``: the
        frame, then ``beta`` in ``self.beta``; the window's half-width is ``max(1, floor(beta · min(h, w)))`` bins."""
        h, w = image.shape[:2]
        reference = self.amplitude(int(rng.integers(len(self.files))), h, w)
        beta = rng.uniform(*self.beta)
        return low_frequency_swap(image, reference, max(1, int(math.floor(min(h, w) * beta))))

    def __repr__(self) -> str:
        return f"StyleFrames(root={str(self.root)!r}, files={len(self.files)}, beta={self.beta})"
