"""Numerical parity with Hugging Face transformers' DepthAnythingForDepthEstimation, an independent implementation.

HF models are built from transformers' own config classes with random weights, saved with ``save_pretrained`` and
loaded with ``sd.load_model``. At 518×518 (no position-embedding resampling) both must agree to ≤1e-4 of the
output range. At other sizes the two implementations resample the 37×37 position embedding with different formulas
(official DINOv2: ``scale_factor=(n + 0.1)/37``; HF: ``size=n``), so the outputs differ slightly; that difference
is bounded here, and the project's own formula is checked against the official one separately.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config  # noqa: E402

import SurgicalDepthLib as sd  # noqa: E402

SIZES = {"small": dict(hidden_size=384, num_attention_heads=6, neck=[48, 96, 192, 384], fusion=64),
         "base": dict(hidden_size=768, num_attention_heads=12, neck=[96, 192, 384, 768], fusion=128)}
OUT_INDICES = {"v1": [9, 10, 11, 12], "v2": [3, 6, 9, 12]}


def build_hf(size: str, version: str, seed: int = 0) -> DepthAnythingForDepthEstimation:
    s = SIZES[size]
    backbone = Dinov2Config(hidden_size=s["hidden_size"], num_attention_heads=s["num_attention_heads"],
                            num_hidden_layers=12, image_size=518, patch_size=14,
                            out_indices=OUT_INDICES[version], reshape_hidden_states=False, apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=s["neck"],
                                 fusion_hidden_size=s["fusion"], reassemble_hidden_size=s["hidden_size"])
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():  # random weights everywhere (HF init leaves biases zero and layer scales constant)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "lambda1" in name:
                p.copy_(0.1 + 0.05 * torch.randn_like(p))
            else:
                p.add_(0.02 * torch.randn_like(p))
        model.head.conv3.bias.fill_(0.5)  # keep the final ReLU mostly active so outputs are not all zero
    return model


@pytest.fixture(scope="module", params=[("small", "v2"), ("small", "v1"), ("base", "v2"), ("base", "v1")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tmp_path_factory):
    size, version = request.param
    hf = build_hf(size, version)
    folder = tmp_path_factory.mktemp(f"hf-{size}-{version}")
    hf.save_pretrained(folder)
    ours = sd.load_model(folder, device="cpu")
    return hf, ours, size, version


def _forward_both(hf, ours, h, w):
    torch.manual_seed(1)
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        return hf(pixel_values=x).predicted_depth, ours(x)


def test_config_inferred(pair):
    hf, ours, size, version = pair
    assert ours.config.encoder == sd.get_model_config(f"depth-anything-{version}-{size}").encoder
    assert ours.config.version == version
    assert ours.config.intermediate_layers == tuple(i - 1 for i in OUT_INDICES[version])


def test_parity_518(pair):
    hf, ours, *_ = pair
    ref, out = _forward_both(hf, ours, 518, 518)
    assert out.shape == ref.shape == (1, 518, 518)
    span = float(ref.max() - ref.min())
    assert span > 0
    assert float((out - ref).abs().max()) <= 1e-4 * span


def test_parity_non_square_bounded(pair):
    hf, ours, *_ = pair
    ref, out = _forward_both(hf, ours, 364, 518)
    assert out.shape == ref.shape == (1, 364, 518)
    span = float(ref.max() - ref.min())
    rel = float((out - ref).abs().max()) / span
    # documented difference: only the position-embedding resampling formula differs (see module docstring)
    assert rel <= 0.05, rel
    corr = np.corrcoef(out.flatten().numpy(), ref.flatten().numpy())[0, 1]
    assert corr > 0.999


def test_parity_non_square_with_hf_pos_embed_formula(pair, monkeypatch):
    """Swap in HF's resampling formula: the outputs then agree to ≤1e-4 — so the size-dependent difference above
    comes from the position-embedding formula alone."""
    import SurgicalDepthLib.encoder as enc

    def hf_formula(pos_embed, gh, gw, offset=0.1):
        n = int(round((pos_embed.shape[1] - 1) ** 0.5))
        patch = pos_embed[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
        patch = torch.nn.functional.interpolate(patch, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)

    monkeypatch.setattr(enc, "interpolate_pos_embed_official", hf_formula)
    hf, ours, *_ = pair
    ref, out = _forward_both(hf, ours, 364, 518)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.max() - ref.min())


def test_hf_layout_round_trip_bit_exact(pair, tmp_path):
    """HF -> project -> HF (save_huggingface, read back by transformers) -> identical tensors."""
    hf, ours, *_ = pair
    sd.save_huggingface(tmp_path / "again", ours)
    hf2 = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "again").eval()
    a, b = hf.state_dict(), hf2.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _tiny_hf(tmp_path, backbone: dict | None = None, **top) -> tuple[DepthAnythingForDepthEstimation, object]:
    """A ViT-Ti (vitt) sized HF model with random weights, saved with ``save_pretrained``: (model, folder)."""
    kw = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, image_size=518, patch_size=14,
              out_indices=OUT_INDICES["v2"], reshape_hidden_states=False, apply_layernorm=True, layer_norm_eps=1e-6)
    config = DepthAnythingConfig(backbone_config=Dinov2Config(**{**kw, **(backbone or {})}),
                                 neck_hidden_sizes=[24, 48, 96, 192], fusion_hidden_size=64,
                                 reassemble_hidden_size=192, **top)
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model, tmp_path


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """A ViT-Ti sized HF model with the values of every Hub config, saved: (model, folder). Those values load (their
    parity with transformers is checked above on the small and base sizes)."""
    return _tiny_hf(tmp_path_factory.mktemp("hf-tiny"))


@pytest.mark.parametrize("backbone, top", [
    (dict(apply_layernorm=False), {}), (dict(layer_norm_eps=1e-3), {}), (dict(hidden_act="relu"), {}),
    (dict(num_attention_heads=6), {}), ({}, dict(head_in_index=0))],
    ids=["apply_layernorm", "layer_norm_eps", "hidden_act", "num_attention_heads", "head_in_index"])
def test_config_fields_that_change_the_outputs_are_refused(tiny_reference, tmp_path, backbone, top):
    """Catches: config.json fields that change transformers' outputs without changing a tensor's shape
    (apply_layernorm=False, layer_norm_eps, hidden_act, the head count, head_in_index) ignored, so the folder loaded
    silently and computed something else than transformers does with it. Each is refused, naming config.json and
    the field; transformers' own outputs show that each field matters."""
    model, folder = _tiny_hf(tmp_path, backbone, **top)
    x = torch.randn(1, 3, 140, 140)
    with torch.inference_mode():
        assert not torch.allclose(model(pixel_values=x).predicted_depth,
                                  tiny_reference[0](pixel_values=x).predicted_depth)
    field = next(iter(backbone or top))
    with pytest.raises(sd.CheckpointError, match=rf"config\.json: (backbone_config\.)?{field}="):
        sd.load_model(folder, device="cpu")
    assert sd.load_model(tiny_reference[1], device="cpu").config.encoder == "vitt"  # the Hub's values load


