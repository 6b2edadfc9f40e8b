"""The default-model recipe: deterministic clip list, and the whole train-and-export path on a shortened run."""
from __future__ import annotations

import json

import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthTrainingLib.recipes import DEFAULT_RECIPE, clip_specs, train_default_model


def test_clip_specs_deterministic_and_varied():
    a, b = clip_specs(12, seed=0), clip_specs(12, seed=0)
    assert a == b and clip_specs(12, seed=1) != a
    assert {s["organ"] for s in a} == {"colon", "stomach", "small_intestine", "surgical_field"}
    assert len({s["seed"] for s in a}) == 12
    assert any(s["fisheye"] for s in clip_specs(40)) and not all(s["fisheye"] for s in clip_specs(40))
    with pytest.raises(ValueError, match="n_clips must be >= 1"):
        clip_specs(0)


@pytest.mark.slow
def test_train_default_model_shortened(tmp_path):
    path = train_default_model(tmp_path, max_steps=2, n_clips=3, device="cpu")
    assert path == tmp_path / "surgical-depth-default.safetensors"
    model = sd.load_model(path, device="cpu")
    assert model.config.input_size == DEFAULT_RECIPE["inference_input_size"]
    assert model.output_kind == "disparity"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if "weight" in k)
    assert json.loads(meta["recipe"])["train"]["loss"] == "l1"
    assert len(list((tmp_path / "data").iterdir())) == 3
    assert (tmp_path / "run" / "log.csv").is_file()
