"""Fine-tuning Depth Anything on surgical depth data: ``TrainConfig`` and ``train(config) -> best checkpoint``.

Plain functions (``build_model``, ``build_optimizer``, ``train_one_epoch``, ``validate``, ``save_training_checkpoint``);
one call of ``train`` builds its objects once (``_prepare``) into a :class:`._train_run.TrainRun` that takes the steps.
Output folder (a run folder: manifest, lock, see :class:`.checkpointing.TrainRunFolder`)::

    train_config.json   the TrainConfig (also inside every checkpoint)
    last.pt             training checkpoint (model, optimizer, scheduler, RNG states, counters) for --resume
    best.safetensors    best model by validation AbsRel (project format: ``load_model(path)``), best.json beside
    log.csv             epoch, step, loss, val_abs_rel, val_a1, lr

Nothing is lost: ``last.pt`` is written atomically at every epoch end, at least every ``checkpoint_minutes``, every
``save_every`` steps if set, and when ``should_stop`` asks to stop (the CLI's SIGINT/SIGTERM). A non-finite loss
stops the run before its optimizer step (:class:`TrainingDiverged`, naming the step); the last good checkpoint stays.

Determinism: data order comes from ``DistributedSampler(seed=config.seed)`` and each sample's augmentation from
``default_rng([seed, epoch, index])``; a run stopped and resumed from ``last.pt`` continues with exactly the
optimizer, scheduler and data of an uninterrupted run (bit-identical on CPU). Launch with ``torchrun`` for DDP.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from SurgicalDepthLib.configs import check_fields
from SurgicalDepthLib.progress import ProgressReporter
from torch.utils.data import Dataset, DistributedSampler

from ._train_data import DepthTransform, TransformedDataset, round_to_multiple, training_data
from ._train_loop import (TrainingDiverged, TrainingStopped, TrainState, poly_schedule, train_device, train_one_epoch,
                          validate)
from ._train_run import TrainRun
from .checkpointing import TrainRunFolder, read_resume_checkpoint, save_training_checkpoint
from .distributed import DistInfo, cleanup_distributed, setup_distributed
from .lora import add_lora
from .loss_names import LOSS_NAMES
from .semi import build_semi_term, unlabeled_dataset_of
from .style_frames import StyleFrames, checked_beta

logger = logging.getLogger(__name__)

# public names: those defined here and, re-exported, the plain functions and errors of the internal modules
__all__ = ["LOSS_NAMES", "DepthTransform", "TrainConfig", "TrainState", "TrainingDiverged", "TrainingStopped",
           "build_model", "build_optimizer", "round_to_multiple", "save_training_checkpoint", "train",
           "train_one_epoch", "validate"]
_UNUSED_PREFIXES = ("pretrained.mask_token", "depth_head.scratch.refinenet4.resConfUnit1.")
# Fields that may differ when resuming (they do not change the computation up to the stop point).
_RESUMABLE_CHANGES = {"epochs", "max_steps", "num_workers", "save_every", "log_every", "output", "device",
                      "checkpoint_minutes"}


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings (saved as JSON beside each checkpoint).

    Attributes:
        dataset, root, split: training data (``open_dataset(dataset, root, split, **dataset_options)``; the
            options are the loader's, e.g. ``{"depth_scale": 0.01}`` for a folder of 16-bit PNG depth, and apply
            to the validation data too); ``val_split`` opens the
            validation data the same way, else ``val_fraction`` of the training data is held out (seeded).
        model: start weights, any ``load_model`` source (``random:surgical-depth-tiny`` trains from scratch).
        model_version, model_max_depth: ``load_model``'s ``version`` / ``max_depth`` hints for a weight file whose
            name does not say them (None: from the file).
        loss: ``l1`` (the paper's; mean-normalised inverse depth for relative heads), ``silog`` or ``ssi``.
        lr: encoder learning rate (paper: 3e-5); the decoder uses ``lr * decoder_lr_mult`` (Depth Anything: 10).
            Poly decay ``(1 - step/total)^0.9`` (DA-V2 ``metric_depth/train.py``), AdamW.
        batch_size, grad_accum: per-process micro-batch and micro-batches per optimizer step.
        epochs, max_steps: length; ``max_steps`` (optimizer steps) overrides ``epochs`` when set.
        input_size: (h, w) requested, each rounded to the nearest multiple of 14 (ties up) because the ViT
            needs whole 14-pixel patches: the paper's 256×386 becomes 252×392 (see ``effective_input_size``).
        freeze_encoder: train the decoder only. lora_rank: > 0 adds rank-r LoRA to every attention qkv and
            freezes the rest of the encoder (merged into plain weights on export); lora_alpha: LoRA α (default r).
        augment: horizontal flip + colour jitter on training samples.
        photometric: with ``augment``, the probability that a training sample gets an endoscope look (random
            tone curve, local brightness adaptation, white balance, JPEG, scope border; :mod:`.photometric`), so
            the model cannot read depth from the renderer's brightness alone (0 = off).
        style_root, style_prob, style_beta: with ``augment``, a folder of real frames (no depth needed) whose low
            spatial frequencies a training sample takes with probability ``style_prob`` (Fourier Domain
            Adaptation; :mod:`.style_frames`): the window's half-width is ``style_beta`` (low, high) of the frame's
            shorter side, drawn per sample. None = off.
        amp: mixed precision (bf16 autocast); None = on for CUDA GPUs that compute bf16 natively (compute
            capability 8 on: Ampere and later), off otherwise (emulated bf16 is slower than fp32).
        min_depth, max_depth: validation range (dataset unit); None = the dataset's own.
        unlabeled_dataset, unlabeled_root, teacher, unlabeled_weight, feature_weight, cutmix_prob: semi-supervised
            Depth Anything recipe (:mod:`.semi`), off while both are None; ``unlabeled_root`` alone: every frame of
            that image folder or video (``"frames"``); a loader name: its images (root default ``root``).
            ``teacher_detail_size``: the teacher also reads each unlabeled view at this larger size and its
            pseudo-labels are the detail read's merge (:class:`.semi.DetailReadTeacher`; None: one read).
            ``unlabeled_ratio``: unlabeled frames per labeled image in every micro-batch (Depth Anything V1 mixes
            them 1:2, so 2.0 draws ``2 * batch_size`` frames).
        save_every, log_every: checkpoint / CSV row every N optimizer steps (0 = epoch ends only).
        checkpoint_minutes: also checkpoint once this much wall time has passed since the last checkpoint
            (at the next optimizer step; 0 = after every step), so a kill loses at most that much work.
        warmup_steps: linear learning-rate warm-up before the poly decay (0 = none, the fine-tuning default;
            training from scratch needs it).
        clip_grad_norm: clip the global gradient norm to this value (None = no clipping).
        head_bias: for ``random:`` models, initial bias of the last convolution. The default 1.0 starts the final
            ReLU in its active range: with PyTorch's default bias (None) about 4 in 10 random initialisations of
            ``surgical-depth-tiny`` output 0 at every pixel, so no gradient ever reaches the network.
    """

    dataset: str = "synthetic"
    root: str = ""
    split: str | None = None
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    val_split: str | None = None
    val_fraction: float = 0.1
    model: str = "random:surgical-depth-tiny"
    model_version: str | None = None
    model_max_depth: float | None = None
    loss: str = "l1"
    lr: float = 3e-5
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    batch_size: int = 16
    grad_accum: int = 1
    epochs: int = 10
    max_steps: int | None = None
    input_size: tuple[int, int] = (256, 386)
    freeze_encoder: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    augment: bool = True
    photometric: float = 0.0
    style_root: str | None = None
    style_prob: float = 0.5
    style_beta: tuple[float, float] = (0.01, 0.04)
    amp: bool | None = None
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    output: str = "runs/train"
    min_depth: float | None = None
    max_depth: float | None = None
    unlabeled_dataset: str | None = None
    unlabeled_root: str | None = None
    teacher: str | None = None
    teacher_detail_size: int | None = None
    unlabeled_weight: float = 1.0
    feature_weight: float = 1.0
    cutmix_prob: float = 0.5
    unlabeled_ratio: float = 2.0
    save_every: int = 0
    log_every: int = 0
    checkpoint_minutes: float = 10.0
    warmup_steps: int = 0
    clip_grad_norm: float | None = None
    head_bias: float | None = 1.0

    def __post_init__(self) -> None:
        # every message starts with the field's name (the CLI turns it into the flag's name)
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES}, got {self.loss!r}")
        for name in ("batch_size", "grad_accum", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "num_workers", "save_every", "log_every", "warmup_steps", "lora_rank"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        for name in ("lr", "decoder_lr_mult"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("photometric", "style_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "style_beta", checked_beta(self.style_beta))
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0):
            raise ValueError(f"checkpoint_minutes must be a finite number >= 0, got {self.checkpoint_minutes}")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a finite number > 0 or None (= lora_rank), got {self.lora_alpha}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (height, width) >= 1, got {self.input_size!r}")
        for name in ("min_depth", "max_depth"):  # checked here: a run folder is written only for a valid config
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {value}")
        if self.min_depth is not None and self.max_depth is not None and not self.min_depth < self.max_depth:
            raise ValueError(f"min_depth must be < max_depth, got min_depth={self.min_depth}, "
                             f"max_depth={self.max_depth}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if not isinstance(self.dataset_options, dict) or not all(isinstance(k, str) for k in self.dataset_options):
            raise ValueError(f"dataset_options must be a dict of loader options by name, got {self.dataset_options!r}")
        object.__setattr__(self, "unlabeled_dataset", unlabeled_dataset_of(self))

    @property
    def effective_input_size(self) -> tuple[int, int]:
        return round_to_multiple(self.input_size[0]), round_to_multiple(self.input_size[1])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        data = json.loads(text)
        check_fields(cls, data, "TrainConfig")
        return cls(**data)


def build_model(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Load ``config.model`` (any ``load_model`` source) for training, add LoRA / freeze as configured.

    Random initialisation and LoRA factors are drawn from ``torch.manual_seed(config.seed)``.
    """
    from SurgicalDepthLib.loading import load_model

    torch.manual_seed(config.seed)
    hints = {"version": config.model_version, "max_depth": config.model_max_depth}
    model = load_model(config.model, device="cpu", precision="fp32",
                       **{key: value for key, value in hints.items() if value is not None})
    if getattr(model.config, "reference_fov_deg", None) is not None:
        # the lens a model reads frames as comes from its training views: after training on other data it is not
        # known any more (SurgicalDepthLib.lens; the default recipe sets its own when it exports)
        model.config = dataclasses.replace(model.config, reference_fov_deg=None)
    if config.model.startswith("random:") and config.head_bias is not None:
        # from scratch: start the final ReLU in its active range, else the output can die at 0 for every pixel
        with torch.no_grad():
            model.depth_head.scratch.output_conv2[2].bias.fill_(config.head_bias)
    # Parameters the forward never uses (kept for exact official state dicts): the DINOv2 mask token and the
    # first residual unit of DPT's refinenet4, which receives one input. Freezing them changes nothing in a
    # single process (they never get a gradient) and lets DDP run without find_unused_parameters.
    for name in _UNUSED_PREFIXES:
        for pname, p in model.named_parameters():
            if pname.startswith(name):
                p.requires_grad_(False)
    if config.freeze_encoder or config.lora_rank:
        for p in model.pretrained.parameters():
            p.requires_grad_(False)
    if config.lora_rank:
        add_lora(model, config.lora_rank, config.lora_alpha)
    return model.to(device).train()


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two parameter groups: encoder (``lr``) and decoder (``lr * decoder_lr_mult``); frozen
    parameters are left out."""
    encoder = [p for p in model.pretrained.parameters() if p.requires_grad]
    decoder = [p for p in model.depth_head.parameters() if p.requires_grad]
    groups = [{"params": decoder, "lr": config.lr * config.decoder_lr_mult, "name": "decoder"}]
    if encoder:
        groups.insert(0, {"params": encoder, "lr": config.lr, "name": "encoder"})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def train(config: TrainConfig, *, train_data: Dataset | None = None, val_data: Dataset | None = None,
          unlabeled_data: Dataset | None = None, resume: bool = False, overwrite: bool = False,
          stop_after_steps: int | None = None, should_stop: Callable[[], bool] | None = None,
          progress: ProgressReporter | None = None) -> Path:
    """Fine-tune as configured and return the best checkpoint (``best.safetensors`` in ``config.output``).

    Args:
        train_data, val_data, unlabeled_data: datasets of sample dicts to use instead of opening
            ``config.dataset`` / ``config.unlabeled_dataset`` (``val_data`` None: ``val_fraction`` held out).
        resume: continue from ``config.output/last.pt`` (same configuration apart from length/logging), keeping
            the run's files and continuing its manifest.
        overwrite: replace an earlier run's outputs in ``config.output`` (the files its manifest lists).
        stop_after_steps: stop (after checkpointing) once this many optimizer steps are done in total, as if
            the run had been killed there; ``resume=True`` later continues it exactly.
        should_stop: polled at every optimizer step boundary (the CLI sets it from SIGINT/SIGTERM): once it
            returns True the run saves ``last.pt`` and raises :class:`TrainingStopped`.
        progress: where the stage ``"train"`` goes (None = a tqdm bar): one update per optimizer step with
            ``loss`` (that step's) and ``lr`` (first parameter group after the step, as in log.csv), plus
            ``val_abs_rel`` / ``val_a1`` on the step where a validation ran. Only the main process (rank 0) reports.
    Raises:
        FileExistsError: (``OutputConflict``) ``output`` holds another run (without ``resume``/``overwrite``), is
            locked by a running one, or holds a file no run wrote under an output's name.
        TrainingDiverged: non-finite loss or weights (names the step and the last good checkpoint, kept).
        TrainingStopped: ``should_stop`` stopped the run (``last.pt`` saved).
        CheckpointError: ``resume`` from a truncated, corrupt, malicious or foreign ``last.pt``.
    """
    dist_info = setup_distributed()
    try:
        reporter = (progress or ProgressReporter("bar")) if dist_info.is_main else ProgressReporter("none")
        folder = TrainRunFolder.of(config, overwrite=overwrite, resume=resume) if dist_info.is_main else None
        with folder or contextlib.nullcontext() as run_folder:
            run = _prepare(config, dist_info, run_folder, train_data=train_data, val_data=val_data,
                           unlabeled_data=unlabeled_data, resume=resume, stop_after_steps=stop_after_steps,
                           should_stop=should_stop)
            if run.resume():
                return run.best_path
            run.start()
            run.fit(reporter.stage("train", run.total, unit="step", initial=run.state.step))
            return run.finish()
    finally:
        cleanup_distributed(dist_info)


def _prepare(config: TrainConfig, dist_info: DistInfo, folder: TrainRunFolder | None, *,
             train_data: Dataset | None, val_data: Dataset | None, unlabeled_data: Dataset | None, resume: bool,
             stop_after_steps: int | None, should_stop: Callable[[], bool] | None) -> TrainRun:
    """Build the run's objects once, in the order that fixes its random numbers (model initialisation, then the
    semi-supervised teacher; a resumed run's states are restored after both, by :meth:`.TrainRun.resume`)."""
    last_path = Path(config.output) / "last.pt"
    if resume and not last_path.is_file():
        raise FileNotFoundError(f"cannot resume: {last_path} does not exist")
    resume_from = read_resume_checkpoint(last_path, config, _RESUMABLE_CHANGES) if resume else None
    device = train_device(config.device, dist_info)
    train_data, train_idx, val_data, val_idx = training_data(config, train_data, val_data)
    model = build_model(config, device)
    size, mean, std = config.effective_input_size, model.config.mean, model.config.std
    style = StyleFrames(config.style_root, config.style_beta) if config.style_root is not None else None
    train_set = TransformedDataset(train_data, DepthTransform(size, mean, std, train=True, augment=config.augment,
                                                              photometric=config.photometric, style=style,
                                                              style_prob=config.style_prob),
                                   config.seed, train_idx)
    val_set = TransformedDataset(val_data, DepthTransform(size, mean, std, train=False, augment=False),
                                 config.seed, val_idx)
    sampler = DistributedSampler(train_set, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=True, seed=config.seed, drop_last=False)
    micro = config.batch_size * config.grad_accum
    steps_per_epoch = sampler.num_samples // micro
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_set)} training samples over {dist_info.world_size} process(es) are fewer "
                         f"than batch_size × grad_accum = {micro}")
    total = config.max_steps or config.epochs * steps_per_epoch
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total, config.warmup_steps))
    # teacher and frozen encoder are copied from the start weights, before any resumed state is loaded
    semi = build_semi_term(config, model, unlabeled_data, size, device, dist_info.rank)
    val_range = {k: getattr(config, k) if getattr(config, k) is not None else getattr(val_data, k, None)
                 for k in ("min_depth", "max_depth")}
    return TrainRun(config=config, dist=dist_info, folder=folder, device=device, core=model, model=model,
                    optimizer=optimizer, scheduler=scheduler, train_set=train_set, val_set=val_set, sampler=sampler,
                    steps_per_epoch=steps_per_epoch, total=total, semi=semi, val_range=val_range,
                    resume_from=resume_from, stop_after_steps=stop_after_steps, should_stop=should_stop,
                    saved_time=time.monotonic())
