"""DINOv2 ViT encoder on timm's ``VisionTransformer``, with the official DINOv2 position-embedding interpolation.

The state-dict keys are those of the official DINOv2 ``DinoVisionTransformer`` used by Depth Anything
(``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``; giant: ``mlp.w12/mlp.w3``).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .attention import SelfAttention
from .configs import ModelConfig


def _tracing() -> bool:
    """Whether the forward pass is being recorded as a graph (``torch.onnx.export``, ``torch.jit.trace``,
    ``torch.export``/``torch.compile``): image sizes are then symbolic, not Python numbers."""
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return torch.jit.is_tracing() or bool(compiling and compiling())


def _static_size(tensor: torch.Tensor, dim: int) -> int:
    """``tensor.shape[dim]`` as an int, also while tracing (where every size is recorded as a tensor). For
    parameters only: their shapes are constants of the graph, so reading them as numbers is exact."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(tensor.shape[dim])


def interpolate_pos_embed_official(pos_embed: torch.Tensor, grid_h: int, grid_w: int,
                                   offset: float = 0.1) -> torch.Tensor:
    """Resample a ``[1, 1 + N*N, C]`` position embedding to a ``grid_h × grid_w`` patch grid.

    Reproduces ``DinoVisionTransformer.interpolate_pos_encoding`` of the official DINOv2 code (as vendored by
    Depth-Anything-V2): bicubic, ``scale_factor = (grid + 0.1) / N`` (the offset avoids floating point error,
    facebookresearch/dino#8), no antialias, computed in float32. The embedding is returned unchanged when the grid
    is the square N×N one. timm (antialias, ``size=``) and HF transformers (``size=``) use other formulas that give
    slightly different embeddings at other sizes: the scale factor, not the output size, sets where each output
    sample is taken (source coordinate ``(i + 0.5) · N / (grid + 0.1) − 0.5``), so the formula is kept exactly.

    While the model is traced into a graph (ONNX export) the grid is symbolic and ``upsample_bicubic2d`` accepts
    no tensor scale factors; the same resampling is then written as two matrix products with the bicubic weights
    computed in the graph (:func:`interpolate_pos_embed_traceable`), so one exported graph is exact at every input size.

    Args:
        pos_embed: ``[1, 1 + N*N, C]``, class token first.
        grid_h, grid_w: target patch grid (image height and width // patch size); ints, or 0-d tensors under
            tracing.
    Returns:
        ``[1, 1 + grid_h*grid_w, C]`` in the dtype of ``pos_embed``.
    """
    n = _static_size(pos_embed, 1) - 1
    side = math.sqrt(n)
    side_int = int(side)
    if side_int * side_int != n:
        raise ValueError(f"pos_embed has {n} patch positions, which is not a square grid")
    if _tracing() or isinstance(grid_h, torch.Tensor) or isinstance(grid_w, torch.Tensor):
        return interpolate_pos_embed_traceable(pos_embed, grid_h, grid_w, side_int, offset)
    if grid_h == grid_w == side_int:
        return pos_embed
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


#: PyTorch's (and OpenCV's) bicubic convolution coefficient (Keys kernel)
_CUBIC_A = -0.75


def _bicubic_matrix(out_len, in_len: int, offset: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights of PyTorch's ``upsample_bicubic2d`` along one axis with ``scale_factor = (out_len + offset) /
    in_len`` and ``align_corners=False`` (``UpSampleKernel.cpp``): source coordinate ``(i + 0.5) / scale − 0.5``,
    index ``min(floor, in_len − 1)``, fraction clamped to [0, 1], Keys weights (a = −0.75) on the four neighbours,
    neighbour indices clamped to the border.

    Args:
        out_len: output length, an int or a 0-d tensor (symbolic in a traced graph).
    Returns:
        ``(weights, identity, same)``: float32 ``[out_len, in_len]`` bicubic weights and identity pattern, and a
        0-d bool tensor, True when ``out_len == in_len``.
    """
    dst = torch.arange(out_len, dtype=torch.float32)
    length = torch.zeros((), dtype=torch.float64) + out_len  # 0-d, also for a Python int
    # as PyTorch: the scale factor and its inverse in double, the inverse rounded to float32, the rest in float32
    inv_scale = (1.0 / ((length + offset) / in_len)).float()
    src = inv_scale * (dst + 0.5) - 0.5
    index = torch.clamp(torch.floor(src), max=in_len - 1)
    t = torch.clamp(src - index, 0.0, 1.0)[:, None]
    u = 1 - t
    a = _CUBIC_A

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    cols = torch.arange(in_len, dtype=torch.float32)[None, :]
    weights = torch.zeros_like(t * cols)
    for shift, w in ((-1, far(t + 1)), (0, near(t)), (1, near(u)), (2, far(u + 1))):
        taken = torch.clamp(index + shift, 0, in_len - 1)[:, None]
        weights = weights + w * (taken == cols).float()
    return weights, (dst[:, None] == cols).float(), torch.eq(length, in_len)


def interpolate_pos_embed_traceable(pos_embed: torch.Tensor, grid_h, grid_w, side: int,
                                    offset: float) -> torch.Tensor:
    """:func:`interpolate_pos_embed_official` as traceable tensor operations: the separable bicubic resampling
    ``Mh · P · Mwᵀ`` of each channel, and the identity for the N×N grid selected in the graph. Equal to the
    ``F.interpolate`` path up to float32 rounding (≤ 1e-5 of the embedding's largest value)."""
    dim = pos_embed.shape[-1]
    pe = pos_embed.float()
    wh, eye_h, same_h = _bicubic_matrix(grid_h, side, offset)
    ww, eye_w, same_w = _bicubic_matrix(grid_w, side, offset)
    unchanged = same_h & same_w  # the official early return: only the N×N grid keeps the embedding as it is
    wh = torch.where(unchanged, eye_h, wh)
    ww = torch.where(unchanged, eye_w, ww)
    # plain 2-D products (OpenVINO's CPU plugin refuses a batched product of a matrix with a rank-3 tensor)
    patch = torch.mm(wh, pe[0, 1:].reshape(side, side * dim))  # [grid_h, N * C]: rows resampled
    patch = patch.reshape(-1, side, dim).transpose(0, 1).reshape(side, -1)  # [N, grid_h * C]
    patch = torch.mm(ww, patch)  # [grid_w, grid_h * C]: columns resampled
    patch = patch.reshape(patch.shape[0], -1, dim).transpose(0, 1).reshape(1, -1, dim)  # [1, grid_h*grid_w, C]
    return torch.cat((pe[:, :1], patch), dim=1).to(pos_embed.dtype)


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
            one ``(patch_tokens [B, (H/p)*(W/p), C], class_token [B, C])`` per index, in order (p = patch size).
        """
        B, _, H, W = x.shape
        p = self.patch_size
        if not _tracing() and (H % p or W % p):  # traced sizes are symbolic; the exporter checks its sizes
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
