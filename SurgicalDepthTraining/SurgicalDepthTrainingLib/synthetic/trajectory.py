"""Smooth camera trajectories: along a lumen's centreline looking ahead, or above an open surgical field.

Poses are 4×4 camera-to-world float64 matrices (columns: camera x right, y down, z forward, position; mm).
"""
from __future__ import annotations

import numpy as np

from .scenes import HeightfieldSurface, Scene, TubeSurface


def look_at(position: np.ndarray, forward: np.ndarray, down_hint: np.ndarray) -> np.ndarray:
    """Camera-to-world pose at ``position`` looking along ``forward`` with image y as close to ``down_hint``.

    Returns float64 [4, 4]; columns 0-2 are the camera axes (x = y × z, right-handed), column 3 the position.
    """
    z = np.asarray(forward, np.float64)
    z = z / np.linalg.norm(z)
    x = np.cross(down_hint, z)
    norm = np.linalg.norm(x)
    if norm < 1e-9:
        raise ValueError(f"look_at: down_hint {down_hint!r} is parallel to forward {forward!r}")
    x /= norm
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, position
    return pose


def _wobble(rng: np.random.Generator, n: int, periods: tuple[float, float], count: int = 3) -> np.ndarray:
    """Smooth zero-mean signal of ``n`` samples with amplitude about 1 (sum of sinusoids of random period)."""
    k = np.arange(n, dtype=np.float64)
    out = np.zeros(n)
    for _ in range(count):
        out += np.sin(2 * np.pi * k / rng.uniform(*periods) + rng.uniform(0, 2 * np.pi))
    return out / np.sqrt(count / 2.0)


def _rolled_poses(position: np.ndarray, forward: np.ndarray, roll: np.ndarray, hint_z: float) -> np.ndarray:
    """Poses at ``position`` (float [N, 3]) looking along ``forward`` (float [N, 3]), image y as close as possible
    to ``(cos roll, sin roll, hint_z)`` (``roll``: float [N] radians); float64 [N, 4, 4]."""
    poses = np.empty((len(position), 4, 4))
    for i in range(len(position)):
        poses[i] = look_at(position[i], forward[i], np.array([np.cos(roll[i]), np.sin(roll[i]), hint_z]))
    return poses


def tube_trajectory(scene: Scene, n_frames: int, speed_mm: float, rng: np.random.Generator,
                    z_limit: float) -> np.ndarray:
    """Camera path along the lumen centreline: off-centre wobble, look-ahead along the tangent, slow roll.

    Args:
        scene: a scene with a ``TubeSurface``.
        n_frames: number of poses.
        speed_mm: advance along z per frame (reduced if the path would pass ``z_limit``).
        z_limit: the camera stays at z <= this.
    Returns:
        float64 [n_frames, 4, 4] camera-to-world poses.
    """
    surface = scene.surface
    if not isinstance(surface, TubeSurface):
        raise TypeError(f"tube_trajectory needs a TubeSurface, got {type(surface).__name__}")
    radius = float(scene.params["radius_mm"])
    z0 = rng.uniform(0.0, 10.0)
    speed = min(speed_mm, max(z_limit - z0, 0.0) / max(n_frames - 1, 1))
    z = z0 + speed * np.arange(n_frames)
    centre = surface.centreline(z)
    wide = scene.organ == "stomach"
    off = (0.35 if wide else 0.2) * radius
    position = centre.copy()
    position[:, 0] += off * np.tanh(_wobble(rng, n_frames, (60.0, 180.0)))
    position[:, 1] += off * np.tanh(_wobble(rng, n_frames, (60.0, 180.0)))
    look = 2.5 * radius if not wide else 1.5 * radius
    target = surface.centreline(z + look)
    forward = target - position
    swing = 0.45 if wide else 0.15  # how far the endoscope tip turns towards the walls, radians
    yaw = swing * _wobble(rng, n_frames, (50.0, 150.0))
    pitch = swing * _wobble(rng, n_frames, (50.0, 150.0))
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    forward[:, 0] += np.tan(yaw)
    forward[:, 1] += np.tan(pitch)
    roll = rng.uniform(0, 2 * np.pi) + 0.3 * _wobble(rng, n_frames, (60.0, 150.0))
    return _rolled_poses(position, forward, roll, 0.0)


