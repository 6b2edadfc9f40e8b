"""Multi-head self-attention of the DINOv2 blocks, with a faster path for bfloat16 inference on CPU.

PyTorch's CPU flash-attention kernel runs bfloat16 no faster than float32 (measured on a 2-core AMD EPYC with
AVX512-BF16: 116 vs 111 ms for 6 heads × 2,443 tokens, the DA-S 518×924 case), while bfloat16 matrix products
run about twice as fast as float32 ones. For bfloat16 inference on CPU, :func:`attention` therefore computes
``softmax(q kᵀ / √d) v`` with batched bfloat16 matrix products over blocks of queries (the score block of one
query chunk stays in cache; memory ``O(chunk × N)`` per head); everywhere else it calls
``F.scaled_dot_product_attention``. Numbers: Testing/benchmarks/RESULTS.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUERY_CHUNK = 128


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """``softmax(q kᵀ / √head_dim) v`` by batched matrix products over blocks of ``chunk`` queries: the bfloat16
    CPU inference path of :func:`attention` (see the module docstring), in any dtype.

    Args:
        q, k, v: ``[B, heads, N, head_dim]``, same dtype and device.
        chunk: queries per block (memory ``O(chunk × N)`` per head).
    Returns:
        ``[B, heads, N, head_dim]`` in the dtype of ``q``.
    """
    b, h, n, d = q.shape
    q = (q * d ** -0.5).reshape(b * h, n, d)
    kt = k.reshape(b * h, n, d).transpose(1, 2).contiguous()
    v = v.reshape(b * h, n, d)
    out = torch.empty_like(q)
    for start in range(0, n, chunk):
        scores = torch.bmm(q[:, start:start + chunk], kt)  # [b*h, chunk, n]
        torch.bmm(scores.softmax(dim=-1), v, out=out[:, start:start + chunk])
    return out.reshape(b, h, n, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """Scaled dot-product self-attention (no mask, no dropout).

    Args:
        q, k, v: ``[B, heads, N, head_dim]``, same dtype and device.
        chunk: queries per block on the bfloat16 CPU inference path.
    Returns:
        ``[B, heads, N, head_dim]``, ``softmax(q kᵀ / √head_dim) v``.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and not torch.is_grad_enabled():
        return chunked_attention(q, k, v, chunk)
    return F.scaled_dot_product_attention(q, k, v)


class SelfAttention(nn.Module):
    """DINOv2 attention with the official parameter names (``qkv``, ``proj``), computed by :func:`attention`.

    Built from an existing timm ``Attention`` (:meth:`from_timm`) so that its parameters, and therefore its
    initialisation, are kept; works with every timm version (no ``attn_layer`` argument needed)."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, num_heads: int):
        super().__init__()
        if qkv.out_features != 3 * qkv.in_features or qkv.in_features % num_heads:
            raise ValueError(f"qkv {qkv.in_features}->{qkv.out_features} does not fit {num_heads} heads")
        self.qkv = qkv
        self.proj = proj
        self.num_heads = num_heads

    @classmethod
    def from_timm(cls, attn: nn.Module) -> "SelfAttention":
        for name in ("q_norm", "k_norm", "norm"):  # present (as Identity) in some timm versions
            if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
                raise ValueError(f"timm attention with a non-identity {name} is not a DINOv2 attention")
        if getattr(attn, "gate", None) is not None:
            raise ValueError("timm attention with a gate is not a DINOv2 attention")
        return cls(attn.qkv, attn.proj, attn.num_heads)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_timm_kwargs) -> torch.Tensor:
        """``[B, N, C]`` tokens → ``[B, N, C]`` (timm's ``Block`` passes ``attn_mask=None``)."""
        if attn_mask is not None:
            raise ValueError("DINOv2 self-attention takes no attention mask")
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))
