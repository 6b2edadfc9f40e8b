"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on the encoder's attention qkv.

``W x + b`` becomes ``W x + b + (α / r) · B A x`` with ``A [r, in]`` (Kaiming-uniform init, as the reference
``loralib``) and ``B [out, r]`` (zeros, so training starts from the pretrained function); ``W`` and ``b`` are
frozen. :func:`merge_lora` folds ``W + (α / r) · B A`` back into plain ``nn.Linear`` layers, so exported
checkpoints have the official keys and load anywhere.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _check_rank(rank: int, base: nn.Linear) -> None:
    """Refuse a rank that is not an integer in ``[1, min(in_features, out_features)]``: ``B A`` has rank at most
    ``min(in, out)``, so a larger ``r`` only adds parameters (``r × (in + out)`` per layer, and their memory)."""
    limit = min(base.in_features, base.out_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"LoRA rank must be an integer from 1 to {limit} (the smaller side of the adapted "
                         f"{base.in_features} -> {base.out_features} layer), got {rank!r}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update. Input ``[..., in]``, output ``[..., out]``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        _check_rank(rank, base)
        if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number > 0 or None (= rank), got {alpha!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.scaling = float(alpha if alpha is not None else rank) / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (``W + (α/r)·B A``, same bias)."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight + self.scaling * (self.lora_b @ self.lora_a))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> int:
    """Replace ``attn.qkv`` of every encoder block of a ``DepthModel`` by a :class:`LoRALinear` (in place).

    Returns the number of layers adapted. The rest of the encoder is left as it is (freeze it separately).
    """
    blocks = list(model.pretrained.blocks)
    if any(isinstance(block.attn.qkv, LoRALinear) for block in blocks):  # checked first: never half adapted
        raise ValueError("the model already has LoRA layers")
    for block in blocks:
        block.attn.qkv = LoRALinear(block.attn.qkv, rank, alpha)
    return len(blocks)


def merge_lora(model: nn.Module) -> int:
    """Fold every :class:`LoRALinear` of ``model`` into a plain ``nn.Linear`` (in place); returns how many."""
    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
                count += 1
    return count


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
