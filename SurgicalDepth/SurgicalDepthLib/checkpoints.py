"""Reading and writing Depth Anything checkpoints: official ``.pth`` state dicts, Hugging Face folders
(``config.json`` + ``model.safetensors``) and this project's own checkpoints (safetensors + config metadata).

Every ``torch.load`` runs with ``weights_only=True``: a pickle that would execute code is refused.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic_io import atomic_path
from ._checkpoint_hints import (ZOEDEPTH_MESSAGE, head_from_name, is_official_metric_training,
                                is_zoedepth, max_depth_from_name, other_model_files, version_from_name)
from ._hf_layout import config_from_hf, config_to_hf, hf_to_official_state, official_to_hf_state
from .configs import ENCODERS, ModelConfig, make_config

PROJECT_FORMAT = "surgical-depth"


class CheckpointError(ValueError):
    """A file that is not a usable Depth Anything checkpoint; the message names the file and the problem."""


# -- raw reading ------------------------------------------------------------------------------------------------
def _torch_reason(exc: Exception) -> str:
    """The informative part of a ``torch.load`` error, without PyTorch's advice to retry with
    ``weights_only=False`` (wrong advice for a file that is not trusted)."""
    text = str(exc)
    found = re.search(r"(Unsupported global: [^\n]*|unsupported GLOBAL [^\n]*|[^\n]* is blocked[^\n]*)", text)
    if found:  # without the advice to allowlist the global (add_safe_globals): as wrong for an untrusted file
        return re.split(r"\.?\s*Please use `?torch\.serialization", found.group(1))[0].strip().rstrip(".")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln
             and "Weights only load failed" not in ln]
    return lines[0] if lines else type(exc).__name__


def load_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one :class:`CheckpointError` naming the
    file (a pickle that would run code is refused, never loaded)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError...)
        text = _torch_reason(exc)
        if re.search(r"Unsupported global|unsupported GLOBAL|is blocked", str(exc)):
            raise CheckpointError(
                f"{path}: refused to load — the file contains pickled objects that are not plain tensors, which "
                f"could run code (read with torch.load weights_only=True): {text}") from exc
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or another "
                                  f"format): {text}") from exc
        raise CheckpointError(f"{path}: cannot read the checkpoint (truncated or corrupt?): {text}") from exc


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or another format): {exc}") from exc


#: keys a training script may keep its state dict under (official metric train.py: "model"; Lightning: "state_dict")
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
#: prefixes a wrapper module puts before the official keys (DDP: "module."; a LightningModule's attribute: "model.")
WRAPPER_PREFIXES = ("module.", "model.")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded ``.pth``: plain, or under one of :data:`WRAPPER_KEYS`, with the
    :data:`WRAPPER_PREFIXES` that every key shares stripped (``model.module.`` too)."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors (got {type(obj).__name__})")
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in obj)), None):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


# -- architecture inference ---------------------------------------------------------------------------------------
def infer_config(state: dict[str, torch.Tensor], *, version: str | None = None, name: str = "",
                 head: str | None = None, max_depth: float | None = None) -> ModelConfig:
    """Architecture of an official-layout state dict, from its tensor shapes.

    The encoder and decoder widths come from the shapes; V1 vs V2 (same shapes, different decoder blocks) from
    ``version``, else from ``name`` (e.g. ``depth_anything_v2_vits.pth`` / ``depth_anything_vits14.pth``). Relative
    vs metric heads also have equal shapes: ``head`` (default ``"metric"`` when ``max_depth`` is given or the name
    says "metric", else ``"relative"``). Ambiguity is an error.
    """
    try:
        width = state["pretrained.cls_token"].shape[-1]
        n_blocks = 1 + max(int(m.group(1)) for k in state
                           if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k)))
        features = state["depth_head.scratch.refinenet1.out_conv.weight"].shape[0]
        out_channels = tuple(int(state[f"depth_head.projects.{i}.weight"].shape[0]) for i in range(4))
        patch = int(state["pretrained.patch_embed.proj.weight"].shape[-1])
        grid = int(round((state["pretrained.pos_embed"].shape[1] - 1) ** 0.5))
    except (KeyError, ValueError) as exc:
        if is_zoedepth(state):
            raise CheckpointError(f"{name or 'state dict'}: {ZOEDEPTH_MESSAGE}") from None
        hf = any(k.startswith(("backbone.", "neck.", "head.")) for k in state)
        raise CheckpointError(f"{name or 'state dict'}: not a Depth Anything checkpoint "
                              f"(missing {exc}; expected pretrained.* and depth_head.* keys)"
                              + ("; these are a Hugging Face model's weights: pass the folder that holds them with "
                                 "its config.json" if hf else "")) from None
    encoder = next((e for e, s in ENCODERS.items() if s.embed_dim == width and s.depth == n_blocks), None)
    if encoder is None:
        raise CheckpointError(f"{name}: {_unknown_encoder(width, n_blocks)}")
    base = Path(name).name.lower() if name else ""  # the file's own name: never the folders it lies in
    named, official = version_from_name(base)
    if version is not None and official and version != named:
        raise CheckpointError(f"{name}: version={version!r} conflicts with its official file name (Depth Anything "
                              f"{named.upper()}); rename the file if it holds another version")
    version = version or named
    if version is None:
        raise CheckpointError(
            f"{name}: cannot tell Depth Anything V1 from V2 (same shapes, different decoder blocks); pass "
            "version='v1' or 'v2' to sd.load_model (--model-version in the CLI), or give the file its official name "
            "(e.g. depth_anything_v2_vits.pth or depth_anything_vits14.pth)")
    head, max_depth = _head_and_range(name, base, head, max_depth)
    try:
        return make_config(encoder, version, head, max_depth, features=int(features), out_channels=out_channels,
                           patch_size=patch, pretrain_size=grid * patch)
    except ValueError as exc:  # e.g. patch 16: the default input size 518 is no multiple of it
        raise CheckpointError(f"{name}: {exc} (read from its tensor shapes: patch size {patch} from "
                              f"pretrained.patch_embed.proj.weight, a {grid}x{grid} grid from pretrained.pos_embed)"
                              ) from None


def _head_and_range(name: str, base: str, head: str | None, max_depth: float | None) -> tuple[str, float | None]:
    """``(head, max_depth)`` of a file named ``base`` (its own name, lower case) from the hints and what the name
    says (:func:`head_from_name`, :func:`max_depth_from_name`); a hint that contradicts the name is an error."""
    named_head = head_from_name(base)
    if head is not None and named_head is not None and head != named_head:
        raise CheckpointError(f"{name}: head={head!r} conflicts with its {_says(named_head)}")
    if named_head == "relative" and max_depth is not None:  # same shapes: the sigmoid head would load silently
        raise CheckpointError(f"{name}: max_depth={max_depth:g} conflicts with its {_says(named_head)}")
    named_max = max_depth_from_name(base)
    if max_depth is not None and named_max is not None and named_head and max_depth != named_max:
        raise CheckpointError(f"{name}: max_depth={max_depth:g} conflicts with its official file name "
                              f"(max_depth {named_max:g}); rename the file if it was trained to another depth")
    if head is None:
        head = "metric" if (max_depth is not None or named_head == "metric") else "relative"
    if head == "metric" and max_depth is None:
        max_depth = named_max
        if max_depth is None:
            raise CheckpointError(f"{name}: metric model without max_depth; pass max_depth= to sd.load_model "
                                  "(--model-max-depth in the CLI)")
    return head, max_depth


def _says(named_head: str) -> str:
    return ("file name, which says metric" if named_head == "metric" else
            "official file name, that of a relative model (a metric head would read its disparity as depth); rename "
            "the file if it holds a metric model")


def _unknown_encoder(width: int, n_blocks: int) -> str:
    """Why no DINOv2 encoder has ``width`` and ``n_blocks`` (the highest ``pretrained.blocks.N`` + 1), naming the
    block keys that differ from the encoder of that width."""
    encoder = next((e for e, s in ENCODERS.items() if s.embed_dim == width), None)
    if encoder is None:
        return (f"no DINOv2 encoder has width {width} (pretrained.cls_token); known widths "
                f"{ {e: s.embed_dim for e, s in ENCODERS.items()} }")
    depth = ENCODERS[encoder].depth
    span = f"{min(depth, n_blocks)}" + (f"-{max(depth, n_blocks) - 1}" if abs(depth - n_blocks) > 1 else "")
    differ = "extra" if n_blocks > depth else "missing"
    return (f"encoder of width {width} with {n_blocks} blocks is not a known DINOv2 size: {encoder} has {depth} "
            f"blocks, so keys pretrained.blocks.{span}.* are {differ}")


# -- loading ----------------------------------------------------------------------------------------------------
def load_state_dict_file(path: str | os.PathLike, **hints: Any) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Read any supported checkpoint into ``(official-layout state dict, ModelConfig)``.

    Args:
        path: an official ``.pth``, a project checkpoint (``.safetensors`` with config metadata, or a training
            ``.pt``), or a Hugging Face folder.
        hints: ``version``, ``head``, ``max_depth`` — used when the file does not say; one that contradicts what
            the file says (its stored config, its official name) is a CheckpointError.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        return _load_hf_folder(path, hints)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        state, meta = _safetensors_load(path)
        if meta.get("format") == PROJECT_FORMAT:
            return state, agreeing_config(_stored_config(meta["config"], path), hints, path)
        if "config" in meta:
            raise CheckpointError(f"{path}: metadata format {meta.get('format')!r}, expected {PROJECT_FORMAT!r}")
        return state, infer_config(state, name=str(path), **hints)
    obj = load_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == PROJECT_FORMAT + "-train":
        state = _unwrap(obj.get("model"), path)
        return state, agreeing_config(_stored_config(obj.get("model_config"), path), hints, path)
    if is_official_metric_training(obj):
        hints = _official_training_hints(hints, path)
    state = _unwrap(obj, path)
    return state, infer_config(state, name=str(path), **hints)


def _official_training_hints(hints: dict[str, Any], path: Path) -> dict[str, Any]:
    """``hints`` for a checkpoint of the official ``metric_depth/train.py``, a V2 metric model by its format: a
    hint that says otherwise is an error, and so is a missing ``max_depth``, which the file does not record."""
    for key, value in (("version", "v2"), ("head", "metric")):
        if hints.get(key) not in (None, value):
            raise CheckpointError(f"{path}: {key}={hints[key]!r} conflicts with its format, that of the official "
                                  "metric_depth/train.py (a V2 metric model)")
    if hints.get("max_depth") is None:
        raise CheckpointError(f"{path}: a metric model written by the official metric_depth/train.py, which does "
                              "not record its max_depth; pass max_depth= to sd.load_model (--model-max-depth in the "
                              "CLI): the --max-depth it was trained with (official recipe: 20 Hypersim, 80 VKITTI)")
    return {**hints, "version": "v2", "head": "metric"}


def agreeing_config(config: ModelConfig, hints: dict[str, Any], source: Any,
                    whose: str = "the file's own") -> ModelConfig:
    """``config`` (what a file, or the registry, states) after checking that every hint given agrees with it: a hint
    that differs is ambiguity, an error naming both values (never silently dropped, never overriding the file)."""
    for key, value in hints.items():
        if value is not None and getattr(config, key) != value:
            raise CheckpointError(f"{source}: {key}={value!r} conflicts with {whose} {key}={getattr(config, key)!r}")
    return config


def _stored_config(text: Any, path: Path) -> ModelConfig:
    """The model config stored (as JSON text) in a project checkpoint; any problem is an error naming the file."""
    try:
        return ModelConfig.from_dict(json.loads(text))
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: invalid model config in its metadata: {exc}") from None


def _load_hf_folder(folder: Path, hints: dict[str, Any]) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """A Hugging Face model folder: transformers' layout (``DepthAnythingForDepthEstimation``: ``model_type``
    ``depth_anything``), or the V1 release's own (``PyTorchModelHubMixin``: ``{"encoder", "features",
    "out_channels"}`` beside official-layout weights; only V1 was published so)."""
    cfg_path = folder / "config.json"
    others = other_model_files(folder)
    if not cfg_path.is_file():
        holds = f"; it holds {', '.join(others)}: pass the file to load" if others else ""
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json){holds}")
    if others:  # two models in one source: which one was meant is not ours to guess
        raise CheckpointError(f"{folder}: ambiguous: a Hugging Face folder (config.json and its weights, e.g. "
                              f"model.safetensors) and {', '.join(others)}; pass the file, or move it out of the "
                              "folder to load the Hugging Face model")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    if isinstance(cfg, dict) and "model_type" not in cfg and {"encoder", "features", "out_channels"} <= set(cfg):
        if hints.get("version", "v1") != "v1":
            raise CheckpointError(f"{cfg_path}: version={hints['version']!r} conflicts with its layout, that of "
                                  "the Depth Anything V1 release")
        state, weights = _folder_weights(folder)
        return state, infer_config(state, name=str(weights), **{**hints, "version": "v1"})
    try:
        config = config_from_hf(cfg)
    except (ValueError, TypeError) as exc:  # TypeError: a field of the wrong type (e.g. "input_size": "big")
        raise CheckpointError(f"{cfg_path}: {exc}") from exc
    state, weights = _folder_weights(folder)
    try:
        return hf_to_official_state(state), agreeing_config(config, hints, cfg_path)
    except KeyError as exc:
        raise CheckpointError(f"{weights}: {exc.args[0]}") from None


def _folder_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights of a Hugging Face folder and the file they were read from: ``model.safetensors`` or
    ``pytorch_model.bin``, or the shards an ``*.index.json`` lists (``save_pretrained(max_shard_size=...)``)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            return _weights_file(path), path
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index}: not a shard index (no 'weight_map' of tensor -> file): {exc}") \
                    from None
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if Path(shard).name != shard or not (folder / shard).is_file():
                    raise CheckpointError(f"{index}: lists shard {shard!r}, which is not a file in {folder}")
                state.update(_weights_file(folder / shard))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise CheckpointError(f"{index}: tensors {missing[:3]} are in no shard")
            return state, index
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin (nor a sharded index of them)")


def _weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        return _safetensors_load(path)[0]
    return _unwrap(load_torch_file(path), path)


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict check before loading: missing/unexpected keys, shape mismatches and integer (or bool) tensors for
    floating-point weights, first offenders named; then non-finite values."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    not_float = [f"{k}: file {state[k].dtype} vs model {own[k].dtype}" for k in own
                 if k in state and own[k].is_floating_point() and not state[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
    if not_float:  # load_state_dict would cast them silently
        problems.append(f"{len(not_float)} tensors not floating point (first: {'; '.join(not_float[:3])})")
    if problems:
        raise CheckpointError(f"{source}: does not match {model.config.encoder} {model.config.version}: "
                              + "; ".join(problems))
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: tensor {key} holds {bad} non-finite values (NaN/inf) of "
                                  f"{value.numel()}; the weights are corrupt (a diverged training run?)")


# -- saving -----------------------------------------------------------------------------------------------------
def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_official(path: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Write the official ``.pth`` layout (a plain state dict: ``pretrained.*``, ``depth_head.*``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(_cpu_state(model), tmp)
    return path


def _write_safetensors(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``state`` as a safetensors file at ``path`` (atomically), readable like every other output: safetensors
    replaces the file with one of mode 0600 (a model trained on a shared machine, or read by Slicer as another
    user, was unreadable); it gets the mode a new file gets here (0644 under the usual umask)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode  # the empty file atomic_path created, with the umask applied
        save_file(state, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)
    return Path(path)


def save_huggingface(folder: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Write a Hugging Face folder (``config.json`` + ``model.safetensors``) loadable by transformers; a model that
    transformers cannot describe (a metric ``max_depth`` that is not a whole number) is a ValueError before anything
    is written."""
    folder = Path(folder)
    hf_config = config_to_hf(model.config)
    folder.mkdir(parents=True, exist_ok=True)
    _write_safetensors(folder / "model.safetensors", official_to_hf_state(_cpu_state(model)), {"format": "pt"})
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=2))
    return folder


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, extra: dict[str, str] | None = None,
                    dtype: torch.dtype | None = None, config: ModelConfig | None = None) -> Path:
    """Write a project checkpoint: safetensors with ``{"format": "surgical-depth", "config": <json>}`` metadata.

    Args:
        dtype: optionally store floating tensors in another dtype (e.g. ``torch.float16`` for shipping).
        extra: more string metadata (model card fields, training recipe).
        config: the configuration to record (default ``model.config``), e.g. with the inference size a fine-tune
            was trained at; it must describe the same architecture as the weights.
    """
    path = Path(path)
    state = _cpu_state(model)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": PROJECT_FORMAT, "config": json.dumps((config or model.config).to_dict())}
    meta.update(extra or {})
    return _write_safetensors(path, state, meta)


def official_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Official state dict + config -> (HF state dict, HF ``config.json`` dict)."""
    return official_to_hf_state(state), config_to_hf(config)


def hf_to_official(state: dict[str, torch.Tensor], hf_config: dict) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """HF state dict + ``config.json`` dict -> (official state dict, ModelConfig)."""
    return hf_to_official_state(state), config_from_hf(hf_config)
