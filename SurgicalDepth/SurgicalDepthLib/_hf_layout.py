"""Pure key/config conversion between the official Depth Anything layout and Hugging Face transformers'
``DepthAnythingForDepthEstimation`` layout.

Facts from transformers ``models/depth_anything/convert_depth_anything_to_hf.py`` and ``modeling_dinov2.py``:
q/k/v are split, fusion stages are stored in reverse (``refinenet4`` is ``neck.fusion_stage.layers.0``), backbone out
indices are 1-based (hidden state 0 is the embedding output), DINOv2 LayerScale is ``lambda1``, the giant SwiGLU is
``weights_in``/``weights_out``. Files on the Hub and ``save_pretrained`` use the names
``attention.attention.{query,key,value}`` / ``attention.output.dense`` / ``mlp.weights_{in,out}``; transformers ≥5
names the same tensors ``attention.{q,k,v,o}_proj`` / ``mlp.{gate,up,down}_proj`` in memory (its
``conversion_mapping``: ``weights_in`` is chunked in two along dim 0, gate first) — both are read, the file names
are written.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from .configs import ENCODERS, ModelConfig, make_config

_BACKBONE_RENAMES = [  # official (without "pretrained.") -> HF (without "backbone.")
    ("cls_token", "embeddings.cls_token"),
    ("mask_token", "embeddings.mask_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ("norm.weight", "layernorm.weight"),
    ("norm.bias", "layernorm.bias"),
]
_BLOCK_RENAMES = [  # inside blocks.N (official) / encoder.layer.N (HF)
    ("norm1.", "norm1."), ("norm2.", "norm2."),
    ("attn.proj.", "attention.output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1"),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("mlp.w12.", "mlp.weights_in."), ("mlp.w3.", "mlp.weights_out."),
]
_RCU = [("resConfUnit1.conv1", "residual_layer1.convolution1"), ("resConfUnit1.conv2", "residual_layer1.convolution2"),
        ("resConfUnit2.conv1", "residual_layer2.convolution1"), ("resConfUnit2.conv2", "residual_layer2.convolution2"),
        ("out_conv", "projection")]
_HEAD = [("scratch.output_conv1", "head.conv1"), ("scratch.output_conv2.0", "head.conv2"),
         ("scratch.output_conv2.2", "head.conv3")]


def _head_map() -> dict[str, str]:
    """Decoder key prefixes: official (after ``depth_head.``) -> HF."""
    m: dict[str, str] = {}
    for i in range(4):
        m[f"projects.{i}"] = f"neck.reassemble_stage.layers.{i}.projection"
        if i != 2:
            m[f"resize_layers.{i}"] = f"neck.reassemble_stage.layers.{i}.resize"
        m[f"scratch.layer{i + 1}_rn"] = f"neck.convs.{i}"
        for a, b in _RCU:
            m[f"scratch.refinenet{i + 1}.{a}"] = f"neck.fusion_stage.layers.{3 - i}.{b}"
    for a, b in _HEAD:
        m[a] = b
    return m


_HEAD_MAP = _head_map()
_HEAD_MAP_INV = {v: k for k, v in _HEAD_MAP.items()}


def _rename_prefix(key: str, table: dict[str, str]) -> str | None:
    prefix, _, leaf = key.rpartition(".")
    return f"{table[prefix]}.{leaf}" if prefix in table else None


def official_to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``pretrained.*``/``depth_head.*`` state dict -> HF keys (q/k/v split). Unknown keys raise."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("pretrained."):
            k = key[len("pretrained."):]
            hit = dict(_BACKBONE_RENAMES).get(k)
            if hit is not None:
                out[f"backbone.{hit}"] = value
                continue
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
            if m is None:
                raise KeyError(f"no Hugging Face name for official key {key!r}")
            n, rest = m.groups()
            base = f"backbone.encoder.layer.{n}."
            if rest.startswith("attn.qkv."):
                leaf = rest.rsplit(".", 1)[1]
                q, kk, v = value.chunk(3, dim=0)
                out[base + f"attention.attention.query.{leaf}"] = q.clone()
                out[base + f"attention.attention.key.{leaf}"] = kk.clone()
                out[base + f"attention.attention.value.{leaf}"] = v.clone()
                continue
            for a, b in _BLOCK_RENAMES:
                if rest.startswith(a):
                    out[base + b + rest[len(a):]] = value
                    break
            else:
                raise KeyError(f"no Hugging Face name for official key {key!r}")
        elif key.startswith("depth_head."):
            hit = _rename_prefix(key[len("depth_head."):], _HEAD_MAP)
            if hit is None:
                raise KeyError(f"no Hugging Face name for official key {key!r}")
            out[hit] = value
        else:
            raise KeyError(f"official key {key!r} is neither pretrained.* nor depth_head.*")
    return out


#: official tensors that HF splits in parts (file and in-memory names): the parts in concatenation order
_FUSED = {"attn.qkv": ("query", "key", "value"), "mlp.w12": ("gate_proj", "up_proj")}
_PART_NAMES = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}  # transformers ≥5 in-memory names
_FUSED_PART = re.compile(r"(?:attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)"
                         r"|mlp\.(gate_proj|up_proj))\.(weight|bias)")
_IN_MEMORY_RENAMES = [("attention.o_proj.", "attention.output.dense."), ("mlp.down_proj.", "mlp.weights_out.")]


def hf_to_official_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``DepthAnythingForDepthEstimation`` state dict (file or transformers ≥5 in-memory names) -> official keys
    (q/k/v and the giant's SwiGLU gate/up fused). Unknown keys raise."""
    back = {v: k for k, v in _BACKBONE_RENAMES}
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}  # (block, fused name, leaf) -> part -> tensor
    for key, value in state.items():
        if key.startswith("backbone."):
            k = key[len("backbone."):]
            if k in back:
                out[f"pretrained.{back[k]}"] = value
                continue
            m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", k)
            if m is None:
                raise KeyError(f"no official name for Hugging Face key {key!r}")
            n, rest = m.groups()
            m2 = _FUSED_PART.fullmatch(rest)
            if m2:
                attn, mlp, leaf = m2.groups()
                fused, part = ("attn.qkv", _PART_NAMES.get(attn, attn)) if attn else ("mlp.w12", mlp)
                parts.setdefault((n, fused, leaf), {})[part] = value
                continue
            for a, b in _IN_MEMORY_RENAMES:
                rest = rest.replace(a, b)
            for a, b in _BLOCK_RENAMES:
                if rest.startswith(b):
                    out[f"pretrained.blocks.{n}.{a}{rest[len(b):]}"] = value
                    break
            else:
                raise KeyError(f"no official name for Hugging Face key {key!r}")
        else:
            hit = _rename_prefix(key, _HEAD_MAP_INV)
            if hit is None:
                raise KeyError(f"no official name for Hugging Face key {key!r}")
            out[f"depth_head.{hit}"] = value
    for (n, fused, leaf), found in parts.items():
        missing = [p for p in _FUSED[fused] if p not in found]
        if missing:
            raise KeyError(f"layer {n} {'attention' if fused == 'attn.qkv' else 'SwiGLU MLP'} {leaf}: missing "
                           f"{missing} in the Hugging Face state dict")
        out[f"pretrained.blocks.{n}.{fused}.{leaf}"] = torch.cat([found[p] for p in _FUSED[fused]], 0)
    return out


