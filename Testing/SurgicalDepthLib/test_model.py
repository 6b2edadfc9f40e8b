"""DepthModel for every entry of the model registry (as timm's tests loop over ``list_models()``), on tiny CPU inputs.

Random weights (the architecture's own initialisation), a 28×42 input (a 2×3 patch grid): each entry must build,
run and give a finite map of the input size and the documented ``output_kind``. Building ViT-L (335 M parameters,
~3 s) and ViT-G (1.1 G, ~4.5 GB) models on a CPU takes seconds each, so their entries are marked slow.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_model import textured, tiny_model

import SurgicalDepthLib as sd

_LARGE_ENCODERS = {"vitl", "vitg"}


def _registry_entries() -> list:
    return [pytest.param(name, id=name, marks=[pytest.mark.slow] if config.encoder in _LARGE_ENCODERS else [])
            for name, config in sorted(sd.MODEL_CONFIGS.items())]


@pytest.mark.parametrize("name", _registry_entries())
def test_every_registry_entry_builds_and_runs(name, one_torch_thread):
    """Catches a registry entry whose encoder, decoder widths or block indices do not fit together, and a head
    whose output is not the documented kind (relative: disparity >= 0; metric: depth in [0, max_depth])."""
    config = sd.MODEL_CONFIGS[name]
    torch.manual_seed(0)
    model = sd.DepthModel(config).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 28, 42))
    assert out.shape == (2, 28, 42) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    expected_kind = "disparity" if config.head == "relative" else "depth"
    assert model.output_kind == config.output_kind == expected_kind
    assert (out >= 0).all()
    if config.head == "metric":
        assert (out <= config.max_depth).all()


def test_output_size_follows_the_configured_patch_size(one_torch_thread):
    """Catches a decoder that assumes 14-pixel patches (DPTHead once upsampled to 14 × the token grid whatever
    the encoder's patch size): a 16-pixel-patch model must map 32×48 inputs to 32×48 outputs."""
    config = dataclasses.replace(sd.get_model_config("surgical-depth-tiny"), patch_size=16, pretrain_size=512,
                                 input_size=512)
    torch.manual_seed(0)
    model = sd.DepthModel(config).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 32, 48)
        with pytest.raises(ValueError, match="multiples of 16, got 28x42"):
            model(torch.randn(1, 3, 28, 42))


def test_zero_input_or_batch_size_is_refused_not_read_as_the_default(one_torch_thread):
    """Catches: ``input_size or config.input_size``, which silently ran ``input_size=0`` (and ``batch_size=0``)
    at the model's default size instead of refusing it as any other invalid size is refused."""
    model = tiny_model(1)
    rgb = textured(28, 42, 1)
    with pytest.raises(ValueError, match="input_size"):
        model.infer_image(rgb, input_size=0)
    with pytest.raises(ValueError, match="input_size"):
        model.infer_batch([rgb], input_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        list(model.iter_batches([rgb], batch_size=0))


def test_every_public_name_means_one_thing_after_its_module_is_imported():
    """Catches a public name equal to the submodule that defines it (``sd.preprocess``, ``sd.icp``): once the
    submodule was imported (loading a model imports ``preprocess``), the package attribute became the module, so
    the name meant a function in a fresh interpreter and a module later. Checked in a fresh interpreter that first
    imports every submodule, then resolves every name of ``__all__``."""
    import subprocess
    import sys

    code = ("import importlib, types, SurgicalDepthLib as sd\n"
            "def imported(module):\n"
            "    try:\n"
            "        return importlib.import_module('SurgicalDepthLib.' + module)\n"
            "    except ModuleNotFoundError as exc:  # an optional extra that is not installed (pyigtl: live)\n"
            "        if (exc.name or '').startswith('SurgicalDepthLib'): raise\n"
            "modules = {m: imported(m) for m in sorted(set(sd._EXPORTS.values()))}\n"
            "names = [n for n in sd.__all__ if modules[sd._EXPORTS[n]] is not None]\n"
            "print([n for n in names if isinstance(getattr(sd, n), types.ModuleType)], len(names) > 50)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[] True"


def test_one_image_given_to_infer_batch_is_named_not_read_as_rows(one_torch_thread):
    """Catches ``infer_batch(rgb)`` with one ``[H, W, 3]`` image read as H frames of shape ``[W, 3]``: the error
    said "frame 0 must be an RGB image [H, W, 3], got shape (42, 3)", naming neither the array's shape nor the
    fix. Arrays of other dtypes are refused naming the dtype, at every entry point."""
    model = tiny_model(1)
    rgb = textured(28, 42, 1)
    with pytest.raises(ValueError, match=r"got an array of shape \(28, 42, 3\) \(one image: infer_image\)"):
        model.infer_batch(rgb, input_size=28)
    for dtype in (np.uint16, np.float32, bool):
        with pytest.raises(TypeError, match=f"must be uint8, got {np.dtype(dtype)}"):
            model.infer_image(rgb.astype(dtype), input_size=28)
        with pytest.raises(TypeError, match=f"frame 0 must be uint8, got {np.dtype(dtype)}"):
            next(sd.depth_stream(model, [rgb.astype(dtype)], input_size=28))


def test_views_and_read_only_arrays_give_the_map_of_their_copy(one_torch_thread):
    """Any memory layout is an image (a check of the contract): a mirrored view, a BGR->RGB view with negative
    strides, the RGB channels of an RGBA buffer and a read-only array give exactly the map of a contiguous copy,
    at the input's H x W, through infer_image, infer_batch and depth_stream; tiny frames (1x1, 2x3) too."""
    model = tiny_model(1)
    rgba = np.concatenate([textured(28, 42, 2), np.zeros((28, 42, 1), np.uint8)], axis=2)
    read_only = textured(28, 42, 3)
    read_only.setflags(write=False)
    for view in (rgba[:, ::-1, :3], rgba[..., 2::-1], rgba[..., :3], read_only):
        expected = model.infer_image(np.ascontiguousarray(view), input_size=28)
        np.testing.assert_array_equal(model.infer_image(view, input_size=28), expected)
        np.testing.assert_array_equal(model.infer_batch([view, view], input_size=28)[1], expected)
        streamed = next(sd.depth_stream(model, [view], input_size=28, fov_mask=None)).prediction
        np.testing.assert_array_equal(streamed, expected)
    for h, w in ((1, 1), (2, 3), (13, 14)):
        assert model.infer_image(textured(h, w, 4), input_size=28).shape == (h, w)
