"""DPT decoder of Depth Anything (Ranftl et al. 2021, "Vision Transformers for Dense Prediction"; the variant in
Depth-Anything-V2 ``depth_anything_v2/dpt.py``), with the official module names so state dicts load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """Pre-activation residual block: ``x + conv2(relu(conv1(relu(x))))`` (optional batch norm)."""

    def __init__(self, features: int, use_bn: bool = False):
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=not use_bn)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        if self.use_bn:
            out = self.bn1(out)
        out = self.conv2(F.relu(out))
        if self.use_bn:
            out = self.bn2(out)
        return out + x


class FeatureFusionBlock(nn.Module):
    """Adds the (residual-refined) skip feature, refines, upsamples ×2 or to ``size``, then a 1×1 conv."""

    def __init__(self, features: int, use_bn: bool = False):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT decoder: four token maps → one-channel map at the input resolution.

    ``head`` selects the last activation: ``"relative"`` ends in ReLU (disparity), ``"metric"`` in a sigmoid
    (scaled by ``max_depth`` in :class:`~SurgicalDepthLib.model.DepthModel`). Subclass and override
    :meth:`make_output_conv2` for other heads. ``patch_size``: the encoder's patch (pixels per token side; 14 for
    every official model), which sets the output resolution ``patch_size × token grid``.
    """

    def __init__(self, in_channels: int, features: int, out_channels: tuple[int, int, int, int],
                 head: str = "relative", use_bn: bool = False, head_features_2: int = 32, patch_size: int = 14):
        super().__init__()
        if head not in ("relative", "metric"):
            raise ValueError(f"head={head!r} is not one of ('relative', 'metric')")
        self.patch_size = patch_size
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, 1, 1, 0) for c in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, 1, 1, bias=False))
            setattr(scratch, f"refinenet{i}", FeatureFusionBlock(features, use_bn))
        scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, 1, 1)
        scratch.output_conv2 = self.make_output_conv2(features // 2, head_features_2, head)
        self.scratch = scratch

    @staticmethod
    def make_output_conv2(in_features: int, hidden: int, head: str) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_features, hidden, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(hidden, 1, 1, 1, 0),
            nn.ReLU(True) if head == "relative" else nn.Sigmoid(),
            nn.Identity(),
        )

    def forward(self, features: list[tuple[torch.Tensor, torch.Tensor]], patch_h: int, patch_w: int) -> torch.Tensor:
        """Args: ``features`` = four ``(tokens [B, patch_h*patch_w, C], cls [B, C])``. Returns ``[B, 1,
        patch_size*patch_h, patch_size*patch_w]``."""
        layers = []
        for i, (tokens, _cls) in enumerate(features):
            B, N, C = tokens.shape
            x = tokens.permute(0, 2, 1).reshape(B, C, patch_h, patch_w)
            x = self.resize_layers[i](self.projects[i](x))
            layers.append(x)
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(layers[0]), s.layer2_rn(layers[1]), s.layer3_rn(layers[2]), s.layer4_rn(layers[3])
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        out = s.output_conv1(path)
        p = self.patch_size
        out = F.interpolate(out, size=(patch_h * p, patch_w * p), mode="bilinear", align_corners=True)
        return s.output_conv2(out)
