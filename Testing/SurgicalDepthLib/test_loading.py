"""Tests of SurgicalDepthLib.loading: the device and precision that ``load_model`` resolves once (CUDA mocked: these
are pure decisions, checked without a GPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib.checkpoints import infer_config
from SurgicalDepthLib.loading import auto_precision, resolve_device, resolve_precision
from SurgicalDepthLib.weights import CACHE_ENV, sha256_file


def _fake_gpus(monkeypatch, capabilities: dict[int, tuple[int, int]], current: int = 0) -> None:
    """CUDA GPUs of the given compute capabilities (index -> (major, minor)); every one "supports" bf16 the way
    ``torch.cuda.is_bf16_supported()`` says, emulation included."""
    def capability(device=None):
        index = None if device is None else torch.device(device).index  # None: the current device
        return capabilities[current if index is None else index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_auto_precision_is_bf16_only_where_the_chosen_gpu_computes_it_natively(monkeypatch):
    """Catches: ``precision="auto"`` chose bf16 wherever ``torch.cuda.is_bf16_supported()`` is True, which includes
    bf16 emulated on pre-Ampere GPUs (T4, V100, RTX 20xx: slower and less precise than fp16), and asked the current
    CUDA device instead of the chosen ``cuda:N`` (an Ampere cuda:0 decided for a Turing cuda:1)."""
    _fake_gpus(monkeypatch, {0: (8, 6), 1: (7, 5)})
    assert resolve_precision("auto", torch.device("cuda:1")) == "fp16"  # Turing beside an Ampere current device
    assert resolve_precision("auto", torch.device("cuda:0")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"  # "cuda": the current device
    assert resolve_precision("bf16", torch.device("cuda:1")) == "bf16"  # asked for: as given
    _fake_gpus(monkeypatch, {0: (7, 0)})  # V100 alone
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    # the pure rule: bf16 from compute capability 8 (Ampere) on, fp16 below and on MPS, fp32 on the CPU
    assert [auto_precision("cuda", (m, 0)) for m in (6, 7, 8, 9, 10)] == ["fp16", "fp16", "bf16", "bf16", "bf16"]
    assert (auto_precision("mps"), auto_precision("cpu")) == ("fp16", "fp32")
    with pytest.raises(ValueError, match="precision='fp8' is not one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_a_torch_device_is_checked_like_its_string(monkeypatch):
    """Catches: ``device=torch.device("cuda")`` (an object, not the string) skipped the availability check, so a
    machine without CUDA failed later, inside PyTorch, instead of with the error that names the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in (torch.device("cuda"), torch.device("cuda", 1)):
        with pytest.raises(ValueError, match="requested but CUDA is not available"):
            resolve_device(device)
    with pytest.raises(ValueError, match="requested but CUDA is not available"):
        sd.load_model("random:surgical-depth-tiny", device=torch.device("cuda"))
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device='meta' is not one of"):
        resolve_device(torch.device("meta"))


# -- official metric checkpoints loaded by registry name ------------------------------------------------------------
# The official layout, from the official sources (DepthAnything/Depth-Anything-V2, metric_depth/depth_anything_v2:
# dpt.py DPTHead, util/blocks.py _make_scratch / FeatureFusionBlock, dinov2.py DINOv2 with init_values=1.0,
# block_chunks=0, no register tokens): encoder -> (width, blocks, decoder features, out_channels).
_OFFICIAL_ARCH = {"vits": (384, 12, 64, (48, 96, 192, 384)), "vitb": (768, 12, 128, (96, 192, 384, 768)),
                  "vitl": (1024, 24, 256, (256, 512, 1024, 1024))}


