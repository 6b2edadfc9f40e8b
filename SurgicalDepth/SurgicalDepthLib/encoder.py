"""DINOv2 ViT encoder on timm's ``VisionTransformer``, with the official DINOv2 position-embedding interpolation.

The state-dict keys are those of the official DINOv2 ``DinoVisionTransformer`` used by Depth Anything
(``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``; giant: ``mlp.w12/mlp.w3``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .attention import SelfAttention
from .configs import ModelConfig


def interpolate_pos_embed_official(pos_embed: torch.Tensor, grid_h: int, grid_w: int,
                                   offset: float = 0.1) -> torch.Tensor:
    """Resample a ``[1, 1 + N*N, C]`` position embedding to a ``grid_h × grid_w`` patch grid.

    Reproduces ``DinoVisionTransformer.interpolate_pos_encoding`` of the official DINOv2 code (as vendored by
    Depth-Anything-V2): bicubic, ``scale_factor = (grid + 0.1) / N`` (the offset avoids floating point error,
    facebookresearch/dino#8), no antialias, computed in float32. The embedding is returned unchanged when the grid
    is the square N×N one. timm (antialias, ``size=``) and HF transformers (``size=``) use other formulas that give
    slightly different embeddings at other sizes.

    Args:
        pos_embed: ``[1, 1 + N*N, C]``, class token first.
        grid_h, grid_w: target patch grid (image height and width // patch size).
    Returns:
        ``[1, 1 + grid_h*grid_w, C]`` in the dtype of ``pos_embed``.
    """
    n = pos_embed.shape[1] - 1
    if grid_h * grid_w == n and grid_h == grid_w:
        return pos_embed
    side = math.sqrt(n)
    side_int = int(side)
    if side_int * side_int != n:
        raise ValueError(f"pos_embed has {n} patch positions, which is not a square grid")
    dim = pos_embed.shape[-1]
    pe = pos_embed.float()
    cls_pe, patch_pe = pe[:, :1], pe[:, 1:]
    patch_pe = patch_pe.reshape(1, side_int, side_int, dim).permute(0, 3, 1, 2)
    patch_pe = F.interpolate(patch_pe, scale_factor=((grid_h + offset) / side, (grid_w + offset) / side),
                             mode="bicubic", antialias=False)
    if patch_pe.shape[-2:] != (grid_h, grid_w):  # cannot happen with offset 0.1; guards a changed formula
        raise RuntimeError(f"position embedding resampled to {tuple(patch_pe.shape[-2:])}, "
                           f"expected {(grid_h, grid_w)}")
    patch_pe = patch_pe.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((cls_pe, patch_pe), dim=1).to(pos_embed.dtype)


class SwiGLUFFNFused(nn.Module):
    """DINOv2's fused SwiGLU MLP (giant): ``w3(silu(a) * b)`` with ``a, b = chunk(w12(x), 2)``; hidden width
    ``(int(hidden_features * 2 / 3) + 7) // 8 * 8`` (4096 for ViT-g), as in ``dinov2/layers/swiglu_ffn.py``.
    Accepts timm's ``mlp_layer`` keyword arguments."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, **_timm_kwargs):
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class DinoV2Encoder(VisionTransformer):
    """A timm DINOv2 ViT whose ``intermediate`` matches the official ``get_intermediate_layers(..., norm=True,
    return_class_token=True)``: final norm applied to each selected block's output, class token split off."""

    def __init__(self, config: ModelConfig):
        spec = config.spec
        kwargs: dict = {}
        if spec.ffn == "swiglu":
            kwargs.update(mlp_layer=SwiGLUFFNFused)
        super().__init__(
            img_size=config.pretrain_size, patch_size=config.patch_size, embed_dim=spec.embed_dim,
            depth=spec.depth, num_heads=spec.num_heads, init_values=1e-5, num_classes=0,
            dynamic_img_size=True, **kwargs,
        )
        for block in self.blocks:  # same parameters, attention computed by SurgicalDepthLib.attention
            block.attn = SelfAttention.from_timm(block.attn)
        # Present in official and HF checkpoints (unused for inference); kept so loading is strict and exact.
        self.mask_token = nn.Parameter(torch.zeros(1, spec.embed_dim))
        self.patch_size = config.patch_size

    def intermediate(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised tokens of the given blocks.

        Args:
            x: ``[B, 3, H, W]`` normalised image, H and W multiples of the patch size.
            layers: 0-based block indices.
        Returns:
            one ``(patch_tokens [B, H/14*W/14, C], class_token [B, C])`` per index, in order.
        """
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input height and width must be multiples of {p}, got {H}x{W}")
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        tokens = tokens + interpolate_pos_embed_official(self.pos_embed, H // p, W // p).to(tokens.dtype)
        wanted = set(layers)
        taken: dict[int, torch.Tensor] = {}
        last = max(layers)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                taken[i] = tokens
            if i == last:
                break
        out = []
        for i in layers:
            normed = self.norm(taken[i])
            out.append((normed[:, 1:], normed[:, 0]))
        return out
