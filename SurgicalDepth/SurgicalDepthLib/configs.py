"""The one registry of model architectures (frozen dataclasses).

Facts from the official Depth-Anything-V2 ``run.py``/``dpt.py`` (``model_configs`` and
``intermediate_layer_idx``) and Depth-Anything V1 ``depth_anything/dpt.py`` (last four blocks feed the decoder).
Nothing else in the project defines an architecture: every loader, converter and test derives from here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls`` (a config
    read from a file with a typo or from a newer version must not be silently half-applied)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; expected a subset of {sorted(known)}")


@dataclass(frozen=True)
class EncoderSpec:
    """DINOv2 ViT dimensions. ``ffn`` is ``"mlp"`` (fc1/fc2, GELU) or ``"swiglu"`` (DINOv2 giant)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"


ENCODERS: dict[str, EncoderSpec] = {
    # "vitt" is this project's own small encoder (ViT-Ti widths) used for the shipped default model.
    "vitt": EncoderSpec(192, 12, 3),
    "vits": EncoderSpec(384, 12, 6),
    "vitb": EncoderSpec(768, 12, 12),
    "vitl": EncoderSpec(1024, 24, 16),
    "vitg": EncoderSpec(1536, 40, 24, ffn="swiglu"),
}

# DPT decoder widths per encoder: (features, out_channels) — official model_configs.
DECODERS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "vitt": (64, (24, 48, 96, 192)),
    "vits": (64, (48, 96, 192, 384)),
    "vitb": (128, (96, 192, 384, 768)),
    "vitl": (256, (256, 512, 1024, 1024)),
    "vitg": (384, (1536, 1536, 1536, 1536)),
}

# Depth Anything V2 feeds these (0-based) blocks to the decoder; V1 feeds the last four.
V2_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "vitt": (2, 5, 8, 11),
    "vits": (2, 5, 8, 11),
    "vitb": (2, 5, 8, 11),
    "vitl": (4, 11, 17, 23),
    "vitg": (9, 19, 29, 39),
}

