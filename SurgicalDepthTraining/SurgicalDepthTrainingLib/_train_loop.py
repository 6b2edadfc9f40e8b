"""One epoch of optimisation and one validation pass (plain functions used by :func:`.training.train`)."""
from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .loss_names import LOSS_NAMES
from .losses import l1_loss, silog_loss, ssi_loss
from .metrics import NoValidPixelError, depth_metrics, mean_metrics
from .semi import SemiTerm, capture_features

logger = logging.getLogger(__name__)

LOSS_WINDOW = 20  # log.csv's loss column and the resume state: the last 20 optimizer steps


class TrainingDiverged(FloatingPointError, ValueError):
    """The loss (or the weights) became NaN or infinite; the message names the optimizer step. Also a
    ``ValueError``: a learning rate that is too high is an input to fix (the CLI prints one line)."""


class TrainingStopped(Exception):
    """Training stopped early on request (``should_stop``: SIGINT/SIGTERM in the CLI) after saving ``checkpoint``
    at optimizer step ``step``; ``train(..., resume=True)`` continues it."""

    def __init__(self, step: int, total: int, checkpoint: str):
        super().__init__(f"training stopped at step {step} of {total}; {checkpoint} saved, resume continues it")
        self.step, self.total, self.checkpoint = step, total, checkpoint


def train_device(device: str, dist_info: Any) -> torch.device:
    """The device of this process: its GPU ``local_rank`` under torchrun with CUDA, else ``device`` resolved
    (``auto``: cuda, then mps, then cpu)."""
    from SurgicalDepthLib.loading import resolve_device

    if dist_info.enabled and torch.cuda.is_available():
        # LOCAL_WORLD_SIZE (torchrun): every process, rank 0 too, sees that there are too few GPUs and says so
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.local_rank + 1))
        gpu = rank_gpu(dist_info.local_rank, torch.cuda.device_count(), local_world)
        torch.cuda.set_device(gpu)
        return torch.device("cuda", gpu)
    return resolve_device(device)


def rank_gpu(local_rank: int, n_gpus: int, local_world: int) -> int:
    """The GPU of process ``local_rank`` of the ``local_world`` training processes of a machine with ``n_gpus``
    CUDA devices: its own one. ValueError, in every process, when there are more processes than GPUs (e.g. the
    Slicer module's GPUs setting above what the machine has), instead of CUDA's "invalid device ordinal" from the
    first kernel of the processes without one (and rank 0 ended by the launcher as if interrupted)."""
    if not 0 <= local_rank < local_world <= n_gpus:
        raise ValueError(f"{local_world} training processes on this machine but {n_gpus} CUDA device(s): each needs "
                         f"a GPU of its own; start at most {n_gpus} (torchrun --nproc_per_node, the GPUs setting "
                         "of the SurgicalDepthTraining module)")
    return local_rank


def any_rank(flag: bool, distributed: bool, device: torch.device) -> bool:
    """``flag`` or-ed over all processes (every rank must call it at the same point); ``flag`` itself when not
    ``distributed``. DDP ranks must agree on stopping, else one would wait for the others' gradients forever."""
    if not distributed:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


@dataclass
class TrainState:
    """Progress counters, saved in every checkpoint. ``step`` counts optimizer steps over the whole run."""

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    best_abs_rel: float = float("inf")
    losses: list[float] = field(default_factory=list)
    stop_requested: bool = False  # should_stop asked to stop (not saved: a resumed run runs on)


def poly_schedule(total: int, warmup: int = 0) -> Callable[[int], float]:
    """LR factor of optimizer step ``step``: linear warm-up over ``warmup`` steps, then the poly decay
    ``(1 - step/total)^0.9`` of DA-V2's ``metric_depth/train.py``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - step / total) ** 0.9
    return factor


def recent_loss(losses: list[float]) -> float:
    """Mean loss of the last :data:`LOSS_WINDOW` optimizer steps (NaN before the first step)."""
    return float(np.mean(losses[-LOSS_WINDOW:])) if losses else float("nan")


def depth_target(batch: dict[str, torch.Tensor], output_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, valid)`` for the model's output: inverse depth ``1/depth`` for a disparity (relative)
    head, depth in the dataset's unit for a metric head; invalid pixels hold 0."""
    depth, valid = batch["depth"].float(), batch["valid"].bool() & (batch["depth"] > 0)
    if output_kind == "disparity":
        return torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth)), valid
    return torch.where(valid, depth, torch.zeros_like(depth)), valid


