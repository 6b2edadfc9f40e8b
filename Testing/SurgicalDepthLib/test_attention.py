"""The DINOv2 attention module: chunked bfloat16 CPU path against an explicit softmax reference."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention

from SurgicalDepthLib.attention import SelfAttention, attention, chunked_attention


def reference(q, k, v):
    """softmax(q kᵀ / √d) v written out in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


@pytest.mark.parametrize("n,chunk", [(37, 8), (130, 128), (128, 128), (5, 128)])
def test_chunked_attention_float32_is_exact(n, chunk):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16) for _ in range(3))
    out = chunked_attention(q, k, v, chunk)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), reference(q, k, v), atol=2e-6, rtol=1e-5)


def test_bfloat16_cpu_inference_uses_the_chunked_path_within_bf16_accuracy():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 6, 300, 64) for _ in range(3))
    ref = reference(q, k, v)
    with torch.inference_mode():
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    # bfloat16 has an 8-bit mantissa (relative step 2^-8 = 0.0039)
    assert (out.double() - ref).abs().max() < 0.02 * ref.abs().max()
    # identical to the chunked function itself (so the dispatch really took that path)
    with torch.inference_mode():
        same = chunked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 128)
    assert torch.equal(out, same)


def test_training_and_float32_use_scaled_dot_product_attention():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 50, 8, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    out.sum().backward()  # differentiable
    torch.testing.assert_close(out.detach(), torch.nn.functional.scaled_dot_product_attention(q, k, v).detach())


def test_self_attention_matches_timm_attention_and_keeps_its_parameters():
    torch.manual_seed(3)
    timm_attn = Attention(64, num_heads=4, qkv_bias=True).eval()
    ours = SelfAttention.from_timm(timm_attn)
    assert ours.qkv is timm_attn.qkv and ours.proj is timm_attn.proj
    assert sorted(ours.state_dict()) == ["proj.bias", "proj.weight", "qkv.bias", "qkv.weight"]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_attn(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        ours(x, attn_mask=torch.zeros(17, 17))
    with pytest.raises(ValueError, match="heads"):
        SelfAttention(torch.nn.Linear(64, 192), torch.nn.Linear(64, 64), num_heads=5)