def test_giant_swiglu_in_memory_names_match_transformers():
    """Catches: transformers ≥5 names the giant encoder's SwiGLU ``mlp.gate_proj/up_proj/down_proj`` in memory
    (``weights_in`` chunked in two, gate first), which had no official name, so a ViT-g model's ``state_dict()``
    could not be converted. A small SwiGLU block of transformers and the official block built from its converted
    weights must compute the same; a full ViT-g (meta device: no memory) must convert key for key, shape for shape."""
    from functools import partial

    from timm.models.vision_transformer import Block
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer

    from SurgicalDepthLib._hf_layout import config_to_hf, hf_to_official_state
    from SurgicalDepthLib.attention import SelfAttention
    from SurgicalDepthLib.configs import make_config
    from SurgicalDepthLib.encoder import SwiGLUFFNFused
    from SurgicalDepthLib.model import DepthModel

    torch.manual_seed(0)
    layer = Dinov2Layer(Dinov2Config(hidden_size=64, num_attention_heads=4, use_swiglu_ffn=True)).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert {"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"} <= set(layer.state_dict())
    hf = {f"backbone.encoder.layer.0.{k}": v for k, v in layer.state_dict().items()}
    official = {k[len("pretrained.blocks.0."):]: v for k, v in hf_to_official_state(hf).items()}
    block = Block(64, 4, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5, mlp_layer=SwiGLUFFNFused,
                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    block.attn = SelfAttention.from_timm(block.attn)
    block.load_state_dict(official, strict=True)
    x = torch.randn(2, 10, 64)
    with torch.inference_mode():
        ref, out = layer(x), block(x)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())

    config = make_config("vitg")
    with torch.device("meta"):
        hf_model = DepthAnythingForDepthEstimation(DepthAnythingConfig.from_dict(config_to_hf(config)))
        own = DepthModel(config).state_dict()
    converted = hf_to_official_state(hf_model.state_dict())
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)


