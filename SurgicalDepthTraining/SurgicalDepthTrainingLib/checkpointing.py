"""Training checkpoints (``.pt``, read with ``torch.load(weights_only=True)`` only), the run's log, its output
folder, and model export.

A training checkpoint is a dict of weights_only-safe values::

    {"format": "surgical-depth-train", "model": <plain state dict, LoRA merged: loadable by load_model>,
     "model_config": <ModelConfig JSON>, "train_state": <raw state dict with LoRA factors, or absent>,
     "optimizer", "scheduler": state dicts, "epoch", "step", "step_in_epoch", "best_abs_rel", "recent_losses",
     "config": <TrainConfig JSON>, "rng": {"torch", "numpy", "python", "cuda"}}

RNG states are stored as tensors / lists of ints so that no pickled object is needed. A file that is truncated,
not a training checkpoint, holds non-finite weights or pickled code is refused with one :class:`CheckpointError`
line naming the file (nothing in it runs).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import io
import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from SurgicalDepthLib.atomic_io import atomic_path, temporary_name_pattern
from SurgicalDepthLib.checkpoints import CheckpointError
from SurgicalDepthLib.run_folder import MANIFEST_NAME, OutputConflict, RunFolder, read_manifest

from ._train_loop import TrainState
from .lora import has_lora, merge_lora

logger = logging.getLogger(__name__)

TRAIN_FORMAT = "surgical-depth-train"
#: The files a training run writes into its output folder (see :mod:`.training`).
TRAIN_OUTPUTS = ("train_config.json", "last.pt", "best.safetensors", "best.json", "log.csv")
LOG_FIELDS = ("epoch", "step", "loss", "val_abs_rel", "val_a1", "lr")
# top-level fields every training checkpoint has, with their types
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "step": int, "step_in_epoch": int,
    "best_abs_rel": (float, int), "recent_losses": list, "config": str, "rng": dict}


def rng_state() -> dict[str, Any]:
    """Global RNG states of torch, CUDA (one per device), numpy and Python as weights_only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with LoRA merged (official keys), on the CPU."""
    if not has_lora(model):
        return _cpu(model.state_dict())
    merged = copy.deepcopy(model)
    merge_lora(merged)
    return _cpu(merged.state_dict())


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the first floating tensor holding NaN or ±inf, else None."""
    for name, value in tensors:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def save_training_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, *, config_json: str, epoch: int, step: int, step_in_epoch: int,
                    best_abs_rel: float, recent_losses: list[float] | None = None,
                    input_size: int | None = None) -> Path:
    """Write a training checkpoint atomically (temporary file + rename). ``model`` is the unwrapped model;
    ``input_size`` the inference size its ``model_config`` records (as :func:`export_weights`; default: the
    model's own)."""
    path = Path(path)
    config = model.config if input_size is None else dataclasses.replace(model.config, input_size=int(input_size))
    data: dict[str, Any] = {
        "format": TRAIN_FORMAT,
        "model": plain_state(model),
        "model_config": json.dumps(config.to_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": int(epoch), "step": int(step), "step_in_epoch": int(step_in_epoch),
        "best_abs_rel": float(best_abs_rel),
        "recent_losses": [float(v) for v in (recent_losses or [])],
        "config": config_json,
        "rng": rng_state(),
    }
    if has_lora(model):
        data["train_state"] = _cpu(model.state_dict())
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``: pickled code is refused, never run).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) the file is truncated or corrupt, not a training checkpoint, lacks a
            field or has one of the wrong type, or holds non-finite weights; the message names the file.
    """
    # one torch.load for every checkpoint reader: malicious pickles refused, PyTorch's advice to retry with
    # weights_only=False (wrong for an untrusted file) left out
    from SurgicalDepthLib.checkpoints import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} does not exist")
    data = load_torch_file(path)
    if not isinstance(data, dict) or data.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint (format {TRAIN_FORMAT!r} expected)")
    for key, kind in _FIELDS.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise CheckpointError(f"{path}: training checkpoint field {key!r} is "
                                  f"{type(data.get(key)).__name__ if key in data else 'missing'}, expected "
                                  f"{kind.__name__ if isinstance(kind, type) else kind[0].__name__}")
    for key in ("model", "train_state"):
        if key in data and not isinstance(data[key], dict):
            raise CheckpointError(f"{path}: training checkpoint field {key!r} is not a state dict")
        bad = first_non_finite(data.get(key, {}).items())
        if bad is not None:
            raise CheckpointError(f"{path}: tensor {bad!r} holds NaN or infinite values; refusing to resume "
                                  "from broken weights")
    return data


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def read_resume_checkpoint(path: Path, config: Any, resumable: Iterable[str] = ()) -> dict[str, Any]:
    """:func:`load_training_checkpoint` for resuming the run of ``config`` (a ``TrainConfig``): the checkpoint's
    configuration must equal it apart from the fields in ``resumable``. Called before the model is built, so a
    damaged or foreign ``last.pt`` fails at once.

    Raises:
        CheckpointError: see :func:`load_training_checkpoint`; also an unreadable configuration.
        ValueError: the configuration differs in a field that changes the computation.
    """
    ckpt = load_training_checkpoint(path)
    try:
        saved = type(config).from_json(ckpt["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its training configuration is unreadable ({_one_line(exc)})") from None
    diff = [f.name for f in dataclasses.fields(config)
            if not _same_setting(getattr(saved, f.name), getattr(config, f.name)) and f.name not in set(resumable)]
    if diff:
        raise ValueError(f"cannot resume: the configuration differs from the checkpoint's in {diff}")
    return ckpt


def _same_setting(saved: Any, given: Any) -> bool:
    """Whether a saved setting equals the resumed run's. Paths are stored absolute; a run saved before that stored
    them as typed, which is read from the current directory (as those versions compared them)."""
    if saved == given:
        return True
    return (isinstance(saved, str) and isinstance(given, str) and os.path.isabs(given) and not os.path.isabs(saved)
            and Path(saved).exists() and str(Path(saved).resolve()) == given)


def restore_training_state(ckpt: dict[str, Any], path: Path, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainState:
    """Load a checkpoint (:func:`read_resume_checkpoint`) into the run's objects and the global RNGs.

    Raises:
        CheckpointError: the checkpoint does not fit this run (other model, other parameter groups, bad RNG state).
    """
    try:
        model.load_state_dict(ckpt.get("train_state", ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"], float(ckpt["best_abs_rel"]),
                           [float(v) for v in ckpt["recent_losses"]])
        set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint: {_one_line(exc)}") from None
    if min(state.epoch, state.step, state.step_in_epoch) < 0:
        raise CheckpointError(f"{path}: negative counters (epoch {state.epoch}, step {state.step})")
    return state


def export_weights(path: str | os.PathLike, model: torch.nn.Module, extra: dict[str, str] | None = None,
                   input_size: int | None = None) -> Path:
    """Write the model's weights (LoRA merged into a copy; ``model`` is left as it is) as a project checkpoint
    (safetensors + config metadata) via :func:`SurgicalDepthLib.checkpoints.save_checkpoint`; loadable with
    ``load_model(path)``. Not a deployable graph: that is ``SurgicalDepthLib.export_model`` (ONNX/OpenVINO).

    ``input_size``: the inference size to record (``config.input_size``, pixels, the resize's lower bound; default
    the model's own), e.g. the shorter side of the crops a fine-tune was trained at."""
    from SurgicalDepthLib.checkpoints import save_checkpoint as save_model

    if has_lora(model):
        model = copy.deepcopy(model)
        merge_lora(model)
    config = model.config if input_size is None else dataclasses.replace(model.config, input_size=int(input_size))
    return save_model(path, model, extra, config=config)


# -- log.csv ------------------------------------------------------------------------------------------------------
def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the run's ``log.csv`` (columns :data:`LOG_FIELDS`) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(LOG_FIELDS))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")  # csv wrote the CRLF: none added on Windows


def read_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Rows of ``log.csv`` up to optimizer step ``up_to_step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return [row for row in csv.DictReader(f) if int(row["step"]) <= up_to_step]
    except (KeyError, TypeError, ValueError, csv.Error) as exc:
        raise ValueError(f"{path}: not a training log ({_one_line(exc)})") from None


# -- the output folder --------------------------------------------------------------------------------------------
_TEMPORARIES = [temporary_name_pattern(name) for name in TRAIN_OUTPUTS]


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed saves of the outputs in :data:`TRAIN_OUTPUTS` left in ``folder``
    (``.last.<random>.pt`` can be as large as the checkpoint). Call only while holding the folder's lock."""
    removed = []
    folder = Path(folder)
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.is_file() and any(rx.fullmatch(path.name) for rx in _TEMPORARIES):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class TrainRunFolder(RunFolder):
    """The output folder of a training run: :class:`~SurgicalDepthLib.run_folder.RunFolder` (manifest, lock, never
    a file no run wrote or an input), where ``resume=True`` continues the earlier train run's manifest and keeps
    its files. Entering also removes stale temporary files of killed saves and claims the outputs that exist
    already, so a conflict is reported before any training, not at the first checkpoint.
    """

    def __init__(self, folder: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                 overwrite: bool = False, resume: bool = False):
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other: resume continues the earlier run, "
                             "overwrite deletes it")
        inputs = [Path(p) for p in inputs]
        super().__init__(folder, "train", inputs=inputs, overwrite=overwrite)
        self.resume = resume
        self.removed: list[Path] = []
        for given in inputs:  # e.g. --output = --root: --overwrite would delete the data set's files
            if given.is_dir() and given.resolve() == self.folder.resolve():
                raise OutputConflict(f"output folder {self.folder} is an input of this run ({given}); a data "
                                     "set's own files are never a valid output: choose another output folder")

    @classmethod
    def of(cls, config: Any, *, overwrite: bool = False, resume: bool = False) -> "TrainRunFolder":
        """The output folder of a ``TrainConfig``; its inputs (never outputs) are the data roots, start weights
        and teacher that exist as files or folders."""
        candidates = (config.root, config.unlabeled_root, config.model, config.teacher)
        inputs = [c for c in candidates if c and not c.startswith("random:") and Path(c).exists()]
        return cls(config.output, inputs=inputs, overwrite=overwrite, resume=resume)

    def __enter__(self) -> "TrainRunFolder":
        if self.resume:
            self._enter_resumed()
        else:
            previous = read_manifest(self.folder) if self.folder.is_dir() else None
            if previous is not None and previous[0].get("command") == "train" and not self.overwrite:
                resumable = ("pass --resume to continue it, " if (self.folder / "last.pt").is_file() else
                             "it ended before its first checkpoint (no last.pt to resume from); pass ")
                raise OutputConflict(f"{self.folder} holds an earlier training run (started "
                                     f"{previous[0].get('started', '?')}); {resumable}--overwrite to replace it, "
                                     "or choose another output folder")
            if previous is None and (self.folder / "last.pt").is_file():
                raise OutputConflict(f"{self.folder} holds a training run (last.pt); pass --resume to continue "
                                     "it or choose another output folder")
            super().__enter__()
        try:
            self.removed = remove_stale_temporaries(self.folder)
            if self.removed:
                logger.info("removed %d stale temporary file(s) of killed saves from %s", len(self.removed),
                            self.folder)
            for name in TRAIN_OUTPUTS:
                if (self.folder / name).exists():
                    self.path(name)  # this run's own (resume) or a conflict, raised now
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def _enter_resumed(self) -> None:
        last = self.folder / "last.pt"
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        self._lock()
        try:
            previous = read_manifest(self.folder)
            if previous is None:  # a run written before run manifests existed: adopt its outputs
                files = [name for name in TRAIN_OUTPUTS if (self.folder / name).exists()]
                manifest = open(self.folder / MANIFEST_NAME, "w", encoding="utf-8")
                header = {"command": "train", "started": datetime.datetime.now().isoformat(timespec="seconds"),
                          "pid": os.getpid()}
                manifest.write(json.dumps(header) + "\n" + "".join(f + "\n" for f in files))
                manifest.flush()
            else:
                header, files = previous
                if header.get("command") != "train":
                    raise OutputConflict(f"cannot resume: {self.folder} holds the outputs of a "
                                         f"'{header.get('command', '?')}' run, not of a training run")
                manifest = open(self.folder / MANIFEST_NAME, "a", encoding="utf-8")
            self._claimed = {(self.folder / f).resolve() for f in files}
            self._manifest = manifest
        except BaseException:
            self._release(failed=True)
            raise