def _encoder_for_width(width: int) -> str:
    for name, spec in ENCODERS.items():
        if spec.embed_dim == width:
            return name
    raise ValueError(f"no DINOv2 encoder has width {width}; known widths "
                     f"{ {n: s.embed_dim for n, s in ENCODERS.items()} }")


#: backbone_config fields that change the outputs without changing a tensor's shape (or before shapes are
#: compared), with transformers' Dinov2Config default (what an absent field means) and the one value that the
#: DINOv2 encoder here implements (that of every Depth Anything config on the Hub): ``apply_layernorm`` (the final
#: norm on each feature map), ``layer_norm_eps`` (timm's LayerNorm eps), ``hidden_act`` (exact GELU; the SwiGLU
#: of ViT-g uses SiLU whatever it says), ``qkv_bias``, ``mlp_ratio``, ``reshape_hidden_states`` (the neck takes
#: token sequences). ``layerscale_value`` is only the LayerScale's initial value: the weights replace it.
_BACKBONE_FIXED = {"apply_layernorm": (True, True), "layer_norm_eps": (1e-6, 1e-6), "hidden_act": ("gelu", "gelu"),
                   "qkv_bias": (True, True), "mlp_ratio": (4, 4), "reshape_hidden_states": (True, False)}


def _check_backbone(bb: dict[str, Any], encoder: str) -> None:
    """Refuse (ValueError naming the field) a backbone config whose outputs the DINOv2 encoder ``encoder`` would not
    reproduce: a field of :data:`_BACKBONE_FIXED` with another value, or a head count / MLP kind other than the
    encoder's (same tensor shapes, other outputs)."""
    spec = ENCODERS[encoder]
    wanted = {name: (default, value) for name, (default, value) in _BACKBONE_FIXED.items()
              if not (name == "hidden_act" and spec.ffn == "swiglu")}
    wanted["num_attention_heads"] = (12, spec.num_heads)
    wanted["use_swiglu_ffn"] = (False, spec.ffn == "swiglu")
    for name, (default, value) in wanted.items():
        got = bb.get(name, default)
        if got != value:
            raise ValueError(f"backbone_config.{name}={got!r}: the {encoder} encoder of this project computes "
                             f"{name}={value!r} (as every Depth Anything model does); this model's outputs would "
                             "differ")


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """``config.json`` of a DepthAnythingForDepthEstimation folder -> :class:`ModelConfig`; a field that changes the
    outputs with a value that this project does not implement is a ValueError naming it."""
    if cfg.get("model_type") != "depth_anything":
        raise ValueError(f"config.json model_type is {cfg.get('model_type')!r}, expected 'depth_anything'")
    bb = cfg.get("backbone_config") or {}
    if not isinstance(bb, dict):
        raise ValueError(f"backbone_config must be a JSON object, got {bb!r}")
    if bb.get("model_type", "dinov2") != "dinov2":
        raise ValueError(f"backbone_config.model_type is {bb.get('model_type')!r}, expected 'dinov2'")
    encoder = _encoder_for_width(int(bb.get("hidden_size", 768)))
    spec = ENCODERS[encoder]
    if int(bb.get("num_hidden_layers", 12)) != spec.depth:
        raise ValueError(f"backbone_config.num_hidden_layers={bb.get('num_hidden_layers', 12)} does not match "
                         f"{encoder} (depth {spec.depth})")
    _check_backbone(bb, encoder)
    if "out_indices" in bb:
        layers = tuple(int(i) - 1 for i in bb["out_indices"])
    elif "out_features" in bb:
        layers = tuple(int(str(f).replace("stage", "")) - 1 for f in bb["out_features"])
    else:
        raise ValueError("backbone_config has neither out_indices nor out_features")
    version = next((v for v in ("v2", "v1") if make_config(encoder, v).intermediate_layers == layers), None)
    if version is None:
        raise ValueError(f"backbone out_indices {[i + 1 for i in layers]} match neither Depth Anything V1 "
                         f"{[i + 1 for i in make_config(encoder, 'v1').intermediate_layers]} nor V2 "
                         f"{[i + 1 for i in make_config(encoder, 'v2').intermediate_layers]}")
    head = cfg.get("depth_estimation_type", "relative")
    max_depth = cfg.get("max_depth")
    if head == "relative":
        if max_depth not in (None, 1, 1.0):
            raise ValueError(f"relative model with max_depth={max_depth} (HF multiplies the output by it); "
                             "expected 1")
        max_depth = None
    if tuple(cfg.get("reassemble_factors", (4, 2, 1, 0.5))) != (4, 2, 1, 0.5):
        raise ValueError(f"reassemble_factors {cfg.get('reassemble_factors')} != [4, 2, 1, 0.5]")
    if int(cfg.get("head_hidden_size", 32)) != 32:
        raise ValueError(f"head_hidden_size {cfg.get('head_hidden_size')} != 32")
    if cfg.get("head_in_index", -1) != -1:  # the head reads the last fusion stage's output
        raise ValueError(f"head_in_index={cfg.get('head_in_index')!r}: the depth head of this project reads the last "
                         "fusion stage (head_in_index=-1, as every Depth Anything model does)")
    return make_config(encoder, version, head, float(max_depth) if max_depth is not None else None,
                       features=int(cfg.get("fusion_hidden_size", 64)),
                       out_channels=tuple(int(c) for c in cfg.get("neck_hidden_sizes", (48, 96, 192, 384))),
                       patch_size=int(cfg.get("patch_size", 14)),
                       pretrain_size=int(bb.get("image_size", 518)), **_project_fields(cfg))