def _assert_parity(hf: DepthAnythingForDepthEstimation, ours: torch.nn.Module) -> None:
    """``ours(x)`` equals transformers' ``predicted_depth`` to ≤1e-4 of its range on one normalised 518×518 input."""
    ref, out = _forward_both(hf, ours, 518, 518)
    span = float(ref.max() - ref.min())
    assert span > 0 and float((out - ref).abs().max()) <= 1e-4 * span


@pytest.mark.parametrize("max_depth", [20, 80])
def test_metric_folder_matches_transformers_and_streams_millimetres(tmp_path, max_depth):
    """A metric folder (``depth_estimation_type="metric"``, the Hub's V2 metric ``-hf`` models: Hypersim 20 m,
    VKITTI 80 m) loads as transformers computes it (sigmoid × max_depth), as a depth model in metres, and
    ``depth_stream`` turns its output into millimetres (× 1000) end to end. Pins: the head, range, kind and unit
    read from config.json, none of which changes a tensor's shape."""
    hf, folder = _tiny_hf(tmp_path, depth_estimation_type="metric", max_depth=max_depth)
    ours = sd.load_model(folder, device="cpu", precision="fp32")
    assert (ours.output_kind, ours.depth_unit, ours.config.version) == ("depth", "m", "v2")
    assert (ours.config.head, ours.config.max_depth) == ("metric", max_depth)
    _assert_parity(hf, ours)
    rgb = np.random.default_rng(0).integers(0, 256, (70, 98, 3), dtype=np.uint8)
    frame = next(iter(sd.depth_stream(ours, [rgb])))
    np.testing.assert_array_equal(frame.prediction, ours.infer_image(rgb))
    assert 0 < frame.prediction.min() and frame.prediction.max() < max_depth
    np.testing.assert_allclose(frame.depth_mm, frame.prediction * 1000.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_folder_matches_transformers(tmp_path, dtype):
    """A folder saved in half precision (``model.half().save_pretrained``, as Hub uploads often are) loads into
    float32 and computes what transformers computes with the same rounded weights."""
    from safetensors import safe_open

    hf, _ = _tiny_hf(tmp_path / "fp32")
    hf.to(dtype).save_pretrained(tmp_path / "half")
    with safe_open(str(tmp_path / "half" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("head.conv3.weight").dtype == dtype
    ours = sd.load_model(tmp_path / "half", device="cpu", precision="fp32")
    assert all(v.dtype == torch.float32 for v in ours.state_dict().values())
    _assert_parity(hf.float(), ours)


def test_pytorch_model_bin_with_in_memory_names_matches_transformers(tmp_path):
    """A folder whose weights are ``pytorch_model.bin`` holding ``torch.save(model.state_dict())`` of
    transformers 5 (its in-memory names, ``attention.q_proj``...) loads and computes what transformers computes."""
    hf, _ = _tiny_hf(tmp_path / "st")
    folder = tmp_path / "bin"
    hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    assert any(".attention.q_proj." in k for k in hf.state_dict())
    _assert_parity(hf, sd.load_model(folder, device="cpu", precision="fp32"))
