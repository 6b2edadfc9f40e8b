"""Image-space effects of real endoscopy: surgical smoke, blood tint, motion blur, sensor noise.

They change only the image; depth and validity stay the exact geometry of the frame's pose.
All take display values float32 [H, W, 3] in [0, 1] and a seeded generator.
"""
from __future__ import annotations

import cv2
import numpy as np


def _low_freq(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, max(2, round(cells * w / h)))).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def add_smoke(image: np.ndarray, depth: np.ndarray, valid: np.ndarray, density: float,
              rng: np.random.Generator) -> np.ndarray:
    """Blend towards a bright grey haze by ``1 - exp(-density * depth / 40 mm)``, patchy (smoke plumes)."""
    if density <= 0:
        return image
    h, w = depth.shape
    dist = np.where(valid, depth, 200.0)
    patch = 0.5 + _low_freq(rng, h, w)
    amount = np.clip((1.0 - np.exp(-density * dist / 40.0)) * patch, 0.0, 0.95)[..., None]
    haze = np.array([0.78, 0.76, 0.74], np.float32) * (0.8 + 0.2 * rng.random())
    return (image * (1 - amount) + haze * amount).astype(np.float32)


def add_blood(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Dark-red stains where a smooth random field is high, plus a global shift towards red."""
    if strength <= 0:
        return image
    h, w = image.shape[:2]
    stain = 0.75 * np.clip((_low_freq(rng, h, w, cells=5) - (1.0 - 0.5 * strength)) * 2.5, 0.0, 1.0)[..., None]
    blood = np.array([0.35, 0.02, 0.03], np.float32)
    out = image * np.array([1.0, 1.0 - 0.3 * strength, 1.0 - 0.3 * strength], np.float32)
    shade = 0.5 + 0.5 * out.mean(axis=-1, keepdims=True)
    return (out * (1 - stain) + blood * shade * stain).astype(np.float32)


def motion_blur(image: np.ndarray, length_px: float, angle_rad: float) -> np.ndarray:
    """Average along a line of ``length_px`` at ``angle_rad`` (image x axis = 0): linear camera motion."""
    if length_px < 1.0:
        return image
    size = int(np.ceil(length_px)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    for s in np.linspace(-length_px / 2, length_px / 2, 4 * size):
        x, y = c + s * np.cos(angle_rad), c + s * np.sin(angle_rad)
        kernel[int(round(y)) % size, int(round(x)) % size] += 1.0
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def sensor_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Signal-dependent noise: shot noise ``∝ sqrt(x)`` plus read noise, std ``sigma`` at full scale."""
    if sigma <= 0:
        return image
    std = sigma * np.sqrt(0.1 + 0.9 * np.clip(image, 0, 1))
    return np.clip(image + std * rng.standard_normal(image.shape).astype(np.float32), 0.0, 1.0)
