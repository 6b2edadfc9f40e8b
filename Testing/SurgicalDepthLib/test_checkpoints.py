"""Official / HF / project checkpoint layouts: bit-exact round trips, architecture inference and bad files."""
from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile

import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib.checkpoints import CheckpointError, infer_config
from SurgicalDepthLib.configs import make_config
from SurgicalDepthLib.model import DepthModel


def _random_model(encoder="vitt", version="v2", **kw) -> DepthModel:
    torch.manual_seed(0)
    model = DepthModel(make_config(encoder, version, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_official_round_trip(tmp_path, version):
    model = _random_model(version=version)
    path = tmp_path / f"depth_anything_{version}_vitt.pth"
    sd.save_official(path, model)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith(("pretrained.", "depth_head.")) for k in raw)
    assert "pretrained.mask_token" in raw and "depth_head.scratch.refinenet4.out_conv.weight" in raw
    loaded = sd.load_model(path, device="cpu", version=version)
    assert loaded.config == model.config
    _assert_same_state(model, loaded)


def test_official_to_hf_to_official_bit_exact():
    model = _random_model("vits")
    state = model.state_dict()
    hf_state, hf_cfg = sd.official_to_hf(state, model.config)
    assert "backbone.encoder.layer.3.attention.attention.query.weight" in hf_state
    assert "neck.fusion_stage.layers.0.projection.weight" in hf_state  # refinenet4 comes first in HF
    back, cfg = sd.hf_to_official(hf_state, hf_cfg)
    assert cfg == model.config
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_giant_swiglu_keys_and_shapes():
    """ViT-g's fused SwiGLU keeps the official names (w12/w3) and maps to HF's weights_in/weights_out."""
    from timm.models.vision_transformer import Block

    from SurgicalDepthLib.encoder import SwiGLUFFNFused

    block = Block(1536, 24, mlp_ratio=4.0, init_values=1e-5, mlp_layer=SwiGLUFFNFused)
    assert block.mlp.w12.weight.shape == (8192, 1536) and block.mlp.w3.weight.shape == (1536, 4096)
    state = {f"pretrained.blocks.0.{k}": v for k, v in block.state_dict().items()}
    hf, hf_config = sd.official_to_hf(state, make_config("vitg"))
    assert hf["backbone.encoder.layer.0.mlp.weights_in.weight"] is state["pretrained.blocks.0.mlp.w12.weight"]
    back, config = sd.hf_to_official(hf, hf_config)
    assert config == make_config("vitg")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_project_checkpoint_round_trip_and_fp16(tmp_path):
    model = _random_model(head="metric", max_depth=150.0)
    sd.save_checkpoint(tmp_path / "m.safetensors", model, extra={"note": "test"})
    loaded = sd.load_model(tmp_path / "m.safetensors", device="cpu")
    assert loaded.config == model.config and loaded.output_kind == "depth"
    _assert_same_state(model, loaded)
    sd.save_checkpoint(tmp_path / "h.safetensors", model, dtype=torch.float16)
    half = sd.load_model(tmp_path / "h.safetensors", device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(half.state_dict()[k], v.half().float()), k


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_saved_weights_are_readable_like_other_outputs(tmp_path):
    """Catches: checkpoints and Hugging Face exports written with mode 0600 (safetensors replaces the file), so a
    model trained on a shared machine, or opened by Slicer running as another user, could not be read; they get
    the mode any new file gets (here: a plain file created beside them)."""
    model = _random_model()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = plain.stat().st_mode & 0o777
    for path in (sd.save_checkpoint(tmp_path / "m.safetensors", model),
                 sd.save_huggingface(tmp_path / "hf", model) / "model.safetensors"):
        assert os.stat(path).st_mode & 0o777 == expected, path


def test_hugging_face_export_keeps_what_transformers_has_no_field_for(tmp_path):
    """A project model saved as a Hugging Face folder and loaded back keeps its inference size, the unit of its
    metric head, its reference lens and its normalisation (config.json key ``surgical_depth``), also after
    transformers has read and re-saved the folder. Bugs caught: a millimetre metric model read back as metres
    (1000× off), the default model's lens correction and 168-px input silently gone after an HF export."""
    model = _random_model(head="metric", max_depth=150.0, input_size=168, metric_unit="mm", reference_fov_deg=100.0,
                          mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    sd.save_huggingface(tmp_path / "hf", model)
    loaded = sd.load_model(tmp_path / "hf", device="cpu")
    assert loaded.config == model.config
    _assert_same_state(model, loaded)
    transformers = pytest.importorskip("transformers")
    transformers.AutoConfig.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "again")
    (tmp_path / "again" / "model.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    assert sd.load_model(tmp_path / "again", device="cpu").config == model.config
    # a folder from the Hub carries no such key: the official values
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    del cfg["surgical_depth"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    hub = sd.load_model(tmp_path / "hf", device="cpu").config
    assert (hub.input_size, hub.metric_unit, hub.reference_fov_deg) == (518, "m", None)
    cfg["surgical_depth"] = {"input_px": 168}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: surgical_depth must be an object with keys among"):
        sd.load_model(tmp_path / "hf", device="cpu")
    cfg["surgical_depth"] = {"input_size": "big"}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: "):
        sd.load_model(tmp_path / "hf", device="cpu")


def test_version_from_official_file_names():
    state = _random_model("vits").state_dict()
    assert infer_config(state, name="depth_anything_v2_vits.pth").version == "v2"
    assert infer_config(state, name="depth_anything_vits14.pth").version == "v1"
    assert infer_config(state, name="weights.pth", version="v1").intermediate_layers == (8, 9, 10, 11)
    cfg = infer_config(state, name="depth_anything_v2_metric_hypersim_vits.pth")
    assert (cfg.head, cfg.max_depth) == ("metric", 20.0)
    with pytest.raises(CheckpointError, match="cannot tell Depth Anything V1 from V2"):
        infer_config(state, name="my_weights.pth")
    # Catches: the folders of the path read as the file's name: a relative model kept in the official repo's
    # metric_depth/checkpoints/ (or any folder named hypersim) loaded as metric, its disparity read as metres
    cfg = infer_config(state, name="/models/metric_depth/hypersim/depth_anything_v2_vits.pth")
    assert (cfg.head, cfg.max_depth, cfg.version) == ("relative", None, "v2")


def test_architecture_inferred_from_shapes(tmp_path):
    for encoder in ("vits", "vitb"):
        state = DepthModel(make_config(encoder)).state_dict()
        cfg = infer_config(state, version="v2")
        assert cfg == make_config(encoder, "v2")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match=r"x\.pth.*not a PyTorch checkpoint"):
        sd.load_model(path, version="v2")


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "depth_anything_v2_vitt.pth"
    sd.save_official(path, _random_model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="depth_anything_v2_vitt.pth"):
        sd.load_model(path)
    st = tmp_path / "t.safetensors"
    sd.save_checkpoint(st, _random_model())
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"t\.safetensors.*not a readable safetensors"):
        sd.load_model(st)


def test_unexpected_missing_and_mismatched_keys(tmp_path):
    state = _random_model().state_dict()
    extra = dict(state, **{"depth_head.bogus.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "depth_anything_v2_a.pth")
    with pytest.raises(CheckpointError, match=r"depth_anything_v2_a\.pth.*unexpected keys \(first: depth_head\.bogus"):
        sd.load_model(tmp_path / "depth_anything_v2_a.pth")
    missing = {k: v for k, v in state.items() if k != "pretrained.blocks.3.attn.qkv.bias"}
    torch.save(missing, tmp_path / "depth_anything_v2_b.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(first: pretrained\.blocks\.3\.attn\.qkv\.bias"):
        sd.load_model(tmp_path / "depth_anything_v2_b.pth")
    bad = dict(state)
    bad["depth_head.scratch.output_conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "depth_anything_v2_c.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(first: depth_head\.scratch\.output_conv1\.weight"):
        sd.load_model(tmp_path / "depth_anything_v2_c.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "depth_anything_v2_d.pth")
    with pytest.raises(CheckpointError, match="not a Depth Anything checkpoint"):
        sd.load_model(tmp_path / "depth_anything_v2_d.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "depth_anything_v2_evil.pth"
    state = _random_model().state_dict()
    state["payload"] = _Exploit(marker)
    torch.save(state, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match=r"refused to load.*weights_only"):
        sd.load_model(path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pth"  # plain (non-zip) pickle stream
    legacy.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError):
        sd.load_model(legacy, version="v2")
    assert not marker.exists()


def test_hf_folder_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match=r"config\.json: .*model_type is 'bert'"):
        sd.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sd.load_model(tmp_path / "nope.pth")


def test_registry_name_needs_download(tmp_path, monkeypatch):
    monkeypatch.setattr("SurgicalDepthLib.weights.cache_dir", lambda root=None: tmp_path)
    with pytest.raises(FileNotFoundError, match="surgical-depth download depth-anything-v2-small"):
        sd.load_model("depth-anything-v2-small")


def test_v1_release_folder_layout(tmp_path):
    """The V1 release's own Hugging Face folders (``DepthAnything.from_pretrained('LiheYoung/depth_anything_vits14')``,
    a ``PyTorchModelHubMixin``: ``config.json`` = ``{encoder, features, out_channels}`` beside official-layout
    weights, as safetensors or ``pytorch_model.bin``). Catches: refused as "model_type is None" even with
    ``version='v1'``; a V2 hint on it accepted."""
    from safetensors.torch import save_file

    model = _random_model("vits", "v1")
    for weights in ("model.safetensors", "pytorch_model.bin"):
        folder = tmp_path / weights.split(".")[0]
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"encoder": "vits", "features": model.config.features,
                                                        "out_channels": list(model.config.out_channels)}))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, folder / weights) if weights.endswith("safetensors") else torch.save(state, folder / weights)
        loaded = sd.load_model(folder, device="cpu")
        assert loaded.config == model.config
        _assert_same_state(model, loaded)
        with pytest.raises(CheckpointError, match="version='v2' conflicts with its layout"):
            sd.load_model(folder, device="cpu", version="v2")


def _shard(folder, state: dict, prefix: str, parts: int = 3) -> None:
    """Split ``state`` into ``parts`` safetensors shards with transformers' index (``weight_map``: tensor -> file)."""
    from safetensors.torch import save_file

    keys = list(state)
    weight_map = {}
    for i in range(parts):
        name = f"{prefix}-{i + 1:05d}-of-{parts:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::parts]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_hugging_face_folder(tmp_path):
    """``save_pretrained(max_shard_size=...)`` writes ``model.safetensors.index.json`` and shards instead of one
    ``model.safetensors``. Catches: such a folder refused ("no model.safetensors"); a shard the index lists but the
    folder lacks read as a partial model."""
    from safetensors.torch import load_file

    model = _random_model("vits")
    folder = sd.save_huggingface(tmp_path / "hf", model)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    _shard(folder, state, "model")
    loaded = sd.load_model(folder, device="cpu")
    assert loaded.config == model.config
    _assert_same_state(model, loaded)
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists shard 'model-00002-of-00003.safetensors', which is not a file"):
        sd.load_model(folder, device="cpu")


def test_sharded_folder_written_by_transformers(tmp_path):
    """The same with transformers' own writer (its index format, its shard names), read by the project."""
    transformers = pytest.importorskip("transformers")
    model = _random_model("vits")
    folder = sd.save_huggingface(tmp_path / "hf", model)
    hf = transformers.AutoModelForDepthEstimation.from_pretrained(folder)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="5MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _assert_same_state(model, sd.load_model(tmp_path / "sharded", device="cpu"))


def test_wrapped_and_prefixed_state_dicts(tmp_path):
    """A training script's wrappers around the official keys: Lightning (``state_dict`` with ``model.`` or
    ``model.module.`` before every key), ``model_state_dict``. Catches: refused as "missing pretrained.cls_token"
    although every key is there under a prefix; a Hugging Face ``model.safetensors`` given alone gets no hint to
    pass its folder."""
    model = _random_model("vits")
    state = model.state_dict()
    for i, wrapped in enumerate(({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
                                 {"state_dict": {f"model.module.{k}": v for k, v in state.items()}},
                                 {"model_state_dict": dict(state), "optimizer_state_dict": {}})):
        path = tmp_path / f"depth_anything_v2_vits_{i}.pth"
        torch.save(wrapped, path)
        _assert_same_state(model, sd.load_model(path, device="cpu"))
    folder = sd.save_huggingface(tmp_path / "hf", model)
    with pytest.raises(CheckpointError, match="Hugging Face model's weights: pass the folder"):
        sd.load_model(folder / "model.safetensors", device="cpu", version="v2")


def test_hints_that_contradict_the_file_are_errors(tmp_path):
    """"Ambiguity is an error": a hint agreeing with the file is accepted, one contradicting it is refused, naming
    both values. Catches: a V2 Hugging Face folder loaded as V2 with ``version='v1'`` (hint silently dropped); an
    official V2 file loaded with V1's decoder blocks under ``version='v1'`` (hint silently overriding: output off
    by 0.24); a training checkpoint's metric head kept under ``head='relative'``; a name with both ``v1`` and
    ``v2`` read as V2; an official metric name's max_depth overridden."""
    model = _random_model("vits")
    folder = sd.save_huggingface(tmp_path / "hf", model)
    assert sd.load_model(folder, device="cpu", version="v2").config == model.config
    with pytest.raises(CheckpointError, match="version='v1' conflicts with the file's own version='v2'"):
        sd.load_model(folder, device="cpu", version="v1")
    official = sd.save_official(tmp_path / "depth_anything_v2_vits.pth", model)
    with pytest.raises(CheckpointError, match="version='v1' conflicts with its official file name"):
        sd.load_model(official, device="cpu", version="v1")
    metric = _random_model("vitt", head="metric", max_depth=150.0)
    ckpt = sd.save_checkpoint(tmp_path / "metric.safetensors", metric)
    with pytest.raises(CheckpointError, match="head='relative' conflicts with the file's own head='metric'"):
        sd.load_model(ckpt, device="cpu", head="relative")
    assert sd.load_model(ckpt, device="cpu", max_depth=150.0).config.max_depth == 150.0
    state = model.state_dict()
    with pytest.raises(CheckpointError, match="cannot tell Depth Anything V1 from V2"):
        infer_config(state, name="my_v1_vs_v2.pth")
    assert infer_config(state, name="run_v1.pth", version="v2").version == "v2"  # a bare token is only a default
    with pytest.raises(CheckpointError, match="max_depth=5 conflicts with its official file name"):
        infer_config(state, name="depth_anything_v2_metric_hypersim_vits.pth", max_depth=5.0)
    # a random init of a registry architecture: ``version='v1'`` on a V2 name was silently dropped
    with pytest.raises(CheckpointError, match="version='v1' conflicts with the registered model's version='v2'"):
        sd.load_model("random:depth-anything-v2-small", device="cpu", version="v1")
    assert sd.load_model("random:surgical-depth-tiny", device="cpu", version="v2").config.version == "v2"


def test_integer_weights_are_refused_naming_file_and_key(tmp_path):
    """Catches: a checkpoint whose weight was stored as integers (int8 of a quantised export, a bool mask) loaded
    silently, load_state_dict casting it to float: shapes alone were compared."""
    state = dict(_random_model().state_dict())
    state["pretrained.blocks.0.attn.qkv.weight"] = state["pretrained.blocks.0.attn.qkv.weight"].to(torch.int8)
    torch.save(state, tmp_path / "depth_anything_v2_int.pth")
    with pytest.raises(CheckpointError, match=r"depth_anything_v2_int\.pth: .*not floating point \(first: "
                                              r"pretrained\.blocks\.0\.attn\.qkv\.weight: file torch\.int8"):
        sd.load_model(tmp_path / "depth_anything_v2_int.pth", device="cpu")


def test_shape_errors_name_the_file_and_the_keys(tmp_path):
    """Catches load errors that named neither the file nor the keys at fault: a patch-16 checkpoint gave a bare
    "input_size=518 must be a positive multiple of 16"; a block too many or too few gave "encoder of width 192 with
    13 blocks is not a known DINOv2 size" without saying which block keys differ."""
    state = dict(_random_model().state_dict())
    patch16 = dict(state, **{"pretrained.patch_embed.proj.weight": torch.zeros(192, 3, 16, 16)})
    torch.save(patch16, tmp_path / "depth_anything_v2_p16.pth")
    with pytest.raises(CheckpointError, match=r"depth_anything_v2_p16\.pth: input_size=518 .* multiple of 16 .*"
                                              r"pretrained\.patch_embed\.proj\.weight"):
        sd.load_model(tmp_path / "depth_anything_v2_p16.pth", device="cpu")
    extra = dict(state, **{"pretrained.blocks.12.norm1.weight": torch.ones(192)})
    torch.save(extra, tmp_path / "depth_anything_v2_extra.pth")
    with pytest.raises(CheckpointError, match=r"depth_anything_v2_extra\.pth: .*13 blocks.*vitt has 12 blocks, so "
                                              r"keys pretrained\.blocks\.12\.\* are extra"):
        sd.load_model(tmp_path / "depth_anything_v2_extra.pth", device="cpu")
    short = {k: v for k, v in state.items() if not k.startswith(("pretrained.blocks.10.", "pretrained.blocks.11."))}
    torch.save(short, tmp_path / "depth_anything_v2_short.pth")
    with pytest.raises(CheckpointError, match=r"keys pretrained\.blocks\.10-11\.\* are missing"):
        sd.load_model(tmp_path / "depth_anything_v2_short.pth", device="cpu")


def test_refused_pickle_gives_no_advice_to_allowlist_its_global(tmp_path):
    """Catches: the refusal of a pickle that would run code kept PyTorch's advice to allowlist the global
    ("Please use torch.serialization.add_safe_globals([print])"), wrong advice for a file that is not trusted."""
    class Call:  # a global that torch does not block outright, so its message carries the advice
        def __reduce__(self):
            return (print, ("PWNED",))

    state = dict(_random_model().state_dict(), payload=Call())
    torch.save(state, tmp_path / "depth_anything_v2_evil.pth")
    with pytest.raises(CheckpointError) as info:
        sd.load_model(tmp_path / "depth_anything_v2_evil.pth", device="cpu")
    text = str(info.value)
    assert "depth_anything_v2_evil.pth: refused to load" in text and "Unsupported global" in text
    assert "add_safe_globals" not in text and "allowlist" not in text and "Please use" not in text, text


def test_hugging_face_export_refuses_a_max_depth_transformers_cannot_hold(tmp_path):
    """Catches: save_huggingface wrote a folder that transformers 5 cannot open (``max_depth: int`` in its
    DepthAnythingConfig) for a metric model whose max_depth is not a whole number (0.25, 150.5). It must be refused
    before anything is written; whole numbers are written as ints, which transformers opens."""
    with pytest.raises(ValueError, match=r"max_depth=150\.5 is not a whole number"):
        sd.save_huggingface(tmp_path / "hf", _random_model(head="metric", max_depth=150.5))
    assert not (tmp_path / "hf").exists()
    folder = sd.save_huggingface(tmp_path / "whole", _random_model(head="metric", max_depth=150.0))
    assert json.loads((folder / "config.json").read_text())["max_depth"] == 150
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoConfig.from_pretrained(folder).max_depth == 150


def test_hugging_face_folder_that_also_holds_a_checkpoint_is_ambiguous(tmp_path):
    """Catches: a folder with ``config.json`` + ``model.safetensors`` and also ``depth_anything_v2_vits.pth`` (the
    official release downloaded beside the ``-hf`` one) loaded the Hugging Face weights and ignored the ``.pth``
    without a word: two models in one source is ambiguity, one error naming both files. A Trainer checkpoint's own
    state files (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``) are no model and do
    not count; a folder holding a ``.pth`` but no ``config.json`` names the file to pass."""
    model = _random_model("vits")
    folder = sd.save_huggingface(tmp_path / "hf", model)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (folder / name).write_bytes(b"not read")
    _assert_same_state(model, sd.load_model(folder, device="cpu"))
    sd.save_official(folder / "depth_anything_v2_vits.pth", model)
    with pytest.raises(CheckpointError, match=r"hf: ambiguous: .*model\.safetensors.* and depth_anything_v2_vits\.pth"
                                              r".*pass the file"):
        sd.load_model(folder, device="cpu")
    alone = tmp_path / "alone"
    alone.mkdir()
    sd.save_official(alone / "depth_anything_v2_vits.pth", model)
    with pytest.raises(FileNotFoundError, match=r"alone: not a Hugging Face model folder \(no config\.json\); it "
                                                r"holds depth_anything_v2_vits\.pth"):
        sd.load_model(alone, device="cpu")


def test_metric_hints_on_an_official_relative_file_name_are_refused(tmp_path):
    """Catches: ``load_model("depth_anything_v2_vits.pth", max_depth=20)`` (or ``head="metric"``) loaded the
    official *relative* model behind a sigmoid × 20 head: same shapes, so nothing failed, and its disparity came out
    as metres. The official relative names say the head, as they say the version; a fine-tune under another name
    still takes the hints."""
    model = _random_model("vits")
    path = sd.save_official(tmp_path / "depth_anything_v2_vits.pth", model)
    with pytest.raises(CheckpointError, match=r"depth_anything_v2_vits\.pth: max_depth=20 conflicts with its "
                                              r"official file name, that of a relative model"):
        sd.load_model(path, device="cpu", max_depth=20.0)
    with pytest.raises(CheckpointError, match=r"head='metric' conflicts with its official file name, that of a "
                                              r"relative model"):
        sd.load_model(path, device="cpu", head="metric", max_depth=20.0)
    v1 = sd.save_official(tmp_path / "depth_anything_vits14.pth", _random_model("vits", "v1"))
    with pytest.raises(CheckpointError, match="that of a relative model"):
        sd.load_model(v1, device="cpu", max_depth=10.0)
    assert sd.load_model(path, device="cpu", head="relative").output_kind == "disparity"
    tuned = sd.save_official(tmp_path / "depth_anything_v2_vits_colon.pth", model)
    assert sd.load_model(tuned, device="cpu", max_depth=150.0).config.max_depth == 150.0


def test_depth_anything_v1_metric_zoedepth_checkpoint_is_refused_naming_its_kind(tmp_path):
    """Catches: the V1 metric models (``depth_anything_metric_depth_indoor.pt``: ZoeDepth, a metric-bins head on the
    V1 encoder, keys ``core.core.*``, ``seed_bin_regressor.*``, ``attractors.*`` under ``"model"``) were refused as
    "missing 'pretrained.cls_token'", which reads as a corrupt file; the error must say what the file is and that
    it is not supported, whatever hints are given."""
    state = _random_model("vits", "v1").state_dict()
    zoe = {f"core.core.{k}": v for k, v in state.items()}
    zoe |= {"conv2.weight": torch.zeros(4, 4, 1, 1), "seed_bin_regressor._net.0.weight": torch.zeros(2, 4, 1, 1),
            "attractors.0._net.0.weight": torch.zeros(2, 4, 1, 1),
            "conditional_log_binomial.mlp.0.weight": torch.zeros(2, 4, 1, 1)}
    ddp = {f"module.{k}": v for k, v in zoe.items()}
    for name, obj in (("depth_anything_metric_depth_indoor.pt", {"model": zoe}),
                      ("depth_anything_metric_depth_outdoor.pt", {"model": ddp})):
        torch.save(obj, tmp_path / name)
        for hints in ({}, {"version": "v1", "max_depth": 10.0}):
            with pytest.raises(CheckpointError, match=rf"{name}: a Depth Anything V1 metric model \(ZoeDepth"):
                sd.load_model(tmp_path / name, device="cpu", **hints)


def test_official_metric_training_checkpoint_is_a_v2_metric_model(tmp_path):
    """Catches: ``latest.pth`` of the official ``metric_depth/train.py`` (``{"model", "optimizer", "epoch",
    "previous_best"}``, its ``previous_best`` with the metric ``silog``) loaded with ``version="v2"`` alone as a
    *relative* model: a ReLU head on sigmoid-trained weights, silently. Its format says V2 and metric: max_depth
    (which it does not record) is asked for, and then it loads as the metric model."""
    model = _random_model("vits", head="metric", max_depth=20.0)
    best = {"d1": 0.9, "d2": 0.95, "d3": 0.99, "abs_rel": 0.1, "sq_rel": 0.1, "rmse": 0.3, "rmse_log": 0.1,
            "log10": 0.05, "silog": 0.2}
    path = tmp_path / "latest.pth"
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 3, "previous_best": best}, path)
    with pytest.raises(CheckpointError, match=r"latest\.pth: a metric model written by the official metric_depth/"
                                              r"train\.py.*pass max_depth="):
        sd.load_model(path, device="cpu", version="v2")
    with pytest.raises(CheckpointError, match="head='relative' conflicts with its format"):
        sd.load_model(path, device="cpu", head="relative", max_depth=20.0)
    with pytest.raises(CheckpointError, match="version='v1' conflicts with its format"):
        sd.load_model(path, device="cpu", version="v1", max_depth=20.0)
    loaded = sd.load_model(path, device="cpu", max_depth=20.0)
    assert loaded.config == model.config and loaded.output_kind == "depth"
    _assert_same_state(model, loaded)


@pytest.mark.parametrize("text", ["[]", "null", '"depth_anything"', '{"model_type": "depth_anything", '
                                  '"backbone_config": "dinov2"}'])
def test_config_json_of_the_wrong_type_is_one_error(tmp_path, text):
    """Catches: a ``config.json`` that is JSON but not an object (``[]``, ``null``), or whose ``backbone_config`` is
    not one, raised AttributeError (``'list' object has no attribute 'get'``) with a traceback, naming no file."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"config\.json: .*(JSON object|backbone_config)"):
        sd.load_model(tmp_path, device="cpu")