# ModelConfig fields that transformers' config has no place for, kept under one extra key of config.json
# (transformers keeps unknown keys as attributes and writes them back): the inference size the weights were made
# for, the unit of a metric head (this project's metric models predict mm, the official ones m), the reference lens
# (SurgicalDepthLib.lens) and the input normalisation. Folders from the Hub carry none: the official values apply.
PROJECT_KEY = "surgical_depth"
_PROJECT_FIELDS = ("input_size", "metric_unit", "reference_fov_deg", "mean", "std")


def _project_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    extra = cfg.get(PROJECT_KEY) or {}
    if not isinstance(extra, dict) or not set(extra) <= set(_PROJECT_FIELDS):
        raise ValueError(f"{PROJECT_KEY} must be an object with keys among {list(_PROJECT_FIELDS)}, got {extra!r}")
    return {k: tuple(v) if k in ("mean", "std") else v for k, v in extra.items()}


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """:class:`ModelConfig` -> a ``config.json`` dict that transformers loads as DepthAnythingForDepthEstimation.

    A metric head whose ``max_depth`` is not a whole number is a ValueError: transformers 5 declares
    ``DepthAnythingConfig.max_depth: int | None`` and refuses to open such a folder (20.5 cannot be written as an
    int, and its output is ``sigmoid × max_depth``, so rounding would change every depth).
    """
    if config.head == "metric" and not float(config.max_depth).is_integer():
        raise ValueError(f"max_depth={config.max_depth:g} is not a whole number, which transformers' "
                         "DepthAnythingConfig refuses (max_depth: int); save a project checkpoint instead")
    spec = config.spec
    out_indices = [i + 1 for i in config.intermediate_layers]
    return {
        "architectures": ["DepthAnythingForDepthEstimation"],
        "model_type": "depth_anything",
        "backbone_config": {
            "model_type": "dinov2",
            "hidden_size": spec.embed_dim,
            "num_hidden_layers": spec.depth,
            "num_attention_heads": spec.num_heads,
            "mlp_ratio": 4,
            "use_swiglu_ffn": spec.ffn == "swiglu",
            "image_size": config.pretrain_size,
            "patch_size": config.patch_size,
            "layer_norm_eps": 1e-6,
            "out_indices": out_indices,
            "out_features": [f"stage{i}" for i in out_indices],
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        },
        "patch_size": config.patch_size,
        "reassemble_hidden_size": spec.embed_dim,
        "reassemble_factors": [4, 2, 1, 0.5],
        "neck_hidden_sizes": list(config.out_channels),
        "fusion_hidden_size": config.features,
        "head_in_index": -1,
        "head_hidden_size": 32,
        "depth_estimation_type": config.head,
        # an int: transformers 5 declares ``max_depth: int | None`` and refuses 20.0 (whole numbers only, see above)
        "max_depth": int(config.max_depth) if config.head == "metric" else 1,
        PROJECT_KEY: {k: list(v) if isinstance(v, tuple) else v
                      for k, v in ((k, getattr(config, k)) for k in _PROJECT_FIELDS)},
    }