def _official_layout(encoder: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official ``depth_anything_v2[_metric_*]_<encoder>.pth`` (518 px, 14 px patches: a 37×37
    grid); written out from the official module definitions, not from this project's model."""
    dim, depth, f, oc = _OFFICIAL_ARCH[encoder]
    shapes: dict[str, tuple[int, ...]] = {
        "pretrained.cls_token": (1, 1, dim), "pretrained.pos_embed": (1, 37 * 37 + 1, dim),
        "pretrained.mask_token": (1, dim), "pretrained.patch_embed.proj.weight": (dim, 3, 14, 14),
        "pretrained.patch_embed.proj.bias": (dim,), "pretrained.norm.weight": (dim,), "pretrained.norm.bias": (dim,)}
    for i in range(depth):
        b = f"pretrained.blocks.{i}."
        shapes |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                   b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                   b + "ls1.gamma": (dim,), b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                   b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                   b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,), b + "ls2.gamma": (dim,)}
    h = "depth_head."
    for i, c in enumerate(oc):
        shapes |= {f"{h}projects.{i}.weight": (c, dim, 1, 1), f"{h}projects.{i}.bias": (c,),
                   f"{h}scratch.layer{i + 1}_rn.weight": (f, c, 3, 3)}
    for i, k in ((0, 4), (1, 2)):  # ConvTranspose2d weights are [in, out, k, k]
        shapes |= {f"{h}resize_layers.{i}.weight": (oc[i], oc[i], k, k), f"{h}resize_layers.{i}.bias": (oc[i],)}
    shapes |= {f"{h}resize_layers.3.weight": (oc[3], oc[3], 3, 3), f"{h}resize_layers.3.bias": (oc[3],)}
    for r in range(1, 5):
        out_conv = f"{h}scratch.refinenet{r}.out_conv"
        shapes |= {out_conv + ".weight": (f, f, 1, 1), out_conv + ".bias": (f,)}
        for unit in (1, 2):
            for conv in (1, 2):
                key = f"{h}scratch.refinenet{r}.resConfUnit{unit}.conv{conv}"
                shapes |= {key + ".weight": (f, f, 3, 3), key + ".bias": (f,)}
    shapes |= {f"{h}scratch.output_conv1.weight": (f // 2, f, 3, 3), f"{h}scratch.output_conv1.bias": (f // 2,),
               f"{h}scratch.output_conv2.0.weight": (32, f // 2, 3, 3), f"{h}scratch.output_conv2.0.bias": (32,),
               f"{h}scratch.output_conv2.2.weight": (1, 32, 1, 1), f"{h}scratch.output_conv2.2.bias": (1,)}
    return shapes


#: the six official metric checkpoints (metric_depth/README.md): all must be downloadable registry names
_METRIC_NAMES = [f"depth-anything-v2-metric-{data}-{size}" for data in ("hypersim", "vkitti")
                 for size in ("small", "base", "large")]


@pytest.mark.parametrize("name", _METRIC_NAMES)
def test_official_metric_layout_fits_the_registered_config(name):
    """Catches a metric registry entry (the Base/Large ones added with their pinned digests) whose registered
    config does not take the official file: keys or shapes that differ from the official layout, or a file name
    from which the loader would infer another architecture, head or max_depth (Hypersim 20 m, VKITTI 80 m as in
    the official metric_depth/run.py). Shapes only (meta tensors): ViT-L would take seconds to materialise."""
    spec, config = sd.WEIGHTS[name], sd.MODEL_CONFIGS[name]
    assert (config.head, config.max_depth) == ("metric", 20.0 if "-hypersim-" in name else 80.0)
    layout = _official_layout(config.encoder)
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in sd.DepthModel(config).state_dict().items()}
    assert sorted(own) == sorted(layout) and own == layout
    state = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    assert infer_config(state, name=spec.filename) == config


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n.endswith("vkitti-base") else [pytest.mark.slow])
                                  for n in _METRIC_NAMES if "-small" not in n])  # ViT-B: ~3 s, ViT-L: ~12 s
def test_metric_base_and_large_load_exactly_by_registry_name(name, tmp_path, monkeypatch, one_torch_thread):
    """Catches a new metric entry that ``sd.load_model(NAME)`` cannot load bit-exactly: random weights written in
    the official layout under the official file name (pinned to this file's digest and size) must come back
    tensor for tensor, as a metric model with the registered max_depth."""
    spec, config = sd.WEIGHTS[name], sd.MODEL_CONFIGS[name]
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator) * 0.02 for k, s in _official_layout(config.encoder).items()}
    path = tmp_path / spec.filename
    torch.save(state, path)
    monkeypatch.setitem(sd.WEIGHTS, name, dataclasses.replace(spec, sha256=sha256_file(path),
                                                              size=path.stat().st_size))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    model = sd.load_model(name, device="cpu", precision="fp32")
    assert model.config == config and model.output_kind == "depth"
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("hints, message", [
    (dict(max_depth="20"), r"max_depth='20' must be a positive finite number"),
    (dict(max_depth=True), r"max_depth=True must be a positive finite number"),
    (dict(max_depth=float("inf")), r"max_depth=inf must be a positive finite number"),
    (dict(head="Metric", max_depth=20.0), r"head='Metric' is not one of \('relative', 'metric'\)"),
    (dict(version="2"), r"version='2' is not one of \('v1', 'v2'\)")])
def test_hints_of_the_wrong_type_or_value_are_refused_naming_them(tmp_path, hints, message):
    """Catches: ``load_model(path, max_depth="20")`` ended in a bare ``TypeError: '>' not supported between
    instances of 'str' and 'int'`` naming neither the hint nor the file; ``max_depth=True`` loaded a metric model
    of range ``True``; a misspelt head or version was reported as read "from its tensor shapes"."""
    path = sd.save_official(tmp_path / "tuned.pth", sd.DepthModel(sd.get_model_config("surgical-depth-tiny")))
    with pytest.raises(ValueError, match=message) as info:
        sd.load_model(path, device="cpu", **{"version": "v2", **hints})
    assert "tensor shapes" not in str(info.value)  # a hint, not the file, is at fault
    assert sd.load_model(path, device="cpu", version="v2", max_depth=20).config.max_depth == 20.0