def field_trajectory(scene: Scene, n_frames: int, speed_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Laparoscope above an open field: drifts at most 120 mm in total, 60-110 mm above the tissue, tilted."""
    surface = scene.surface
    if not isinstance(surface, HeightfieldSurface):
        raise TypeError(f"field_trajectory needs a HeightfieldSurface, got {type(surface).__name__}")
    height = rng.uniform(60.0, 110.0)
    direction = rng.uniform(0, 2 * np.pi)
    k = np.arange(n_frames)
    drift = min(speed_mm, 120.0 / max(n_frames - 1, 1)) * k  # stay over the tabulated field
    start = rng.uniform(-20, 20, 2)
    x = start[0] + np.cos(direction) * drift + 6.0 * _wobble(rng, n_frames, (60.0, 180.0))
    y = start[1] + np.sin(direction) * drift + 6.0 * _wobble(rng, n_frames, (60.0, 180.0))
    z = -height + 10.0 * _wobble(rng, n_frames, (80.0, 240.0))
    tilt = rng.uniform(0.0, 0.3)
    tilt_dir = rng.uniform(0, 2 * np.pi)
    roll = rng.uniform(0, 2 * np.pi) + 0.15 * _wobble(rng, n_frames, (60.0, 150.0))
    positions = np.stack([x, y, z], axis=1)
    tool = scene.instrument
    if tool is not None:  # keep the laparoscope out of the instrument shaft: slide the path sideways
        side = np.cross(tool.direction, [0.0, 0.0, 1.0])
        side /= max(np.linalg.norm(side), 1e-9)
        away = 5.0 if (positions.mean(axis=0) - tool.tip) @ side >= 0 else -5.0
        for _ in range(100):
            if tool.distance(positions).min() > 10.0:
                break
            positions += away * side
    poses = np.empty((n_frames, 4, 4))
    for i in range(n_frames):
        forward = np.array([np.sin(tilt) * np.cos(tilt_dir) + 0.05 * np.sin(0.1 * i),
                            np.sin(tilt) * np.sin(tilt_dir), np.cos(tilt)])
        hint = np.array([np.cos(roll[i]), np.sin(roll[i]), 0.0])
        poses[i] = look_at(positions[i], forward, hint)
    return poses


def close_up_trajectory(scene: Scene, n_frames: int, rng: np.random.Generator, z_limit: float
                        ) -> np.ndarray | None:
    """The endoscope steered to one polyp (drawn with odds ∝ its base area), as when it is found and inspected: the
    tip approaches along the lumen from 25-45 mm before the polyp to 8-18 mm before it, held off-centre on the far
    side (up to 30 % of the radius), looking at the polyp's top (±4° wobble), with a slow roll.

    Args:
        scene: a tube scene; its ``params["polyps"]`` (``synthetic.polyps.Polyp`` fields) are the candidates.
        z_limit: the polyp's camera path stays at z <= this.
    Returns:
        float64 [n_frames, 4, 4] camera-to-world poses, or None when no polyp lies between z = 50 mm and
        ``z_limit`` (the caller then uses :func:`tube_trajectory`).
    """
    surface = scene.surface
    if not isinstance(surface, TubeSurface):
        raise TypeError(f"close_up_trajectory needs a TubeSurface, got {type(surface).__name__}")
    candidates = [p for p in scene.params.get("polyps", []) if 50.0 <= p["z_mm"] <= z_limit]
    if not candidates:
        return None
    weight = np.array([p["base_mm"] ** 2 for p in candidates])  # the larger polyps are the ones inspected
    polyp = candidates[int(rng.choice(len(candidates), p=weight / weight.sum()))]
    zp, theta = polyp["z_mm"], polyp["theta"]
    outward = np.array([np.cos(theta), np.sin(theta), 0.0])
    top = surface.centreline(np.array([zp]))[0] + (float(surface.radius(np.array([zp]))[0])
                                                  - polyp["height_mm"]) * outward
    start, stop = rng.uniform(25.0, 45.0), rng.uniform(8.0, 18.0)
    z = zp - np.linspace(start, stop, n_frames)
    position = surface.centreline(z) - (rng.uniform(0.0, 0.3) * surface.radius(z))[:, None] * outward
    forward = top - position
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    forward[:, :2] += np.tan(np.deg2rad(4.0)) * np.stack([_wobble(rng, n_frames, (20.0, 60.0)),
                                                          _wobble(rng, n_frames, (20.0, 60.0))], axis=1)
    roll = rng.uniform(0, 2 * np.pi) + 0.2 * _wobble(rng, n_frames, (40.0, 120.0))
    return _rolled_poses(position, forward, roll, 0.3)
