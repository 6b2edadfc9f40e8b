"""Organ builders: draw one ``Scene`` (geometry, albedo, material) per organ from a seeded generator.

Sizes follow endoscopic anatomy: colon lumen radius 20-30 mm with haustral folds every 20-35 mm (Huang et al.,
"Colon haustral fold ...", 2005); small intestine radius 10-14 mm with dense circular folds (plicae circulares
every ~5-8 mm) and villi; stomach a wide cavity (radius 40-60 mm) with longitudinal rugae; an open surgical field
seen from 60-140 mm with cavities, organ bulges and a laparoscopic instrument shaft (radius 2.5-5 mm).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .config import SceneConfig
from .polyps import draw_polyps, polyp_tables, tint_albedo
from .scenes import (HeightfieldSurface, Instrument, Scene, TubeSurface, envelope_lipschitz, heightfield_lipschitz,
                     slope_envelope, tube_lipschitz)
from .textures import band_noise, fractal_noise, mucosa_albedo, reflectance_patches

_DZ = 0.25          # tube table row spacing, mm
_NTHETA = 720       # tube relief table columns (0.5 degree)
_TEX_STEP = 0.3     # albedo texel, mm (tubes: along z; angle: per mm of circumference at the mean radius)
Z_START = -60.0     # tubes extend this far behind the start of the camera path, mm


def _smooth_path(rng: np.random.Generator, z: np.ndarray, amplitude: float, wavelengths: tuple[float, float]
                 ) -> np.ndarray:
    """A smooth random curve over ``z``: three sinusoids with random wavelengths, phases and weights, mm."""
    out = np.zeros_like(z)
    for _ in range(3):
        lam = rng.uniform(*wavelengths)
        phase = rng.uniform(0, 2 * np.pi)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * z / lam + phase)
    return amplitude * out / 3.0


def _tint(rng: np.random.Generator, rgb: tuple[float, float, float], spread: float, randomize: bool
          ) -> np.ndarray:
    base = np.asarray(rgb, np.float32)
    if not randomize:
        return base
    return np.clip(base * rng.uniform(1 - spread, 1 + spread, 3).astype(np.float32), 0.02, 0.98)


def _with_patches(albedo: np.ndarray, config: SceneConfig, spacing: tuple[float, float]) -> np.ndarray:
    """``albedo`` with ``config.albedo_patches`` of other reflectance laid on it (a generator of their own, so a
    scene without them is the scene it always was)."""
    if config.albedo_patches <= 0:
        return albedo
    rng = np.random.default_rng([config.seed, 7919, 5])
    patches = reflectance_patches(rng, albedo.shape[:2], spacing, config.albedo_patches)
    return np.clip(albedo * patches, 0.0, 1.0).astype(np.float32)


def _material(rng: np.random.Generator, config: SceneConfig, specular: float, shininess: float) -> dict:
    r = config.randomize
    return {
        "specular": config.specular * specular * (rng.uniform(0.5, 1.6) if r else 1.0),
        "shininess": shininess * (rng.uniform(0.6, 1.6) if r else 1.0),
        "exposure": float(rng.uniform(0.75, 1.0)) if r else 0.85,
        "ambient": float(rng.uniform(0.0, 0.03)) if r else 0.01,
        "gamma": float(rng.uniform(2.0, 2.4)) if r else 2.2,
        "saturation": float(rng.uniform(1.2, 1.8)) if r else 1.5,
    }


def _tube_scene(config: SceneConfig, rng: np.random.Generator, radius: float, bend: float,
                bend_wavelengths: tuple[float, float], folds: dict, relief_mm: float, relief_wavelength: float,
                base_rgb: tuple, vessel_rgb: tuple, speckle: float, cap_at: float | None,
                specular: float, shininess: float) -> Scene:
    """A lumen scene: centreline wiggle, radius profile, folds table, relief and albedo."""
    r = config.randomize
    z = Z_START + _DZ * np.arange(int((config.length_mm - Z_START) / _DZ) + 2)
    theta = -np.pi + 2 * np.pi * np.arange(_NTHETA) / _NTHETA
    a = _smooth_path(rng, z, bend, bend_wavelengths)
    b = _smooth_path(rng, z, bend, bend_wavelengths)
    a -= a[np.searchsorted(z, 0.0)]
    b -= b[np.searchsorted(z, 0.0)]
    rad = radius * (1.0 + 0.12 * _smooth_path(rng, z, 1.0, (60.0, 160.0)))
    if cap_at is not None:  # close the far end smoothly (bounded slope: cosine profile, never a pole)
        s = np.clip((z - cap_at) / (0.9 * radius), 0.0, 1.0)
        rad = rad * np.cos(0.5 * np.pi * s)
    # fold table: ridges across the lumen (haustra, plicae) or along it (rugae); negative = into the lumen
    relief = np.zeros((len(z), _NTHETA))
    period = folds["period"]
    if folds.get("kind") == "ring":
        jitter = _smooth_path(rng, z, folds["period"] * 0.25, (80.0, 200.0))
        phase = (z + jitter)[:, None] / period + 0.04 * np.sin(folds["lobes"] * theta[None, :]
                                                                + rng.uniform(0, 2 * np.pi))
        ridge = np.exp(-((phase - np.round(phase)) * period / folds["width"]) ** 2)
        lobes = 0.55 + 0.45 * np.cos(folds["lobes"] * theta + rng.uniform(0, 2 * np.pi))[None, :]
        height = folds["height"] * (1.0 + 0.25 * _smooth_path(rng, z, 1.0, (40.0, 90.0)))[:, None]
        relief -= height * ridge * lobes
        relief -= folds.get("triangular", 0.0) * radius * np.cos(folds["lobes"] * theta)[None, :]
    elif folds.get("kind") == "rugae":
        # meandering longitudinal ridges: the angular phase drifts with z and with 2-D noise, so ridges wander,
        # merge and vary in height like gastric rugae
        spacing = (_DZ, 2 * np.pi * radius / _NTHETA)
        drift = band_noise(rng, (len(z), _NTHETA), spacing, 35.0)
        phase = folds["count"] * theta[None, :] + 0.9 * drift + _smooth_path(rng, z, 1.5, (60.0, 150.0))[:, None]
        amp = np.clip(0.7 + 0.5 * band_noise(rng, (len(z), _NTHETA), spacing, 40.0), 0.0, 1.3)
        relief -= folds["height"] * amp * np.clip(np.cos(phase), 0.0, None) ** 2
    relief_noise = band_noise(rng, relief.shape, (_DZ, 2 * np.pi * radius / _NTHETA), relief_wavelength)
    relief += relief_mm * relief_noise
    # polyps come from a generator of their own, so a scene without them is the scene it always was
    polyps = draw_polyps(np.random.default_rng([config.seed, 7919, 3]), config.polyps, (0.0, float(z[-1])),
                         radius) if config.polyps > 0 else []
    if polyps:
        relief -= polyp_tables(polyps, z, _NTHETA, radius)
        relief = np.maximum(relief, -0.7 * rad[:, None])  # a dome on a fold still leaves the lumen open
    relief *= (rad / radius)[:, None]  # folds shrink with a closing cap so the wall never crosses the axis
    axis = np.stack([a, b, rad], axis=1)
    envelope = slope_envelope(np.maximum(rad + relief.min(axis=1), 0.0), _DZ) - 0.05
    surface = TubeSurface(z0=float(z[0]), dz=_DZ, axis=axis, relief=relief,
                          lipschitz=tube_lipschitz(axis, relief, _DZ), envelope=envelope,
                          envelope_lipschitz=envelope_lipschitz(axis, _DZ))
    scale = float(rng.uniform(0.7, 1.5)) if r else 1.0
    circumference = 2 * np.pi * radius
    cols = int(round(circumference / _TEX_STEP))
    rows = int((z[-1] - z[0]) / _TEX_STEP) + 2
    albedo = mucosa_albedo(rng, (rows, cols), (_TEX_STEP, circumference / cols),
                           _tint(rng, base_rgb, 0.15, r), _tint(rng, vessel_rgb, 0.2, r), scale=scale,
                           vessels=float(rng.uniform(0.4, 1.0)) if r else 0.8, speckle=speckle)
    if polyps:
        albedo = tint_albedo(albedo, polyps, float(z[0]), _TEX_STEP, radius)
    albedo = _with_patches(albedo, config, (_TEX_STEP, circumference / cols))
    extra = {"polyps": [dataclasses.asdict(p) for p in polyps]} if polyps else {}
    return Scene(organ=config.organ, surface=surface, albedo=albedo, tex_origin=(float(z[0]), -np.pi),
                 tex_step=(_TEX_STEP, 2 * np.pi / cols), tex_wrap=True,
                 material=_material(rng, config, specular, shininess),
                 params={"radius_mm": radius, "bend_mm": bend, "texture_scale": scale, "cap_at": cap_at, **folds,
                         **extra})


def _surgical_field(config: SceneConfig, rng: np.random.Generator) -> Scene:
    """Open abdomen / operating field: undulating tissue with cavities and bulges, plus an instrument shaft."""
    r = config.randomize
    step = 0.5
    half = 230.0
    n = int(2 * half / step) + 1
    shape = (n, n)
    height = 6.0 * fractal_noise(rng, shape, (step, step), 60.0, octaves=3)
    yy, xx = np.meshgrid(np.linspace(-half, half, n), np.linspace(-half, half, n), indexing="ij")
    for _ in range(int(rng.integers(2, 5))):  # cavities (deeper) and organ bulges (nearer)
        cx, cy = rng.uniform(-70, 70, 2)
        sigma = rng.uniform(12, 30)
        depth = rng.choice([-1.0, 1.0]) * rng.uniform(8, 22)
        height += depth * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    height += 0.08 * band_noise(rng, shape, (step, step), 2.0)
    surface = HeightfieldSurface(x0=-half, y0=-half, step=step, height=height,
                                 lipschitz=heightfield_lipschitz(height, step))
    # tissue colours: mix of pink serosa, dark red liver-like parenchyma and yellow fat, split by smooth noise
    pink = mucosa_albedo(rng, shape, (step, step), _tint(rng, (0.85, 0.28, 0.22), 0.15, r),
                         _tint(rng, (0.45, 0.03, 0.05), 0.2, r), scale=float(rng.uniform(0.8, 1.4)) if r else 1.0)
    fat = np.asarray(_tint(rng, (0.85, 0.65, 0.30), 0.1, r))[None, None, :] * (
        1.0 + 0.08 * band_noise(rng, shape, (step, step), 3.0))[..., None]
    dark = np.asarray(_tint(rng, (0.45, 0.07, 0.05), 0.15, r))[None, None, :] * (
        1.0 + 0.1 * band_noise(rng, shape, (step, step), 6.0))[..., None]
    m1 = np.clip(-0.3 + 1.2 * band_noise(rng, shape, (step, step), 50.0), 0, 1)[..., None]
    m2 = np.clip(-0.3 + 1.2 * band_noise(rng, shape, (step, step), 70.0), 0, 1)[..., None]
    albedo = _with_patches((pink * (1 - m1) + fat * m1) * (1 - m2) + dark * m2, config, (step, step))
    # instrument: enters from a random side above the tissue, tip a few cm in front of the tissue
    ang = rng.uniform(0, 2 * np.pi)
    tip = np.array([rng.uniform(-25, 25), rng.uniform(-25, 25), rng.uniform(-45, -15)])
    direction = np.array([np.cos(ang), np.sin(ang), -rng.uniform(0.3, 0.9)])
    instrument = Instrument(tip=tip, direction=direction / np.linalg.norm(direction),
                            radius=float(rng.uniform(2.5, 5.0)), length=400.0)
    return Scene(organ=config.organ, surface=surface, albedo=albedo.astype(np.float32), tex_origin=(-half, -half),
                 tex_step=(step, step), tex_wrap=False, material=_material(rng, config, 1.0, 40.0),
                 instrument=instrument, params={"field_half_mm": half})


def build_scene(config: SceneConfig) -> Scene:
    """The scene of ``config.organ`` drawn from ``config.seed`` (same seed -> identical scene)."""
    rng = np.random.default_rng([config.seed, 7919])
    r = config.randomize
    u = (lambda lo, hi: float(rng.uniform(lo, hi))) if r else (lambda lo, hi: 0.5 * (lo + hi))
    if config.organ == "colon":
        radius = u(18.0, 28.0)
        folds = {"kind": "ring", "period": u(20.0, 34.0), "width": u(3.0, 5.0), "height": u(0.22, 0.4) * radius,
                 "lobes": 3, "triangular": u(0.03, 0.09)}
        return _tube_scene(config, rng, radius, bend=u(12.0, 35.0), bend_wavelengths=(90.0, 260.0), folds=folds,
                           relief_mm=0.08, relief_wavelength=4.0, base_rgb=(0.90, 0.26, 0.17),
                           vessel_rgb=(0.45, 0.03, 0.05), speckle=0.0, cap_at=None, specular=1.5,
                           shininess=50.0)
    if config.organ == "small_intestine":
        radius = u(10.0, 14.0)
        folds = {"kind": "ring", "period": u(5.0, 8.0), "width": u(1.2, 1.8), "height": u(0.12, 0.22) * radius,
                 "lobes": 2, "triangular": 0.0}
        return _tube_scene(config, rng, radius, bend=u(15.0, 30.0), bend_wavelengths=(60.0, 140.0), folds=folds,
                           relief_mm=0.1, relief_wavelength=2.0, base_rgb=(0.90, 0.36, 0.24),
                           vessel_rgb=(0.55, 0.06, 0.06), speckle=1.0, cap_at=None, specular=1.2,
                           shininess=30.0)
    if config.organ == "stomach":
        radius = u(40.0, 60.0)
        folds = {"kind": "rugae", "period": 0.0, "count": int(rng.integers(9, 16)) if r else 12,
                 "height": u(3.0, 7.0)}
        return _tube_scene(config, rng, radius, bend=u(20.0, 45.0), bend_wavelengths=(200.0, 400.0), folds=folds,
                           relief_mm=0.2, relief_wavelength=5.0, base_rgb=(0.90, 0.24, 0.14),
                           vessel_rgb=(0.50, 0.04, 0.04), speckle=0.0, cap_at=u(140.0, 200.0), specular=1.5,
                           shininess=40.0)
    return _surgical_field(config, rng)
