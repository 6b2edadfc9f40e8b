"""Procedural surgical scenes with exact ground truth: analytic organ surfaces, ray casting, endoscope shading.

Public: ``SceneConfig``, ``SceneGenerator``, ``render_clip``, ``write_synthetic``, ``ORGANS``, ``contact_sheet``.
"""
from __future__ import annotations

from .config import ORGANS, SceneConfig
from .contact_sheet import contact_sheet, depth_to_color
from .generator import Frame, SceneGenerator, render_clip
from .writer import write_synthetic

__all__ = ["ORGANS", "Frame", "SceneConfig", "SceneGenerator", "contact_sheet", "depth_to_color", "render_clip",
           "write_synthetic"]
