"""Real ``surgical-depth-tiny`` models with random weights and textured test frames, shared by the CLI and
stream tests (small enough to run in milliseconds on a CPU)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from SurgicalDepthLib.configs import get_model_config
from SurgicalDepthLib.model import DepthModel


def perturb_weights(model: DepthModel, seed: int | None = None) -> DepthModel:
    """Random weights perturbed so that a relative head's (ReLU) output is positive and not constant; in place.
    ``seed``: reseed torch first (None: continue the current random stream)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.add_(0.05 * torch.randn_like(p))
        if model.config.head == "relative":
            model.depth_head.scratch.output_conv2[2].bias.fill_(1.0)
    return model


def tiny_model(seed: int = 0, head: str = "relative") -> DepthModel:
    """``surgical-depth-tiny`` with random weights that give a non-constant, positive output; ``head="metric"``
    gives the same network with a metric head (sigmoid × 150, millimetres)."""
    config = get_model_config("surgical-depth-tiny")
    if head == "metric":
        config = dataclasses.replace(config, head="metric", max_depth=150.0, metric_unit="mm")
    torch.manual_seed(seed)
    return perturb_weights(DepthModel(config).eval())


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """RGB uint8 ``[h, w, 3]`` smooth random texture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def write_clip(path: Path, n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """An mp4v clip of ``n`` frames of a texture moving right at 20 frames/s; returns the frames written."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (w, h))
    frames = [np.roll(textured(h, w, 0), 3 * i, axis=1) for i in range(n)]
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return frames


def kvasir_like(root: Path, n: int = 6) -> Path:
    """A folder of ``n`` small frames named like Kvasir-SEG images (the recipe's unlabeled frames), the first one
    named as a shared-samples frame (held out by the recipe)."""
    from SurgicalDepthLib.video import write_image

    root.mkdir(parents=True)
    for i, name in enumerate(["cju0qkwl35piu0993l0dewei2"] + [f"cjz{i:022d}" for i in range(n - 1)]):
        write_image(root / f"{name}.jpg", textured(40, 48, i))
    return root