SIZE_NAMES = {"tiny": "vitt", "small": "vits", "base": "vitb", "large": "vitl", "giant": "vitg"}
VERSIONS = ("v1", "v2")
HEADS = ("relative", "metric")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture record of a Depth Anything model.

    Attributes:
        encoder: ``vitt|vits|vitb|vitl|vitg``.
        version: ``v1`` (last four blocks feed the DPT decoder) or ``v2`` (``V2_LAYERS``).
        head: ``relative`` (ReLU output, disparity, affine-invariant) or ``metric`` (sigmoid × ``max_depth``).
        max_depth: metric head range (metres for the official metric models, mm for this project's); None for
            relative heads.
        features, out_channels: DPT decoder widths.
        intermediate_layers: 0-based block indices read by the decoder.
        patch_size, pretrain_size: 14 and 518 (position-embedding grid 37×37) for every official model.
        mean, std: input normalisation (ImageNet).
        input_size: the inference input size the weights were made for (lower bound of both sides, ×14); 518 for
            every official model. ``infer_image(rgb)`` uses it when no size is given.
        metric_unit: unit of a metric head's output: ``"m"`` for the official metric models, ``"mm"`` for
            metric models trained by this project on millimetre ground truth.
        reference_fov_deg: horizontal field of view (degrees, across the image width) of the centred pinhole camera
            whose z-depth the model predicts whatever lens took the frame (:mod:`SurgicalDepthLib.lens`); with a
            frame's real intrinsics the output is corrected to that lens. None: not measured (no correction).
    """

    encoder: str
    version: str = "v2"
    head: str = "relative"
    max_depth: float | None = None
    features: int = 64
    out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    intermediate_layers: tuple[int, int, int, int] = (2, 5, 8, 11)
    patch_size: int = 14
    pretrain_size: int = 518
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 518
    metric_unit: str = "m"
    reference_fov_deg: float | None = None

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder={self.encoder!r} is not one of {sorted(ENCODERS)}")
        if self.version not in VERSIONS:
            raise ValueError(f"version={self.version!r} is not one of {VERSIONS}")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not one of {HEADS}")
        if self.head == "metric" and not (self.max_depth and self.max_depth > 0):
            raise ValueError(f"a metric head needs max_depth > 0, got {self.max_depth!r}")
        if self.input_size <= 0 or self.input_size % self.patch_size:
            raise ValueError(f"input_size={self.input_size} must be a positive multiple of {self.patch_size}")
        if self.metric_unit not in ("m", "mm"):
            raise ValueError(f"metric_unit={self.metric_unit!r} is not one of ('m', 'mm')")
        if self.max_depth is not None and not (math.isfinite(self.max_depth) and self.max_depth > 0):
            raise ValueError(f"max_depth={self.max_depth!r} must be a positive finite number")
        if self.reference_fov_deg is not None and not 0 < self.reference_fov_deg < 180:
            raise ValueError(f"reference_fov_deg={self.reference_fov_deg!r} must be None or in (0, 180) degrees")
        sizes = {"features": (self.features,), "out_channels": self.out_channels,
                 "patch_size": (self.patch_size,), "pretrain_size": (self.pretrain_size,)}
        for name, values in sizes.items():
            if not all(isinstance(v, int) and v > 0 for v in values):
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive integers")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in (*self.mean, *self.std)) \
                or not all(v > 0 for v in self.std):
            raise ValueError(f"mean={self.mean!r} and std={self.std!r} must be 3 finite values each, std > 0")
        depth = ENCODERS[self.encoder].depth
        if len(self.intermediate_layers) != 4 or not all(0 <= i < depth for i in self.intermediate_layers):
            raise ValueError(
                f"intermediate_layers={self.intermediate_layers!r} must be 4 block indices in [0, {depth})")

    @property
    def spec(self) -> EncoderSpec:
        return ENCODERS[self.encoder]

    @property
    def output_kind(self) -> str:
        return "disparity" if self.head == "relative" else "depth"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        check_fields(cls, data, "model config")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def make_config(encoder: str, version: str = "v2", head: str = "relative", max_depth: float | None = None,
                **overrides: Any) -> ModelConfig:
    """The official architecture for ``encoder`` and ``version`` (decoder widths and block indices derived)."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder={encoder!r} is not one of {sorted(ENCODERS)}")
    if version not in VERSIONS:
        raise ValueError(f"version={version!r} is not one of {VERSIONS}")
    features, out_channels = DECODERS[encoder]
    depth = ENCODERS[encoder].depth
    layers = V2_LAYERS[encoder] if version == "v2" else tuple(range(depth - 4, depth))
    values: dict[str, Any] = dict(encoder=encoder, version=version, head=head, max_depth=max_depth,
                                  features=features, out_channels=out_channels, intermediate_layers=layers)
    values.update(overrides)
    return ModelConfig(**values)


def _registry() -> dict[str, ModelConfig]:
    table: dict[str, ModelConfig] = {}
    for size in ("small", "base", "large", "giant"):
        encoder = SIZE_NAMES[size]
        table[f"depth-anything-v2-{size}"] = make_config(encoder, "v2")
        if size != "giant":
            table[f"depth-anything-v1-{size}"] = make_config(encoder, "v1")
        # official V2 metric models: Hypersim (indoor, 20 m) and Virtual KITTI 2 (outdoor, 80 m)
        table[f"depth-anything-v2-metric-hypersim-{size}"] = make_config(encoder, "v2", "metric", 20.0)
        table[f"depth-anything-v2-metric-vkitti-{size}"] = make_config(encoder, "v2", "metric", 80.0)
    table["surgical-depth-tiny"] = make_config("vitt", "v2")
    return table


MODEL_CONFIGS: dict[str, ModelConfig] = _registry()


def list_model_configs() -> list[str]:
    return sorted(MODEL_CONFIGS)


def get_model_config(name: str) -> ModelConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(list_model_configs())}") from None