def supervised_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], loss: str,
                    output_kind: str) -> torch.Tensor:
    """The configured loss (``l1|silog|ssi``) of ``pred [B, h, w]`` against the batch's ground truth.
    L1 is mean-normalised for disparity heads (see :func:`.losses.l1_loss`), plain for metric heads."""
    target, valid = depth_target(batch, output_kind)
    pred = pred.float()
    if loss == "l1":
        return l1_loss(pred, target, valid, normalize=output_kind == "disparity")
    if loss == "silog":
        return silog_loss(pred, target, valid)
    if loss == "ssi":
        return ssi_loss(pred, target, valid)
    raise ValueError(f"loss must be one of {LOSS_NAMES}, got {loss!r}")


def train_one_epoch(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: TrainState, *, loss: str, output_kind: str, grad_accum: int,
                    device: torch.device, amp_dtype: torch.dtype | None, last_step: int,
                    semi: SemiTerm | None = None, clip_grad_norm: float | None = None,
                    on_step: Callable[[TrainState], bool] | None = None) -> bool:
    """Optimise over ``batches`` (micro-batches; ``grad_accum`` of them make one optimizer step).

    Args:
        model: the (possibly DDP-wrapped) model in train mode.
        semi: optional semi-supervised term: an unlabeled batch joins every micro-batch (one student forward, as
            DDP requires).
        last_step: stop once ``state.step`` reaches it.
        clip_grad_norm: clip the global gradient norm before each optimizer step (None: no clipping).
        on_step: called after every optimizer step; returning True stops the epoch early.
    Returns:
        True if training must stop (``last_step`` reached or ``on_step`` asked to stop).
    Raises:
        TrainingDiverged: a non-finite loss, before its optimizer step (naming that step).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    micro = 0
    running = 0.0
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        extra = semi.prepare(state.step, micro) if semi is not None else None
        n = batch["image"].shape[0]
        x = batch["image"] if extra is None else torch.cat([batch["image"], extra.student_in])
        with amp, capture_features(semi.core) if extra is not None else contextlib.nullcontext() as features:
            out = model(x)
            value = supervised_loss(out[:n], batch, loss, output_kind)
            if extra is not None:
                value = value + semi.loss(out[n:], features[-1][n:], extra)
        loss_value = float(value.detach())
        if not math.isfinite(loss_value):  # checked before the optimizer step: the weights stay those of the last step
            raise TrainingDiverged(f"training diverged at step {state.step + 1}: the loss is {loss_value} "
                                   f"(learning rate {optimizer.param_groups[0]['lr']:.3g})")
        (value / grad_accum).backward()
        running += loss_value / grad_accum
        micro += 1
        if micro < grad_accum:
            continue
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        micro = 0
        state.step += 1
        state.step_in_epoch += 1
        state.losses.append(running)
        running = 0.0
        stop = on_step(state) if on_step is not None else False
        if state.step >= last_step or stop:
            return True
    return False


@torch.no_grad()
def validate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, output_kind: str,
             device: torch.device, min_depth: float | None = None,
             max_depth: float | None = None) -> dict[str, float]:
    """Validation: per-image metrics at the training resolution (median alignment, the protocol of
    :func:`.metrics.depth_metrics`), averaged over the images with valid ground truth in range. ``model`` is the
    unwrapped model.

    Raises:
        TrainingDiverged: the model predicts NaN or ±inf (its weights blew up: nothing left to score).
        ValueError: no image has a valid ground-truth pixel in range.
    """
    was_training = model.training
    model.eval()
    per_image = []
    for batch in batches:
        pred = model(batch["image"].to(device)).float()
        if not bool(torch.isfinite(pred).all()):
            model.train(was_training)
            raise TrainingDiverged("the model predicts NaN or infinite values on the validation images")
        pred = pred.cpu().numpy()
        depth, valid = batch["depth"].numpy(), batch["valid"].numpy()
        for p, d, v in zip(pred, depth, valid):
            try:
                per_image.append(depth_metrics(p, d, v, alignment="median", pred_kind=output_kind,
                                               min_depth=min_depth, max_depth=max_depth))
            except NoValidPixelError:  # an image without ground truth in range is left out, as evaluate does
                continue
    model.train(was_training)
    if not per_image:
        raise ValueError(f"no validation image has a valid ground-truth pixel between min_depth {min_depth} and "
                         f"max_depth {max_depth}: check the validation split and the depth range")
    return mean_metrics(per_image)
