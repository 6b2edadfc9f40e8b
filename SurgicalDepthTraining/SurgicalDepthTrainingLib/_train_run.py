"""One call of :func:`.training.train`: :class:`TrainRun` holds what the call builds once (``training._prepare``) and
takes its steps, in this order: :meth:`~TrainRun.resume` (restore ``last.pt``), :meth:`~TrainRun.start` (DDP wrapper,
``train_config.json``), :meth:`~TrainRun.fit` (the epochs, with :meth:`~TrainRun.validate_and_export` and
:meth:`~TrainRun.checkpoint` at the cadence :mod:`.training` documents) and :meth:`~TrainRun.finish`.

Every rank takes the same steps (DDP barriers and the stop vote must meet); only the main process (rank 0) reads
and writes the run's files and validates.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from SurgicalDepthLib.atomic_io import atomic_path
from SurgicalDepthLib.loading import auto_precision
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ._train_data import TransformedDataset
from ._train_loop import (LOSS_WINDOW, TrainingDiverged, TrainingStopped, TrainState, any_rank, recent_loss,
                          train_one_epoch, validate)
from .checkpointing import (TrainRunFolder, export_weights, first_non_finite, read_log, restore_training_state,
                            save_training_checkpoint, write_log)
from .distributed import DistInfo, barrier
from .semi import SemiTerm

if TYPE_CHECKING:
    from SurgicalDepthLib.progress import Stage

    from .training import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TrainRun:
    """The objects of one training run and its progress.

    Attributes:
        core: the model itself (checkpoints, validation and export use it); ``model`` is what the optimizer steps
            run through: ``core``, or its DDP wrapper after :meth:`start`.
        folder: the run folder that claims each output file before it is written (rank 0; None on other ranks).
        steps_per_epoch, total: optimizer steps per epoch and in the whole run.
        val_range: ``min_depth`` / ``max_depth`` of the validation metrics (the config's, else the data's).
        resume_from: the ``last.pt`` contents that :meth:`resume` restores (None: a new run).
        stop_after_steps, should_stop: see :func:`.training.train`.
        saved_step, saved_time, dirty: the optimizer step and ``time.monotonic()`` of the last checkpoint written
            (step None: none yet), and whether anything happened since that it lacks.
        rows: log.csv rows (rank 0); stage: the ``"train"`` progress stage (set by :meth:`fit`).
    """

    config: TrainConfig
    dist: DistInfo
    folder: TrainRunFolder | None
    device: torch.device
    core: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_set: TransformedDataset
    val_set: TransformedDataset
    sampler: DistributedSampler
    steps_per_epoch: int
    total: int
    semi: SemiTerm | None
    val_range: dict[str, float | None]
    resume_from: dict[str, Any] | None
    stop_after_steps: int | None
    should_stop: Callable[[], bool] | None
    saved_time: float
    state: TrainState = field(default_factory=TrainState)
    resumed: bool = False
    saved_step: int | None = None
    dirty: bool = False
    amp_dtype: torch.dtype | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    config_json: str = ""
    stage: Stage | None = None

    @property
    def last_path(self) -> Path:
        return Path(self.config.output) / "last.pt"

    @property
    def best_path(self) -> Path:
        return Path(self.config.output) / "best.safetensors"

    @property
    def last_step(self) -> int:
        """The optimizer step this call stops at: ``total``, or ``stop_after_steps`` when that comes first."""
        return min(self.total, self.stop_after_steps) if self.stop_after_steps else self.total

    def output(self, name: str) -> Path:
        """The path to write output file ``name`` to (the run folder claims it first)."""
        return self.folder.path(name) if self.folder is not None else Path(self.config.output) / name

    # ------------------------------------------------------------------------------------------------- steps
    def resume(self) -> bool:
        """Restore ``resume_from`` (weights, optimizer, scheduler, RNG states, counters) if set; True when that run
        had already finished (nothing is left to do, nothing is written)."""
        if self.resume_from is None:
            return False
        self.state = restore_training_state(self.resume_from, self.last_path, self.core, self.optimizer,
                                            self.scheduler)
        self.saved_step, self.resume_from, self.resumed = self.state.step, None, True
        # the learning rate of the next step by this run's schedule: a run resumed with more steps (max_steps,
        # epochs) than it was saved with would otherwise take its first step at the old end's rate (0: no step)
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        logger.info("resumed %s at epoch %d, step %d", self.last_path, self.state.epoch, self.state.step)
        if self.state.step >= self.total:
            logger.info("%s: the run already finished (%d of %d steps)", self.last_path, self.state.step, self.total)
            return True
        return False

    def start(self) -> None:
        """Wrap the model for DDP, choose the autocast dtype, keep the log rows up to the resumed step and write
        ``train_config.json`` (rank 0)."""
        if self.dist.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.core, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        amp = self.config.amp
        if amp is None:  # bf16 autocast where the GPU computes it natively (Ampere on; emulated before: slower)
            amp = self.device.type == "cuda" and auto_precision(
                "cuda", torch.cuda.get_device_capability(self.device)) == "bf16"
        self.amp_dtype = torch.bfloat16 if amp else None
        self.rows = read_log(Path(self.config.output) / "log.csv", self.state.step) if self.dist.is_main else []
        self.config_json = self.config.to_json()
        if self.dist.is_main:
            with atomic_path(self.output("train_config.json")) as tmp:
                tmp.write_text(self.config_json)

    def fit(self, stage: Stage) -> None:
        """Train inside the progress ``stage``: the start weights' validation (a new run only), the epochs, the final
        validation, then a checkpoint unless the last one holds the newest state.

        Raises:
            TrainingDiverged: the message adds which checkpoint is kept and what to change.
        """
        self.stage = stage
        try:
            with stage:
                if self.state.step == 0 and not self.resumed:  # the start weights' score: the baseline to beat
                    self.validate_and_export()
                self._epochs()
            if self.dirty or self.saved_step != self.state.step:
                self.checkpoint()
        except TrainingDiverged as exc:
            kept = (f"the last good checkpoint {self.last_path} (step {self.saved_step}) is kept"
                    if self.saved_step is not None else "no checkpoint had been saved yet")
            raise TrainingDiverged(f"{exc}; {kept}; lower the learning rate (or clip gradients)") from None

    def finish(self) -> Path:
        """Wait for every rank; the best checkpoint's path, or :class:`TrainingStopped` when ``should_stop`` stopped
        the run."""
        barrier(self.dist)
        if self.state.stop_requested and self.state.step < self.total:  # stopped with the last step: finished
            raise TrainingStopped(self.state.step, self.total, str(self.last_path))
        return self.best_path

    # --------------------------------------------------------------------------------------- inside fit
    def _epochs(self) -> None:
        """Epochs until ``last_step`` or a stop request; validation and a checkpoint at every epoch end but the
        last, whose validation follows the loop (none when stopped before the last step: the resumed run does it)."""
        state = self.state
        stopped = state.step >= self.last_step or self.stop_requested()
        while not stopped and state.epoch < math.ceil(self.total / self.steps_per_epoch):
            stopped = self._train_epoch()
            if state.stop_requested and state.step < self.total:
                break  # saved mid-epoch: a resumed run does the epoch end's validation
            if state.step_in_epoch >= self.steps_per_epoch:
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                if state.step < self.total:  # the final validation follows below
                    self.validate_and_export()
                    self.checkpoint()  # every epoch end
            if stopped or state.step >= self.total:
                break
        if state.step >= self.total:  # also when a stop came with the last step: a resumed run has nothing left
            self.validate_and_export()

    def _train_epoch(self) -> bool:
        """Optimise over the rest of epoch ``state.epoch`` (a resumed run skips its first ``step_in_epoch`` steps'
        samples); True when training must stop."""
        micro = self.config.batch_size * self.config.grad_accum
        self.sampler.set_epoch(self.state.epoch)
        self.train_set.epoch = self.state.epoch
        order = list(iter(self.sampler))[:self.steps_per_epoch * micro][self.state.step_in_epoch * micro:]
        loader = DataLoader(Subset(self.train_set, order), batch_size=self.config.batch_size, shuffle=False,
                            num_workers=self.config.num_workers)
        return train_one_epoch(self.model, loader, self.optimizer, self.scheduler, self.state, loss=self.config.loss,
                               output_kind=self.core.output_kind, grad_accum=self.config.grad_accum,
                               device=self.device, amp_dtype=self.amp_dtype, clip_grad_norm=self.config.clip_grad_norm,
                               last_step=self.last_step, semi=self.semi, on_step=self._on_step)

    def _on_step(self, state: TrainState) -> bool:
        """After each optimizer step: progress, a ``log_every`` row, the stop vote, and a ``save_every`` or
        ``checkpoint_minutes`` checkpoint (not at ``last_step``: :meth:`fit` saves that one). True stops the epoch."""
        self.dirty = True
        self.stage.update(1, loss=state.losses[-1], lr=self.scheduler.get_last_lr()[0])
        if self.config.log_every and state.step % self.config.log_every == 0 and self.dist.is_main:
            self.rows.append(dict(epoch=state.epoch, step=state.step, loss=recent_loss(state.losses), val_abs_rel="",
                                  val_a1="", lr=self.scheduler.get_last_lr()[0]))
        if self.stop_requested():
            return True
        if state.step < self.last_step and (
                (self.config.save_every and state.step % self.config.save_every == 0)
                or time.monotonic() - self.saved_time >= 60 * self.config.checkpoint_minutes):
            self.checkpoint()
        return False

    def stop_requested(self) -> bool:
        """Whether to stop at this step boundary: ``should_stop`` said so on any rank (every rank votes here); the
        checkpoint to stop at is saved first."""
        if self.should_stop is not None and any_rank(bool(self.should_stop()), self.dist.enabled, self.device):
            self.checkpoint()
            self.state.stop_requested = True
        return self.state.stop_requested

    def validate_and_export(self) -> None:
        """Validate (rank 0): a log row, the progress scores, and ``best.safetensors`` + ``best.json`` when AbsRel
        improved. Every rank then waits at the barrier."""
        self.dirty = True
        if self.dist.is_main:
            state = self.state
            loader = DataLoader(self.val_set, batch_size=self.config.batch_size, num_workers=self.config.num_workers)
            try:
                metrics = validate(self.core, loader, output_kind=self.core.output_kind, device=self.device,
                                   **self.val_range)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"training diverged at step {state.step}: {exc}") from None
            self.rows.append(dict(epoch=state.epoch, step=state.step, loss=recent_loss(state.losses),
                                  val_abs_rel=metrics["abs_rel"], val_a1=metrics["a1"],
                                  lr=self.scheduler.get_last_lr()[0]))
            if metrics["abs_rel"] < state.best_abs_rel:
                state.best_abs_rel = metrics["abs_rel"]
                self._export_best(metrics)
            self.stage.update(0, val_abs_rel=metrics["abs_rel"], val_a1=metrics["a1"])
            logger.info("step %d: val AbsRel %.4f, delta1 %.4f", state.step, metrics["abs_rel"], metrics["a1"])
        barrier(self.dist)

    def _export_best(self, metrics: dict[str, float]) -> None:
        """``best.safetensors`` (a ``load_model`` checkpoint) and ``best.json`` (step, epoch, scores, config)."""
        state = self.state
        export_weights(self.output("best.safetensors"), self.core, {
            "train_config": self.config_json, "val_abs_rel": str(metrics["abs_rel"]), "step": str(state.step)},
            input_size=min(self.config.effective_input_size))  # read frames as it was trained to
        with atomic_path(self.output("best.json")) as tmp:
            tmp.write_text(json.dumps({"step": state.step, "epoch": state.epoch, "val": metrics,
                                       "config": json.loads(self.config_json)}, indent=2))

    def checkpoint(self) -> None:
        """Save ``last.pt`` and ``log.csv`` (rank 0), never replacing the last good checkpoint with non-finite
        weights (:class:`TrainingDiverged` instead); every rank records the save."""
        state = self.state
        if self.dist.is_main:
            bad = first_non_finite(self.core.state_dict().items())
            if bad is not None:
                raise TrainingDiverged(f"training diverged at step {state.step}: weight {bad!r} is not finite")
            # the log first: a kill between the two writes leaves rows beyond last.pt's step (a resumed run drops
            # them), never a last.pt whose rows are missing from log.csv (they would be lost for good)
            write_log(self.output("log.csv"), self.rows)
            save_training_checkpoint(self.output("last.pt"), self.core, self.optimizer, self.scheduler,
                                     config_json=self.config_json, epoch=state.epoch, step=state.step,
                                     step_in_epoch=state.step_in_epoch, best_abs_rel=state.best_abs_rel,
                                     recent_losses=state.losses[-LOSS_WINDOW:],
                                     input_size=min(self.config.effective_input_size))  # as best.safetensors
        self.saved_step, self.saved_time, self.dirty = state.step, time.monotonic(), False
