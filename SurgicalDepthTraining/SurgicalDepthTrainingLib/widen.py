"""Widen a trained model to twice its width with the same function (Net2WiderNet, Chen, Goodfellow & Shlens,
ICLR 2016, "Net2Net: Accelerating Learning via Knowledge Transfer"), so a larger network starts where a smaller
one ended instead of from random weights.

The encoder's width ``C`` (and with it the heads, the MLP's hidden width and the DPT decoder's four
``out_channels``) doubles: this project's ``vitt`` becomes ``vits``, Depth Anything V2-Small's layout exactly
(:data:`SurgicalDepthLib.configs.ENCODERS`; head width 64 and the decoder's ``features`` stay). Every widened
channel ``i`` of the new model is a copy of channel ``i mod C`` of the old one (heads ``h`` and ``h + H`` are copies
of head ``h``), which keeps the layer norms exact: the mean and variance over ``[x, x]`` are those over ``x``. A
layer reading copied channels gets the old weight split between the two copies, ``w·r`` and ``w·(1 − r)`` with
``r ~ U(1/4, 3/4)`` drawn per weight: the sum, and so the function, is unchanged, while the copies receive
different gradients from the first step (with an even split ``w/2`` they would stay equal forever).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from SurgicalDepthLib.configs import ENCODERS, ModelConfig

# Encoders whose widths are exactly twice another's (embed dim, heads) with the same depth and head width.
WIDER = {"vitt": "vits"}
SPLIT_LOW, SPLIT_HIGH = 0.25, 0.75

# Token parameters [..., C]: copied along their last (channel) axis.
_TOKENS = re.compile(r"pretrained\.(cls_token|pos_embed|mask_token)")
# Parameters copied along their first (output) axis only: they read nothing widened.
_TILE_ONLY = re.compile(r"pretrained\.(norm\.\w+|patch_embed\.proj\.\w+"
                        r"|blocks\.\d+\.(norm\d|ls\d)\.\w+|blocks\.\d+\.(attn\.proj|mlp\.fc\d)\.bias)"
                        r"|depth_head\.(projects\.\d|resize_layers\.\d)\.bias")
# Linear / Conv2d weights [out, in, ...]: rows copied, columns split between the copies of their input.
_TILE_AND_SPLIT = re.compile(r"pretrained\.blocks\.\d+\.(attn\.proj|mlp\.fc\d)\.weight"
                             r"|depth_head\.(projects\.\d|resize_layers\.3)\.weight")
# ConvTranspose2d weights [in, out, k, k]: the input axis split, the output axis copied.
_TRANSPOSED = re.compile(r"depth_head\.resize_layers\.[01]\.weight")
# Conv weights [features, in, k, k] whose output (the decoder's ``features``) keeps its width.
_SPLIT_ONLY = re.compile(r"depth_head\.scratch\.layer\d_rn\.weight")
_QKV = re.compile(r"pretrained\.blocks\.\d+\.attn\.qkv\.(weight|bias)")


def wider_config(config: ModelConfig) -> ModelConfig:
    """The doubled architecture of ``config`` (``vitt`` → ``vits``, decoder ``out_channels`` × 2)."""
    if config.encoder not in WIDER:
        raise ValueError(f"encoder {config.encoder!r} has no widening; one of {sorted(WIDER)}")
    old, new = ENCODERS[config.encoder], ENCODERS[WIDER[config.encoder]]
    if (new.embed_dim, new.num_heads, new.depth) != (2 * old.embed_dim, 2 * old.num_heads, old.depth):
        raise ValueError(f"{WIDER[config.encoder]} is not {config.encoder} at twice the width")
    return dataclasses.replace(config, encoder=WIDER[config.encoder],
                               out_channels=tuple(2 * c for c in config.out_channels))


def _tile(w: torch.Tensor, dim: int) -> torch.Tensor:
    """``w`` with its axis ``dim`` repeated once: ``[a, b] → [a, b, a, b]``."""
    return torch.cat([w, w], dim=dim)


def _split(w: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``w`` with its axis ``dim`` (an input axis) doubled, each weight shared out between its two copies as
    ``w·r`` and ``w·(1 − r)``, ``r ~ U(SPLIT_LOW, SPLIT_HIGH)``."""
    r = torch.empty(w.shape, dtype=torch.float64).uniform_(SPLIT_LOW, SPLIT_HIGH, generator=generator)
    w64 = w.double()
    return torch.cat([w64 * r, w64 * (1 - r)], dim=dim).to(w.dtype)


def _widen_qkv(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """qkv ``[3C, C]`` (or bias ``[3C]``) → ``[6C, 2C]``: q, k and v each get their rows (heads) copied."""
    c = w.shape[0] // 3
    blocks = _tile(w.reshape(3, c, *w.shape[1:]), 1).reshape(6 * c, *w.shape[1:])
    return _split(blocks, 1, generator) if w.dim() == 2 else blocks


def widen_tensor(name: str, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One parameter or buffer of the state dict, widened by its role (module docstring)."""
    if _QKV.fullmatch(name):
        return _widen_qkv(w, generator)
    if _TOKENS.fullmatch(name):
        return _tile(w, w.dim() - 1)
    if _TILE_ONLY.fullmatch(name):
        return _tile(w, 0)
    if _TILE_AND_SPLIT.fullmatch(name):
        return _split(_tile(w, 0), 1, generator)
    if _TRANSPOSED.fullmatch(name):
        return _split(_tile(w, 1), 0, generator)
    if _SPLIT_ONLY.fullmatch(name):
        return _split(w, 1, generator)
    return w.clone()


def widen_state_dict(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of :func:`widen_model`'s result (official key names; ``seed`` draws the splits)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: widen_tensor(name, w, generator) for name, w in state.items()}


def widen_model(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A :class:`~SurgicalDepthLib.model.DepthModel` of twice ``model``'s width computing the same function
    (up to float rounding); ``model`` is left as it is."""
    from SurgicalDepthLib.model import DepthModel

    wide = DepthModel(wider_config(model.config))
    state = widen_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, seed)
    wide.load_state_dict(state, strict=True)
    return wide.to(next(model.parameters()).device)


def widen_checkpoint(source: str | Path, target: str | Path, seed: int = 0) -> Path:
    """Write ``source`` (a model file or name :func:`~SurgicalDepthLib.loading.load_model` reads) widened by
    :func:`widen_model` to ``target`` (fp32 safetensors, so the splits keep every bit); returns ``target``."""
    from SurgicalDepthLib.checkpoints import save_checkpoint
    from SurgicalDepthLib.loading import load_model

    model = load_model(source, device="cpu").float()
    return save_checkpoint(target, widen_model(model, seed), extra={"widened_from": str(source)},
                           dtype=torch.float32)
