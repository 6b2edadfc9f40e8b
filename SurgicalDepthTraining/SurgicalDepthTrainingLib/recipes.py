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
from SurgicalDepthLib import __version__
from SurgicalDepthLib.progress import ProgressReporter

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


# -- the default model ------------------------------------------------------------------------------------------
DEFAULT_RECIPE = dict(
    n_clips=240, frames_per_clip=8, data_seed=0,
    train=dict(dataset="synthetic", model="random:surgical-depth-tiny", loss="l1", lr=2e-4, decoder_lr_mult=3.0,
               weight_decay=0.05, batch_size=16, max_steps=2400, input_size=(126, 168), val_fraction=0.05,
               warmup_steps=100, clip_grad_norm=1.0, head_bias=1.0, augment=True, seed=0, log_every=100,
               save_every=200, max_depth=300.0),
    inference_input_size=168,
)


def train_default_model(output: str | Path, *, resume: bool = False, max_steps: int | None = None,
                        n_clips: int | None = None, device: str = "auto",
                        progress: ProgressReporter | None = None) -> Path:
    """Reproduce the shipped default model: render the training set (``output/data``), train
    (``output/run``), export the best weights as fp16 safetensors with a model card.

    ``max_steps`` and ``n_clips`` shorten the run (tests); the shipped weights use :data:`DEFAULT_RECIPE`
    unchanged. ``progress`` (None = tqdm bars) gets the stages ``"render"`` (one update per clip) and
    ``"train"`` (see :func:`.training.train`).
    Returns the exported ``output/surgical-depth-default.safetensors``.
    """
    import dataclasses
    import json

    import torch

    from SurgicalDepthLib.checkpoints import save_checkpoint
    from SurgicalDepthLib.loading import load_model

    from .training import TrainConfig, train

    output = Path(output)
    recipe = DEFAULT_RECIPE
    data = output / "data"
    reporter = progress if progress is not None else ProgressReporter("bar")
    n = n_clips or recipe["n_clips"]
    log.info("rendering %d training clips into %s", n, data)
    with reporter.stage("render", n, unit="clip") as stage:
        render_training_set(data, n, recipe["frames_per_clip"], recipe["data_seed"],
                            progress=lambda done: stage.update(done - stage.step))
    options = dict(recipe["train"], root=str(data), output=str(output / "run"), device=device)
    if max_steps is not None:
        options.update(max_steps=max_steps, warmup_steps=min(options["warmup_steps"], max(1, max_steps // 10)))
    best = train(TrainConfig(**options), resume=resume, progress=reporter)
    model = load_model(best, device="cpu")
    model.config = dataclasses.replace(model.config, input_size=recipe["inference_input_size"])
    target = output / "surgical-depth-default.safetensors"
    card = {"name": "surgical-depth-default", "recipe": json.dumps(recipe, default=list),
            "training_data": "procedural synthetic scenes only (colon, stomach, small intestine, surgical field)",
            "output": "relative depth: disparity (larger = nearer), affine-invariant; no metric scale",
            "license": "Apache-2.0", "trained_with": f"surgical-depth {__version__}"}
    save_checkpoint(target, model, extra=card, dtype=torch.float16)
    return target
