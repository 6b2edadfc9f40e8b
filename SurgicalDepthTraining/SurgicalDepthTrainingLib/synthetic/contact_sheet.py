"""Contact sheet of synthetic frames: per organ a row of RGB frames above their colour-mapped depth.

Depth is shown as normalised inverse depth through OpenCV's JET map, so near is red and far is blue.
The README figure is made with::

    python -c "from SurgicalDepthTrainingLib.synthetic import contact_sheet; \
               contact_sheet('Resources/Figures/synthetic_contact_sheet.png')"
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from SurgicalDepthLib.video import write_image

from .config import ORGANS
from .generator import render_clip


def depth_to_color(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB: JET of inverse depth normalised over valid pixels (red = near, blue = far, black =
    invalid)."""
    inv = np.zeros(depth.shape, np.float64)
    inv[valid] = 1.0 / depth[valid]
    if valid.any():
        lo, hi = np.percentile(inv[valid], [1, 99])
        inv = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap(np.round(inv * 255).astype(np.uint8), cv2.COLORMAP_JET)
    bgr[~valid] = 0
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def contact_sheet(path: str | os.PathLike, organs: Sequence[str] = ORGANS, columns: int = 4, seed: int = 0,
                  height: int = 192, width: int = 240, frame_index: int = 4, **options) -> Path:
    """Write a grid PNG: per organ, a row of RGB frames above their colour-mapped depth.

    Column ``k`` shows frame ``frame_index`` of a clip with seed ``seed + k``, so the sheet shows the domain
    randomisation (geometry, colours, light, specularity) across seeds.

    Args:
        path: output PNG (written atomically).
        organs: organ rows.
        columns: clips (seeds) per organ.
        options: extra ``SceneConfig`` fields for every clip (``fisheye``, ``smoke``, ...).
    Returns:
        ``path``.
    """
    path = Path(path)
    rows = []
    for organ in organs:
        clips = [render_clip(organ, n_frames=frame_index + 1, seed=seed + k, height=height, width=width,
                             **options)[frame_index] for k in range(columns)]
        rgb = np.concatenate([f["image"] for f in clips], axis=1)
        dep = np.concatenate([depth_to_color(f["depth"], f["valid"]) for f in clips], axis=1)
        label = np.full((22, rgb.shape[1], 3), 255, np.uint8)
        cv2.putText(label, organ, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, rgb, dep], axis=0))
    sheet = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, sheet)

