"""``SceneConfig``: every setting of the procedural scene renderer, as one frozen, JSON-serialisable record."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from SurgicalDepthLib.camera import FOCAL_RANGE
from SurgicalDepthLib.configs import check_fields

ORGANS: tuple[str, ...] = ("colon", "stomach", "small_intestine", "surgical_field")
#: the organs drawn as a lumen, where ``polyps`` and ``close_up`` apply (``surgical_field`` has none)
TUBE_ORGANS: tuple[str, ...] = ORGANS[:3]


@dataclass(frozen=True)
class SceneConfig:
    """Settings of one synthetic scene. Geometry, colours and lighting are drawn from ``seed`` (domain randomisation).

    Attributes:
        organ: one of ``ORGANS``.
        height, width: image size in pixels.
        fov_deg: horizontal field of view across the image width, degrees (fisheye: the corners see more).
        seed: seed of every random choice (geometry, textures, lighting, trajectory, noise).
        fisheye: render through an OpenCV fisheye lens (``Intrinsics.distortion = {"model": "fisheye", ...}``).
        randomize: draw colours, light power, texture scale and specularity from ``seed``; False keeps the
            nominal values (useful for tests and figures).
        noise: standard deviation of the sensor noise, fraction of full scale (0 = none).
        blur: motion blur length in pixels (0 = none).
        smoke: surgical smoke density in [0, 1] (0 = none).
        blood: blood tint strength in [0, 1] (0 = none).
        specular: multiplier of the specular reflectance (0 = matte).
        vignetting: darkening of the image corners in [0, 1].
        fill_light: inter-reflection fill as a fraction of the mean diffuse irradiance, in [0, 1] (0 = only the
            direct light and the small ambient term).
        beam_exponent: the light's emission ``cos(angle to the optical axis) ** beam_exponent`` (0 = uniform).
        polyps: mean number of sessile polyps per 100 mm of lumen (tube organs; ``synthetic.polyps``; 0 = none).
        close_up: in a tube scene with polyps, the endoscope approaches one and looks at it
            (``trajectory.close_up_trajectory``) instead of looking down the lumen.
        albedo_patches: strength in [0, 1] of patches of other reflectance on the tissue (blood, bile, mucus,
            bruising, pale scars; ``textures.reflectance_patches``; 0 = none): brightness that is not depth.
        max_depth_mm: rays longer than this in z are invalid (and rendered dark); at most 655.35 (uint16 PNG range).
        speed_mm: camera advance per frame along the trajectory, mm.
        length_mm: length of the organ model along its centreline, mm.
    """

    organ: str = "colon"
    height: int = 256
    width: int = 320
    fov_deg: float = 100.0
    seed: int = 0
    fisheye: bool = False
    randomize: bool = True
    noise: float = 0.01
    blur: float = 0.0
    smoke: float = 0.0
    blood: float = 0.0
    specular: float = 1.0
    vignetting: float = 0.4
    fill_light: float = 0.0
    beam_exponent: float = 0.0
    polyps: float = 0.0
    close_up: bool = False
    albedo_patches: float = 0.0
    max_depth_mm: float = 300.0
    speed_mm: float = 2.0
    length_mm: float = 700.0

    def __post_init__(self) -> None:
        if self.organ not in ORGANS:
            raise ValueError(f"SceneConfig.organ must be one of {ORGANS}, got {self.organ!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8:
                raise ValueError(f"SceneConfig.{name} must be an int >= 8, got {value!r}")
        for field in dataclasses.fields(self):  # NaN passes every `< 0` test below; inf no range check
            value = getattr(self, field.name)
            if field.type == "float" and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                              and math.isfinite(value)):
                raise ValueError(f"SceneConfig.{field.name} must be a finite number, got {value!r}")
        for name in ("fisheye", "randomize", "close_up"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"SceneConfig.{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"SceneConfig.seed must be an int >= 0, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))  # numpy integers too (written to meta.json)
        limit = 170.0 if self.fisheye else 150.0
        if not 10.0 <= self.fov_deg <= limit:
            raise ValueError(f"SceneConfig.fov_deg must be in [10, {limit}] (fisheye={self.fisheye}), "
                             f"got {self.fov_deg!r}")
        for name in ("noise", "blur", "specular", "speed_mm", "polyps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SceneConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.beam_exponent < 0:
            raise ValueError(f"SceneConfig.beam_exponent must be >= 0, got {self.beam_exponent!r}")
        for name in ("smoke", "blood", "vignetting", "fill_light", "albedo_patches"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        half = math.radians(self.fov_deg) / 2  # make_intrinsics' focal length (fisheye: θd ≈ θ)
        focal = (self.width / 2) / (half if self.fisheye else math.tan(half))
        if focal < FOCAL_RANGE[0] * max(self.width, self.height):
            raise ValueError(f"SceneConfig.fov_deg of {self.fov_deg:g}° is too wide for an image {self.width} px wide "
                             f"and {self.height} tall (its focal length would be {focal:.3g} px, below "
                             f"{FOCAL_RANGE[0]:g} x the longer side): narrow it or widen the image")
        if not 1.0 <= self.max_depth_mm <= 655.35:
            raise ValueError(f"SceneConfig.max_depth_mm must be in [1, 655.35], got {self.max_depth_mm!r}")
        if self.length_mm < 2.0 * self.max_depth_mm:
            raise ValueError(f"SceneConfig.length_mm must be >= 2 * max_depth_mm = {2 * self.max_depth_mm}, "
                             f"got {self.length_mm!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SceneConfig":
        check_fields(cls, data, "SceneConfig")
        return cls(**data)
