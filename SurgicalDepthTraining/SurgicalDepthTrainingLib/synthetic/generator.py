"""``SceneGenerator``: renders frames (image, exact z-depth, validity, intrinsics, pose) of one procedural scene.

Frame dict keys (the project's sample-dict convention): ``image`` uint8 [H, W, 3] RGB; ``depth`` float32 [H, W]
z-depth in mm (0 where invalid); ``valid`` bool [H, W]; ``intrinsics`` ``SurgicalDepthLib.camera.Intrinsics``;
``pose`` float64 [4, 4] camera-to-world (mm); ``name`` str.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from SurgicalDepthLib.camera import Intrinsics

from . import effects
from .config import SceneConfig
from .organs import build_scene
from .raycast import camera_rays, cast, rotate
from .scenes import Scene, TubeSurface
from .shading import beam_profile, expose_planes, lighting, normal_planes, vignette_map
from .trajectory import close_up_trajectory, field_trajectory, tube_trajectory

logger = logging.getLogger(__name__)

_INSTRUMENT_TIP_MM = 18.0  # metal jaws at the tip, dark shaft behind


@dataclass(frozen=True, eq=False)
class Frame:
    """One rendered frame. ``image`` uint8 [H, W, 3] RGB; ``depth`` float32 [H, W] mm (0 = invalid);
    ``valid`` bool [H, W]; ``pose`` float64 [4, 4] camera-to-world; ``name`` str."""

    image: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    intrinsics: Intrinsics
    pose: np.ndarray
    name: str

    def as_dict(self) -> dict:
        return {"image": self.image, "depth": self.depth, "valid": self.valid, "intrinsics": self.intrinsics,
                "pose": self.pose, "name": self.name}


def make_intrinsics(config: SceneConfig, rng: np.random.Generator) -> Intrinsics:
    """Pinhole intrinsics with the horizontal ``fov_deg``; or an OpenCV fisheye whose image width spans it."""
    w, h = config.width, config.height
    half = np.deg2rad(config.fov_deg) / 2
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    if not config.fisheye:
        f = (w / 2.0) / np.tan(half)
        return Intrinsics(fx=float(f), fy=float(f), cx=cx, cy=cy, width=w, height=h)
    if config.randomize:
        coeffs = [float(rng.uniform(-0.05, 0.02)), float(rng.uniform(-0.01, 0.01)), 0.0, 0.0]
    else:
        coeffs = [-0.02, 0.0, 0.0, 0.0]
    t2 = half * half
    theta_d = half * (1 + coeffs[0] * t2 + coeffs[1] * t2 ** 2)
    f = (w / 2.0) / theta_d
    return Intrinsics(fx=float(f), fy=float(f), cx=cx, cy=cy, width=w, height=h,
                      distortion={"model": "fisheye", "coeffs": coeffs})


class SceneGenerator:
    """Renders frames of the scene described by ``config`` (all randomness from ``config.seed``).

    ``render(pose)`` ray-casts the analytic surfaces for the exact z-depth of every pixel and shades the hits;
    ``trajectory(n)`` gives a smooth endoscope path through the scene. ``intrinsics``: render through this camera
    (pinhole or OpenCV fisheye, of the config's ``width × height``, e.g. a real scope's calibration) instead of the
    one ``fov_deg`` and ``fisheye`` describe.
    """

    def __init__(self, config: SceneConfig, intrinsics: Intrinsics | None = None) -> None:
        if not isinstance(config, SceneConfig):
            raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
        if intrinsics is not None and intrinsics.size != (config.width, config.height):
            raise ValueError(f"intrinsics are for {intrinsics.width}x{intrinsics.height}, the scene renders "
                             f"{config.width}x{config.height}")
        self.config = config
        self.scene: Scene = build_scene(config)
        self.intrinsics = intrinsics or make_intrinsics(config, np.random.default_rng([config.seed, 31]))
        self._dirs, self._lens = camera_rays(self.intrinsics)
        # per-camera constants of the shading: float32 ray planes, vignette, the pixels outside the lens
        self._dir_planes = tuple(np.ascontiguousarray(self._dirs[..., k], np.float32) for k in range(3))
        self._vignette = vignette_map(config.height, config.width, config.vignetting)
        self._beam = beam_profile(self._dir_planes[2], config.beam_exponent) if config.beam_exponent else None
        self._outside = ~self._lens

    @property
    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame unit ray directions float64 [H, W, 3] and the lens mask bool [H, W] (fisheye circle)."""
        return self._dirs, self._lens

    def trajectory(self, n_frames: int) -> np.ndarray:
        """``n_frames`` camera-to-world poses, float64 [n, 4, 4], along the lumen or above the field; with
        ``config.close_up``, approaching one of the scene's polyps (``close_up_trajectory``) where it has one."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames!r}")
        rng = np.random.default_rng([self.config.seed, 101])
        if isinstance(self.scene.surface, TubeSurface):
            cap = self.scene.params.get("cap_at")
            limit = (cap - 1.2 * self.scene.params["radius_mm"]) if cap is not None else \
                self.config.length_mm - self.config.max_depth_mm - 20.0
            if self.config.close_up:  # a generator of its own: a scene's other clips keep their path
                poses = close_up_trajectory(self.scene, n_frames, np.random.default_rng([self.config.seed, 101, 5]),
                                            z_limit=limit)
                if poses is not None:
                    return poses
            return tube_trajectory(self.scene, n_frames, self.config.speed_mm, rng, z_limit=limit)
        return field_trajectory(self.scene, n_frames, self.config.speed_mm, rng)

    def geometry(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact geometry seen from ``pose``.

        Returns:
            depth: float64 [H, W] z-depth in mm (inf where nothing is hit within ``max_depth_mm``).
            ray_length: float64 [H, W] mm.
            on_instrument: bool [H, W].
        """
        return cast(self.scene.surface, pose, self._dirs, self._lens, self.config.max_depth_mm,
                    instrument=self.scene.instrument, min_step_per_mm=0.5 / self.intrinsics.fx)

    def render(self, pose: np.ndarray, index: int = 0, name: str | None = None, blur_angle: float = 0.0) -> Frame:
        """Render one frame from ``pose`` (float64 [4, 4] camera-to-world, mm).

        Args:
            index: frame number, seeds this frame's sensor noise, smoke and blood patterns.
            name: frame name (default ``"{organ}_{seed}_{index:06d}"``).
            blur_angle: image direction of the motion blur, radians.
        """
        cfg, scene = self.config, self.scene
        pose = np.asarray(pose, np.float64)
        depth, length, tool = self.geometry(pose)
        valid = np.isfinite(depth) & (depth > 0) & (depth <= cfg.max_depth_mm)
        rot, origin = pose[:3, :3], pose[:3, 3]
        length = np.where(valid, length, 0.0)
        points_cam = self._dirs * length[..., None]
        nx, ny, nz = normal_planes(points_cam, valid)
        dx, dy, dz = self._dir_planes
        cos = nx * dx
        cos += ny * dy
        cos += nz * dz
        np.negative(cos, out=cos)  # -n·d: Lambert cosine (clipped in ``lighting``)
        mat = scene.material
        specular, shininess = mat["specular"], mat["shininess"]
        # albedo as R, G, B planes ([H * W] each): tissue texture, instrument metal / shaft
        albedo = [np.zeros(valid.size, np.float32) for _ in range(3)]
        tissue = np.flatnonzero(valid & ~tool)
        world = rotate(rot, points_cam.reshape(-1, 3).take(tissue, axis=0)) + origin
        for plane, values in zip(albedo, scene.tissue_albedo_planes(world)):
            plane[tissue] = values
        if tool.any() and scene.instrument is not None:
            on_tool = tool & valid
            metal = scene.instrument.axial(rotate(rot, points_cam[on_tool]) + origin) < _INSTRUMENT_TIP_MM
            for plane in albedo:
                plane[np.flatnonzero(on_tool)] = np.where(metal, 0.3, 0.04)
            specular = np.full(valid.shape, specular, np.float32)
            shininess = np.full(valid.shape, shininess, np.float32)
            specular[on_tool] = np.where(metal, 1.0, 0.4)
            shininess[on_tool] = np.where(metal, 40.0, 25.0)
        diffuse, spec = lighting(cos, length, valid, specular, shininess, mat["ambient"], beam=self._beam,
                                 fill=cfg.fill_light)
        radiance = [a.reshape(valid.shape) * diffuse + spec for a in albedo]
        image = cv2.merge(expose_planes(radiance, valid, mat["exposure"], mat["gamma"], self._vignette,
                                        mat["saturation"]))
        rng = np.random.default_rng([cfg.seed, 211, index])
        image = effects.add_smoke(image, np.where(valid, depth, 0.0), valid, cfg.smoke, rng)
        image = effects.add_blood(image, cfg.blood, rng)
        image = effects.motion_blur(image, cfg.blur, blur_angle)
        image = effects.sensor_noise(image, cfg.noise, rng)
        image[self._outside] = 0.0
        return Frame(image=np.round(image * 255.0).astype(np.uint8),
                     depth=np.where(valid, depth, 0.0).astype(np.float32), valid=valid,
                     intrinsics=self.intrinsics, pose=np.array(pose, np.float64),
                     name=name if name is not None else f"{cfg.organ}_{cfg.seed}_{index:06d}")

    def iter_frames(self, n_frames: int) -> Iterator[Frame]:
        """Frames along ``trajectory(n_frames)``; motion blur follows the image motion of the look direction."""
        poses = self.trajectory(n_frames)
        for i, pose in enumerate(poses):
            angle = 0.0
            if self.config.blur > 0 and n_frames > 1:
                j = min(i + 1, n_frames - 1)
                k = j - 1 if j == i else i
                move = poses[j][:3, 3] - poses[k][:3, 3]
                cam = pose[:3, :3].T @ move  # camera-frame motion: image streaks away from the focus of expansion
                angle = float(np.arctan2(cam[1], cam[0]))
            yield self.render(pose, index=i, blur_angle=angle)


def render_clip(organ: str = "colon", n_frames: int = 16, seed: int = 0, height: int = 256, width: int = 320,
                intrinsics: Intrinsics | None = None, **options) -> list[dict]:
    """Render ``n_frames`` along a smooth trajectory through a new ``organ`` scene.

    Args:
        organ: one of ``ORGANS``.
        intrinsics: the camera to render through (``SceneGenerator``), or None for the one the options describe.
        options: any other ``SceneConfig`` field (``fisheye``, ``noise``, ``blur``, ``smoke``, ...).
    Returns:
        list of frame dicts (``image``, ``depth``, ``valid``, ``intrinsics``, ``pose``, ``name``).
    """
    config = SceneConfig(organ=organ, seed=seed, height=height, width=width, **options)
    generator = SceneGenerator(config, intrinsics)
    return [frame.as_dict() for frame in generator.iter_frames(n_frames)]
