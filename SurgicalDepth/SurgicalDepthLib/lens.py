"""Lens correction: z-depth for the camera that took the frame, from a relative model that assumes another lens.

A monocular network cannot see the focal length. What it can read from a frame is how far each pixel's surface is
along its ray; to turn that into z-depth (along the optical axis, the project's convention) it multiplies by the
cosine of the ray's angle to the axis **as the lens it was trained on would have it**. A model trained on one lens
family therefore predicts, for a frame from any lens,

    z_pred(u, v) ∝ ray_length(u, v) · cos θ_ref(u, v),

where θ_ref is the angle of pixel (u, v) under a reference camera: a centred pinhole with the model's
``reference_fov_deg`` across the image width (``ModelConfig.reference_fov_deg``). Measured on the shipped default
model (MODEL_CARD.md, "Lens correction"): on frames through a 150° fisheye lens, its raw output is 0.50 AbsRel from
the true z-depth but 0.14 from the ray length, and ``z_pred · cos θ / cos θ_ref`` (θ the true angle) is 0.09 from
the true z-depth — as good as on the lenses it was trained on. Wide-angle scopes (colonoscopes and capsules see
140–170°) are where this matters: without it, the near wall at the periphery comes out far too far.

With the camera's intrinsics (a calibration, with its distortion model) the correction factor is

    c(u, v) = min(1, cos θ(u, v) / cos θ_ref(u, v)),    z = z_pred · c,    disparity = disparity_pred / c.

The ratio is capped at 1: a network adapts to lenses narrower than its reference (their perspective is within what
it was trained on) but not to wider ones. Measured on the default model over 18 lens and aspect combinations
(pinhole 70–130°, fisheye 110–160°; 256×320, 256×256, 224×400; training scenes, not the held-out ones): mean
AbsRel 0.247 raw, 0.116 with the plain ratio, 0.114 capped — and capped it is never worse than the raw output (the
plain ratio is, by up to 0.022, on 70° lenses).
The correction needs real intrinsics: a guessed field of view (``Intrinsics.from_fov()`` without a value) would only
swap one guess for another.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from .camera import Intrinsics, camera_rays
from .depth_kind import OutputKind

__all__ = ["LensCorrection", "SampleLensCorrection", "correct_prediction", "lens_factor", "model_reference_fov",
           "ray_cosines"]


def ray_cosines(intrinsics: Intrinsics) -> np.ndarray:
    """Cosine of the angle between each pixel's ray and the optical axis, float64 ``[H, W]`` in (0, 1].

    ``cos θ = 1 / sqrt(1 + x² + y²)`` for the unit-z ray ``(x, y, 1)`` of the pixel (lens distortion undone by
    :func:`camera.pixel_rays`). NaN where the lens model gives no ray (not finite).
    """
    rays = camera_rays(intrinsics)
    with np.errstate(over="ignore", invalid="ignore"):
        cos = 1.0 / np.sqrt(1.0 + rays[..., 0] ** 2 + rays[..., 1] ** 2)
    return np.where(np.isfinite(cos) & (cos > 0), cos, np.nan)


def lens_factor(intrinsics: Intrinsics, reference_fov_deg: float) -> np.ndarray:
    """Depth correction factor ``min(1, cos θ / cos θ_ref)``, float32 ``[H, W]`` at the intrinsics' image size.

    Args:
        intrinsics: the real camera of the frames (``sd.Intrinsics``, any distortion model).
        reference_fov_deg: horizontal field of view (degrees, across the image width) of the centred pinhole the
            model assumes (``ModelConfig.reference_fov_deg``).
    Returns:
        ``c`` with ``z_true = z_pred · c`` (module docstring); NaN where the lens gives no ray. Read-only: the last
        few cameras' factors are kept (a 1080p distorted camera takes 0.2–1.3 s to undistort, and live and per-image
        streams ask for the same camera every frame).
    """
    if not 0 < reference_fov_deg < 180:
        raise ValueError(f"reference_fov_deg must be in (0, 180), got {reference_fov_deg!r}")
    return _factor(json.dumps(intrinsics.to_dict(), sort_keys=True), float(reference_fov_deg))


@functools.lru_cache(maxsize=4)
def _factor(camera: str, reference_fov_deg: float) -> np.ndarray:
    """:func:`lens_factor` of the camera ``Intrinsics.to_dict`` JSON ``camera`` (memoised by it)."""
    intrinsics = Intrinsics.from_dict(json.loads(camera))
    reference = Intrinsics.from_fov(intrinsics.width, intrinsics.height, reference_fov_deg)
    ratio = ray_cosines(intrinsics) / ray_cosines(reference)
    factor = np.where(np.isnan(ratio), np.nan, np.minimum(ratio, 1.0)).astype(np.float32)
    factor.flags.writeable = False
    return factor


def correct_prediction(prediction: np.ndarray, factor: np.ndarray, output_kind: str) -> np.ndarray:
    """Apply :func:`lens_factor` to a model output: depth × ``factor``, disparity / ``factor``. float32 ``[H, W]``.

    Raises:
        ValueError: the factor's shape differs from the prediction's.
    """
    pred = np.asarray(prediction, np.float32)
    if factor.shape != pred.shape:
        raise ValueError(f"lens factor is {factor.shape[1]}x{factor.shape[0]} but the prediction is "
                         f"{pred.shape[1]}x{pred.shape[0]}: intrinsics for another image size")
    if OutputKind.parse(output_kind) is OutputKind.DEPTH:
        return pred * factor
    return pred / factor


def model_reference_fov(model: object) -> float | None:
    """``model.config.reference_fov_deg`` (None for models without one, stored predictions, other objects)."""
    return getattr(getattr(model, "config", None), "reference_fov_deg", None)


class LensCorrection:
    """``correction(prediction)``: a model's output corrected to the frames' real lens (:func:`lens_factor`);
    intrinsics of another size with the same aspect ratio are rescaled to the prediction's.

    Args:
        intrinsics: the real camera (``sd.Intrinsics``).
        reference_fov_deg: the model's reference lens (:func:`model_reference_fov`).
        output_kind: ``"disparity"`` or ``"depth"``, the model's output.
    """

    def __init__(self, intrinsics: Intrinsics, reference_fov_deg: float, output_kind: str):
        if not isinstance(intrinsics, Intrinsics):
            raise TypeError(f"intrinsics must be an sd.Intrinsics, got {type(intrinsics).__name__}")
        self.intrinsics, self.reference_fov_deg = intrinsics, float(reference_fov_deg)
        self.output_kind = OutputKind.parse(output_kind).value

    def factor(self, height: int, width: int) -> np.ndarray:
        """float32 ``[height, width]`` correction factor."""
        return lens_factor(self.intrinsics.fitted(width, height), self.reference_fov_deg)

    def __call__(self, prediction: np.ndarray) -> np.ndarray:
        return correct_prediction(prediction, self.factor(*np.shape(prediction)), self.output_kind)


class SampleLensCorrection:
    """``correction(sample, prediction)`` for data sets whose samples carry their camera (``sample["intrinsics"]``,
    ``sd.Intrinsics`` or None): the prediction corrected to that lens when the model has a reference lens, else
    unchanged; ``n_corrected`` counts the corrected samples.

    Args:
        model: the model that made the predictions (its ``config.reference_fov_deg`` and ``output_kind``).
        enabled: False turns the correction off (predictions pass unchanged).
    """

    def __init__(self, model: Any, enabled: bool = True):
        self.reference_fov_deg = model_reference_fov(model) if enabled else None
        self.output_kind = model.output_kind
        self.n_corrected = 0

    def __call__(self, sample: dict, prediction: np.ndarray) -> np.ndarray:
        intrinsics = sample.get("intrinsics")
        if self.reference_fov_deg is None or intrinsics is None:
            return prediction
        self.n_corrected += 1
        return LensCorrection(intrinsics, self.reference_fov_deg, self.output_kind)(prediction)
