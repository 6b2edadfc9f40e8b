"""The recipe of the shipped default model: a domain-randomised synthetic training set, described once.

``clip_specs(n_clips, seed)`` lists the scene of every training clip (organ cycled, colours/light/texture from the
clip seed, and a seeded share of fisheye optics, motion blur, smoke, blood and noise levels) so the shipped weights
can be reproduced exactly: ``surgical-depth synth --recipe default`` renders them, ``surgical-depth train
--recipe default`` trains on them (see README, "The default model").
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TRAIN_SIZE = (182, 224)  # (H, W): 13 x 16 patches of 14 px
ORGAN_CYCLE = ("colon", "stomach", "small_intestine", "surgical_field", "colon", "small_intestine")


def clip_specs(n_clips: int, seed: int = 0, height: int = DEFAULT_TRAIN_SIZE[0],
               width: int = DEFAULT_TRAIN_SIZE[1]) -> list[dict[str, Any]]:
    """``SceneConfig`` keyword arguments of each training clip (deterministic for ``seed``)."""
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n_clips):
        specs.append(dict(
            organ=ORGAN_CYCLE[i % len(ORGAN_CYCLE)], seed=int(seed * 100_003 + i), height=height, width=width,
            fov_deg=float(rng.uniform(80.0, 125.0)), fisheye=bool(rng.random() < 0.3), randomize=True,
            noise=float(rng.uniform(0.003, 0.03)), blur=float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.5)])),
            smoke=float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.05, 0.35)])),
            blood=float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.05, 0.4)])),
            specular=float(rng.uniform(0.4, 1.6)), vignetting=float(rng.uniform(0.1, 0.7)),
            speed_mm=float(rng.uniform(3.0, 8.0)),
        ))
    return specs


def render_training_set(root: str | Path, n_clips: int, frames_per_clip: int = 8, seed: int = 0,
                        height: int = DEFAULT_TRAIN_SIZE[0], width: int = DEFAULT_TRAIN_SIZE[1],
                        progress: Callable[[int], None] | None = None) -> list[Path]:
    """Render ``n_clips`` sequences into ``root/seq_XXXX`` (the ``synthetic`` layout); existing ones are kept,
    so an interrupted run resumes. Returns the sequence folders."""
    from .synthetic import render_clip, write_synthetic

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for i, spec in enumerate(clip_specs(n_clips, seed, height, width)):
        folder = root / f"seq_{i:04d}"
        if not folder.exists():
            options = {k: v for k, v in spec.items() if k not in ("organ", "seed", "height", "width")}
            frames = render_clip(spec["organ"], n_frames=frames_per_clip, seed=spec["seed"], height=height,
                                 width=width, **options)
            write_synthetic(frames, folder, {"organ": spec["organ"], "seed": spec["seed"], "generator": spec})
        folders.append(folder)
        if progress is not None:
            progress(i + 1)
    return folders
