"""Weight registry, cache and SHA256-checked download (exercised through file:// URLs, no network)."""
from __future__ import annotations

import hashlib

import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib import weights
from SurgicalDepthLib.configs import MODEL_CONFIGS
from SurgicalDepthLib.weights import WeightSpec


def test_registry_names_have_configs():
    for name, spec in weights.WEIGHTS.items():
        assert spec.config_name == name and name in MODEL_CONFIGS
        assert spec.url.startswith("https://") and spec.url.endswith(".pth")


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A tiny official-layout checkpoint registered under a test name and served from a file:// URL."""
    model = sd.load_model("random:surgical-depth-tiny", device="cpu")
    src = tmp_path / "depth_anything_v2_vitt.pth"
    sd.save_official(src, model)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    spec = WeightSpec("surgical-depth-tiny", src.as_uri(), "depth_anything_v2_vitt.pth", "Apache-2.0")
    monkeypatch.setitem(weights.WEIGHTS, "surgical-depth-tiny", spec)
    return model, digest, tmp_path / "cache"


def test_download_verifies_sha256_and_loads(served):
    model, digest, cache = served
    seen = []
    path = weights.download("surgical-depth-tiny", cache, sha256=digest, progress=lambda d, t: seen.append(d))
    assert path.is_file() and seen and seen[-1] == path.stat().st_size
    assert weights.cached_path("surgical-depth-tiny", cache) == path
    state, config = sd.load_state_dict_file(path)
    assert config.encoder == "vitt" and config.version == "v2"
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_download_rejects_wrong_digest_and_leaves_nothing(served):
    _, _, cache = served
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.download("surgical-depth-tiny", cache, sha256="0" * 64)
    assert not any(cache.iterdir())  # no partial file under the final or a temporary name


def test_download_without_digest_needs_consent(served):
    _, digest, cache = served
    with pytest.raises(ValueError, match="no SHA256 is known"):
        weights.download("surgical-depth-tiny", cache)
    path = weights.download("surgical-depth-tiny", cache, trust_on_first_use=True)
    assert weights.expected_sha256("surgical-depth-tiny", cache) == digest
    path.write_bytes(path.read_bytes()[:-10])  # tampered afterwards
    with pytest.raises(ValueError, match="does not match the expected"):
        weights.cached_path("surgical-depth-tiny", cache)


def test_unknown_name():
    with pytest.raises(ValueError, match="no downloadable weights named 'nope'"):
        weights.download("nope")
