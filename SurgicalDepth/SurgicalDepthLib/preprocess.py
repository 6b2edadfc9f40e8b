"""Official Depth Anything input preprocessing (Depth-Anything-V2 ``dpt.py::image2tensor`` with
``util/transform.py``): RGB/255, resize keeping the aspect ratio so both sides are ≥ ``input_size`` and multiples
of 14 ("lower_bound"), OpenCV bicubic, ImageNet mean/std, HWC → CHW float32; on a GPU the same steps run on
the device (:func:`preprocess_on_device`).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .configs import IMAGENET_MEAN, IMAGENET_STD


def _constrain_to_multiple_of(x: float, multiple: int, min_val: int) -> int:
    # util/transform.py Resize.constrain_to_multiple_of: round, and ceil when rounding fell below the minimum
    y = int(np.round(x / multiple) * multiple)
    if y < min_val:
        y = int(np.ceil(x / multiple) * multiple)
    return y


#: farthest apart the sides of a frame may be (8:1). Read at its aspect ratio a 4000x10 strip is a 72800x182 network
#: input at the default model's size (67,600 tokens, minutes of attention); no scope's frame comes near 8:1.
MAX_ASPECT_RATIO = 8


def official_input_size(height: int, width: int, input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """Network input ``(height, width)`` for an image of ``height × width`` (official "lower_bound" resize: both
    sides >= ``input_size``, multiples of ``multiple``; like the official ``image2tensor``, an ``input_size`` that
    is no multiple of 14 is accepted, e.g. 50 gives 56). Sides more than :data:`MAX_ASPECT_RATIO` apart are a
    ValueError."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not isinstance(input_size, (int, np.integer)) or input_size <= 0:
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ValueError(f"an image of {width}x{height} pixels has sides further apart than {MAX_ASPECT_RATIO}:1 "
                         "(read at its aspect ratio it would be an enormous network input); crop it first")
    scale = max(input_size / height, input_size / width)
    return (_constrain_to_multiple_of(scale * height, multiple, input_size),
            _constrain_to_multiple_of(scale * width, multiple, input_size))


def check_rgb(rgb: np.ndarray, name: str = "rgb") -> None:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB image [H, W, 3], got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {rgb.dtype}")


def preprocess(rgb: np.ndarray, input_size: int = 518, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               multiple: int = 14) -> np.ndarray:
    """One RGB frame → normalised network input.

    Args:
        rgb: uint8 ``[H, W, 3]``, RGB order.
        input_size: lower bound of both network input sides (multiple of 14).
    Returns:
        float32 ``[3, h, w]`` with h, w from :func:`official_input_size`.
    """
    check_rgb(rgb)
    h, w = official_input_size(rgb.shape[0], rgb.shape[1], input_size, multiple)
    # float32 instead of the official float64: differences ~1e-7, half the memory traffic
    image = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
    image -= np.asarray(mean, dtype=np.float32)
    image /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def preprocess_on_device(frames: torch.Tensor, input_size: int = 518, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         multiple: int = 14) -> torch.Tensor:
    """:func:`preprocess` for a batch already on its device (a GPU), so the host only decodes and uploads uint8.

    Same steps in torch: /255, bicubic resize (PyTorch's and OpenCV's INTER_CUBIC are the same Keys kernel,
    a = -0.75, half-pixel centres, clamped borders; they differ by ≤ 2e-4 of the [0, 1] range — OpenCV's kernel
    weights are rounded — i.e. < 0.06 grey levels), ImageNet mean/std.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB on any device.
    Returns:
        float32 ``[N, 3, h, w]`` on the same device, h and w from :func:`official_input_size`.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    h, w = official_input_size(frames.shape[1], frames.shape[2], input_size, multiple)
    x = frames.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s).contiguous()
