"""Training checkpoints (``.pt``, read with ``torch.load(weights_only=True)`` only) and model export.

A training checkpoint is a dict of weights_only-safe values::

    {"format": "surgical-depth-train", "model": <plain state dict, LoRA merged: loadable by load_model>,
     "model_config": <ModelConfig JSON>, "train_state": <raw state dict with LoRA factors, or absent>,
     "optimizer", "scheduler": state dicts, "epoch", "step", "step_in_epoch", "best_abs_rel", "recent_losses",
     "config": <TrainConfig JSON>, "rng": {"torch", "numpy", "python", "cuda"}}

RNG states are stored as tensors / lists of ints so that no pickled object is needed.
"""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from SurgicalDepthLib._atomic import atomic_path

from .lora import has_lora, merge_lora

TRAIN_FORMAT = "surgical-depth-train"


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


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, *, config_json: str, epoch: int, step: int, step_in_epoch: int,
                    best_abs_rel: float, recent_losses: list[float] | None = None) -> Path:
    """Write a training checkpoint atomically (temporary file + rename). ``model`` is the unwrapped model."""
    path = Path(path)
    data: dict[str, Any] = {
        "format": TRAIN_FORMAT,
        "model": plain_state(model),
        "model_config": json.dumps(model.config.to_dict()),
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``); raises ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} does not exist")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path}: not a training checkpoint (format {TRAIN_FORMAT!r} expected)")
    return data


def export_model(path: str | os.PathLike, model: torch.nn.Module, extra: dict[str, str] | None = None) -> Path:
    """Export the model (LoRA merged) as a project checkpoint (safetensors + config metadata) via
    :func:`SurgicalDepthLib.checkpoints.save_checkpoint`; loadable with ``load_model(path)``."""
    from SurgicalDepthLib.checkpoints import save_checkpoint as save_model

    if has_lora(model):
        model = copy.deepcopy(model)
        merge_lora(model)
    return save_model(path, model, extra)
