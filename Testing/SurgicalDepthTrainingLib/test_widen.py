"""Widening a trained model to twice its width (Net2WiderNet) keeps its function and lets the copies learn apart."""
from __future__ import annotations

import pytest
import torch
from SurgicalDepthLib.checkpoints import save_checkpoint
from SurgicalDepthLib.configs import make_config
from SurgicalDepthLib.loading import load_model
from SurgicalDepthTrainingLib.widen import widen_checkpoint, widen_model, widen_state_dict, wider_config
from tiny_model import tiny_model


def _frames(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 70, 98, generator=g)  # 5 x 7 patches: not square, so no axis can swap unseen


def test_widened_model_gives_the_same_depth():
    """Bugs: a split that does not sum to the weight (copies halved twice, or not at all), a ConvTranspose
    weight widened along the wrong axis, q/k/v tiled as one block (heads mixed across q, k and v), the class
    token or position embedding tiled along the token axis: each changes the output by far more than 1e-4."""
    small = tiny_model(seed=3)
    wide = widen_model(small).eval()
    x = _frames()
    with torch.no_grad():
        expected, got = small(x), wide(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert sum(p.numel() for p in wide.parameters()) > 3 * sum(p.numel() for p in small.parameters())


def test_widened_architecture_is_depth_anything_v2_small():
    """Bug: a widening that is not V2-Small's layout (decoder out_channels, heads, layers), which the official
    V2-Small code could then not load."""
    small = tiny_model(seed=0)
    config = wider_config(small.config)
    official = make_config("vits", "v2")
    for field in ("encoder", "features", "out_channels", "intermediate_layers", "patch_size", "version"):
        assert getattr(config, field) == getattr(official, field), field
    with pytest.raises(ValueError, match="vits"):
        wider_config(official)


def test_copies_of_a_channel_learn_apart():
    """Bug: an even split (w/2 to each copy): a unit and its copy then get the same gradient and stay equal
    forever, so the wide model never uses its extra width. The copies of every MLP unit must start equal and be
    pulled apart by the first backward pass."""
    wide = widen_model(tiny_model(seed=5))
    fc1 = wide.pretrained.blocks[4].mlp.fc1
    half = fc1.out_features // 2
    assert torch.equal(fc1.bias[:half], fc1.bias[half:])  # copied, not redrawn
    wide.train()
    wide(_frames(2)).square().mean().backward()
    grad = fc1.bias.grad
    assert (grad[:half] - grad[half:]).abs().max() > 1e-2 * grad.abs().max()


def test_split_is_seeded_and_survives_a_checkpoint(tmp_path):
    """Bugs: splits drawn from the global random stream (a recipe stage not reproducible), or a widened file that
    does not load back as the widened model (keys, config or fp32 splits lost)."""
    small = tiny_model(seed=7)
    state = {k: v.detach() for k, v in small.state_dict().items()}
    first, again, other = widen_state_dict(state, seed=1), widen_state_dict(state, seed=1), widen_state_dict(state, 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    source = save_checkpoint(tmp_path / "small.safetensors", small, dtype=torch.float32)
    path = widen_checkpoint(source, tmp_path / "wide.safetensors", seed=1)
    loaded = load_model(path, device="cpu").eval()
    assert loaded.config.encoder == "vits"
    assert all(torch.equal(v, first[k]) for k, v in loaded.state_dict().items())
    x = _frames(3)
    with torch.no_grad():
        assert torch.allclose(loaded(x), small(x), rtol=1e-4, atol=1e-4)
