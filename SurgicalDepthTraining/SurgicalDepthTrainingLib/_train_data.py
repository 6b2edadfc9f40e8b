"""Training data: sample dicts -> fixed-size normalised tensors, with seeded augmentation.

Every random choice of a sample (crop, flip, colour jitter) comes from ``np.random.default_rng([seed, epoch,
index])``, so a sample's augmentation does not depend on worker processes, batch order or on whether the run
was interrupted and resumed.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .photometric import LUMA, augment_photometry, scope_mask
from .style_frames import StyleFrames


def round_to_multiple(size: int, multiple: int = 14) -> int:
    """Nearest multiple of ``multiple`` (halves round up), at least ``multiple``: 256 -> 252, 386 -> 392."""
    if size < 1:
        raise ValueError(f"input size must be >= 1, got {size}")
    return max(multiple, int(size / multiple + 0.5) * multiple)


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation factors in ``[1 - strength, 1 + strength]``; float32 RGB in [0, 1]."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    image = image * b
    mean = image.mean()
    image = (image - mean) * c + mean
    gray = image @ LUMA
    image = (image - gray[..., None]) * s + gray[..., None]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _hue_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Hue rotated by a fraction ``U(-strength, strength)`` of the colour circle (torchvision ``ColorJitter``'s
    hue); float32 RGB in [0, 1]."""
    hsv = cv2.cvtColor(np.ascontiguousarray(image, np.float32), cv2.COLOR_RGB2HSV)  # float: hue in degrees
    hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-strength, strength)) % 360.0
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def _endoscope_look(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``photometric.augment_photometry`` and, a third of the time, a black scope border: returns the new image
    (float32 [h, w, 3]) and the pixels still showing tissue (bool [h, w])."""
    out = augment_photometry(image, rng)
    inside = np.ones(out.shape[:2], bool)
    if rng.random() < 1 / 3:
        inside = scope_mask(out.shape[0], out.shape[1], rng)
        out[~inside] = 0.0
    return out, inside


class DepthTransform:
    """Resize (keep aspect, cover the target), crop to ``size``, optional augmentation, ImageNet normalisation.

    Input: a sample dict (``image`` uint8 [H, W, 3] RGB, ``depth`` float32 [H, W], ``valid`` bool [H, W];
    ``depth``/``valid`` optional for unlabeled data, which may carry ``valid`` alone: the scope's field of view).
    Output: ``image`` float32 [3, h, w] normalised, ``depth`` float32 [h, w] (0 where invalid), ``valid`` bool
    [h, w] (when the sample has depth or validity); with ``strong=True`` also
    ``image_strong`` (the same crop, strongly perturbed: colour jitter with hue, blur; for semi-supervised
    students).
    Depth and validity are resized with nearest neighbour so invalid pixels never blend into valid ones.
    Crops are random when ``train`` (else centred); ``augment`` adds a horizontal flip (p = 0.5) and colour
    jitter (±0.2); ``photometric`` (training with ``augment`` only) is the probability of an endoscope look
    (:mod:`.photometric`: tone curve, local adaptation, white balance, JPEG; a third of those also get a black
    scope border, whose pixels become invalid); ``style`` (training with ``augment`` only) lends a frame, with
    probability ``style_prob``, the low spatial frequencies of a real frame (:class:`.style_frames.StyleFrames`),
    after the endoscope look and before the colour jitter.
    """

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], *, train: bool,
                 augment: bool, strong: bool = False, photometric: float = 0.0, style: StyleFrames | None = None,
                 style_prob: float = 0.5) -> None:
        for name, value in (("photometric", photometric), ("style_prob", style_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        self.size = (int(size[0]), int(size[1]))
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.train, self.augment, self.strong = train, augment, strong
        self.photometric = photometric if train and augment else 0.0
        self.style, self.style_prob = (style, style_prob) if train and augment else (None, 0.0)

    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((image - self.mean) / self.std).transpose(2, 0, 1).copy())

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image = np.asarray(sample["image"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"sample 'image' must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        H, W = image.shape[:2]
        th, tw = self.size
        scale = max(th / H, tw / W)
        rh, rw = max(th, round(H * scale)), max(tw, round(W * scale))
        y0 = int(rng.integers(0, rh - th + 1)) if self.train else (rh - th) // 2
        x0 = int(rng.integers(0, rw - tw + 1)) if self.train else (rw - tw) // 2
        flip = self.augment and rng.random() < 0.5
        img = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_CUBIC)[y0:y0 + th, x0:x0 + tw]
        img = img.astype(np.float32) / 255.0
        out: dict[str, torch.Tensor] = {}

        def crop(plane: np.ndarray) -> torch.Tensor:  # nearest neighbour: invalid pixels never blend in
            plane = cv2.resize(plane, (rw, rh), interpolation=cv2.INTER_NEAREST)[y0:y0 + th, x0:x0 + tw]
            return torch.from_numpy(np.ascontiguousarray(plane[:, ::-1] if flip else plane))

        has_depth = "depth" in sample and sample["depth"] is not None
        if has_depth or sample.get("valid") is not None:  # unlabeled frames may carry a field of view only
            depth = np.asarray(sample["depth"], np.float32) if has_depth else np.ones((H, W), np.float32)
            valid = np.asarray(sample.get("valid", np.ones(depth.shape, bool)), bool)
            if depth.shape != (H, W) or valid.shape != (H, W):
                raise ValueError(f"sample depth {depth.shape} / valid {valid.shape} must match image {(H, W)}")
            valid = valid & np.isfinite(depth) & (depth > 0)
            if has_depth:
                out["depth"] = crop(np.where(valid, depth, 0))
            out["valid"] = crop(valid.astype(np.uint8)) > 0
        if flip:
            img = img[:, ::-1]
        if self.photometric > 0 and rng.random() < self.photometric:  # no draw at 0: older recipes stay exact
            img, inside = _endoscope_look(img, rng)
            if "valid" in out:
                out["valid"] &= torch.from_numpy(inside)
        if self.style is not None and rng.random() < self.style_prob:  # no draw without frames: older recipes
            img = self.style.apply(img, rng)  # stay exact
        base = _color_jitter(img, rng, 0.2) if self.augment else img
        out["image"] = self._normalise(base)
        if self.strong:  # Depth Anything's strong perturbation, with UniMatch's settings (the recipe it follows):
            # colour jitter of brightness, contrast, saturation (±0.5) and hue (±0.25), Gaussian blur (p = 0.5)
            strong = _hue_jitter(_color_jitter(img, rng, 0.5), rng, 0.25)
            if rng.random() < 0.5:
                strong = cv2.GaussianBlur(strong, (0, 0), float(rng.uniform(0.1, 2.0)))
            out["image_strong"] = self._normalise(strong)
        return out


class TransformedDataset(Dataset):
    """``base[i]`` through ``transform`` with the generator ``default_rng([seed, epoch, i])``; set ``epoch`` (an
    int, or a tuple of ints that goes in its place) before building each epoch's ``DataLoader``."""

    def __init__(self, base: Dataset, transform: DepthTransform, seed: int, indices: Sequence[int] | None = None):
        self.base, self.transform, self.seed = base, transform, int(seed)
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = self.indices[i]
        epoch = self.epoch if isinstance(self.epoch, tuple) else (self.epoch,)
        rng = np.random.default_rng([self.seed, *epoch, index])
        return self.transform(self.base[index], rng)


def open_data(name: str, root: str, split: str | None, options: dict[str, Any] | None = None) -> Dataset:
    """``open_dataset(name, root, split, **options)`` (imported on use: the loaders pull in their readers)."""
    from .datasets import open_dataset

    return open_dataset(name, root, split, **(options or {}))


def training_data(config: Any, train_data: Dataset | None,
                  val_data: Dataset | None) -> tuple[Dataset, list[int], Dataset, list[int]]:
    """``(train set, its indices, validation set, its indices)`` of a ``TrainConfig``: the given datasets, else
    ``config.dataset`` opened (``val_split`` for validation, else ``val_fraction`` held out, seeded). The
    validation split is held out of training: without ``split`` (every image found) its images are left out of
    the training set; a ``split`` that shares images with it is refused. An opened dataset's first sample is read
    here, before the run writes anything: a loader that cannot read its files as given fails at once."""
    if train_data is None:
        train_data = open_data(config.dataset, config.root, config.split, config.dataset_options)
        train_data[0]  # files the loader cannot read as given (16-bit depth without depth_scale=) fail before output
        if config.val_split is not None:
            val_data = open_data(config.dataset, config.root, config.val_split, config.dataset_options)
            val_data[0]
            train_idx = _held_out(train_data, val_data, config)
            return train_data, train_idx, val_data, list(range(len(val_data)))
    if val_data is not None:
        return train_data, list(range(len(train_data))), val_data, list(range(len(val_data)))
    train_idx, val_idx = split_indices(len(train_data), config.val_fraction, config.seed)
    return train_data, train_idx, train_data, val_idx


def _held_out(train_data: Dataset, val_data: Dataset, config: Any) -> list[int]:
    """Indices of ``train_data`` whose image is not in ``val_data`` (by file; data sets without a file list are
    taken as they are)."""
    train_pairs, val_pairs = getattr(train_data, "pairs", None), getattr(val_data, "pairs", None)
    if train_pairs is None or val_pairs is None:
        return list(range(len(train_data)))
    held = {Path(pair.rgb).resolve() for pair in val_pairs}
    keep = [i for i, pair in enumerate(train_pairs) if Path(pair.rgb).resolve() not in held]
    if len(keep) < len(train_pairs) and config.split is not None:
        raise ValueError(f"split {config.split!r} and val_split {config.val_split!r} share "
                         f"{len(train_pairs) - len(keep)} images: validation must be held out of training")
    if not keep:
        raise ValueError(f"no image is left to train on: every image is in val_split {config.val_split!r}")
    return keep


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of ``range(n)`` into ``(train, val)``, val with ``round(n·fraction)`` (>= 1) items."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2:
        raise ValueError(f"need >= 2 samples to split off a validation set, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())
