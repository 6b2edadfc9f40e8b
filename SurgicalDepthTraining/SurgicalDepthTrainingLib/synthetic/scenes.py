"""Analytic / implicit surfaces of the synthetic organs, in world millimetres.

Each tissue surface is the zero set of a field ``F(p)`` (negative in the free space where the camera is, positive
inside tissue) with a known Lipschitz bound, so sphere tracing (Hart 1996) never steps through it:

- ``TubeSurface``: a lumen around the centreline ``c(z) = (a(z), b(z), z)``;
  ``F = |(x - a(z), y - b(z))| - R(z) - D(z, θ)`` with ``θ = atan2(y - b, x - a)``.
  ``a, b, R`` are sampled on a z grid and linearly interpolated, ``D`` (folds, rugae, mucosal relief) is a
  periodic table interpolated bilinearly; the interpolants *are* the surface, so depth is exact for it.
- ``HeightfieldSurface``: an open tissue surface ``z = H(x, y)`` (world z points away from the camera side);
  ``F = z - H(x, y)``, ``H`` bilinear on a grid.
- ``Instrument``: a rigid shaft (cylinder with a hemispherical tip) intersected in closed form.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .textures import sample_bilinear


def _lerp_rows(table: np.ndarray, start: float, step: float, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``table[K, C]`` sampled at ``start + k * step`` (clamped); returns [N, C]."""
    idx = np.clip((x - start) / step, 0.0, table.shape[0] - 1.000001)
    i0 = idx.astype(np.int64)
    f = (idx - i0)[:, None]
    return table[i0] * (1.0 - f) + table[i0 + 1] * f


def _row_index(x: np.ndarray, start: float, step: float, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i0`` (int64 [N]) and fraction (float [N]) of ``x`` on the grid ``start + k * step``, clamped."""
    idx = np.clip((x - x.dtype.type(start)) * x.dtype.type(1.0 / step), 0.0, rows - 1.001)
    i0 = idx.astype(np.int64)
    return i0, idx - i0


@dataclass(frozen=True, eq=False)
class TubeSurface:
    """Lumen wall around a centreline running along world +z.

    Attributes:
        z0, dz: z of row 0 and row spacing of the tables, mm.
        axis: float64 [K, 3] columns ``a(z), b(z), R(z)`` in mm.
        relief: float64 [K, M] ``D(z, θ)`` in mm (positive = outward), column j at ``θ = -π + 2π j / M``.
        lipschitz: bound on ``|∇F|`` used for sphere-tracing steps.
        envelope: float64 [K] a radius ``E(z) <= R(z) + min_θ D(z, θ)`` with slope <= 1; the cheap field
            ``ρ - E(z) >= F`` (no angle, no 2-D lookup) is used to cross the open lumen quickly.
        envelope_lipschitz: bound on the gradient of ``ρ - E(z)``.
    """

    z0: float
    dz: float
    axis: np.ndarray
    relief: np.ndarray
    lipschitz: float
    envelope: np.ndarray
    envelope_lipschitz: float

    def __post_init__(self) -> None:
        # lookup tables laid out for few gathers: value and slope per row; relief padded with its first column
        # so the angular neighbour of the last column needs no wrap-around
        k = len(self.axis)
        ext = np.concatenate([self.axis, self.envelope[:, None]], axis=1)
        slope = np.diff(ext, axis=0, append=ext[-1:])
        padded = np.concatenate([self.relief, self.relief[:, :1]], axis=1)
        if self.relief.shape[0] != k or self.envelope.shape != (k,):
            raise ValueError(f"TubeSurface tables disagree: axis {self.axis.shape}, relief {self.relief.shape}, "
                             f"envelope {self.envelope.shape}")
        rows = np.ascontiguousarray(np.concatenate([ext, slope], axis=1))
        flat = np.ascontiguousarray(padded).reshape(-1)
        # float64 tables for exact refinement, float32 copies for fast marching
        object.__setattr__(self, "_tables", {np.dtype(np.float64): (rows, flat),
                                             np.dtype(np.float32): (rows.astype(np.float32),
                                                                    flat.astype(np.float32))})

    def _local(self, p: np.ndarray, use_envelope: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cross-section offsets ``dx, dy``, radius ``R`` (or envelope ``E``) and the z row index / fraction."""
        i0, fz = _row_index(p[:, 2], self.z0, self.dz, len(self.axis))
        rows = self._tables[p.dtype][0][i0]
        a = rows[:, 0] + rows[:, 4] * fz
        b = rows[:, 1] + rows[:, 5] * fz
        c = 3 if use_envelope else 2
        r = rows[:, c] + rows[:, c + 4] * fz
        return p[:, 0] - a, p[:, 1] - b, r, i0, fz

    def field(self, p: np.ndarray) -> np.ndarray:
        """``F(p)`` for points ``p: float [N, 3]`` mm; negative inside the lumen. Returns float [N]."""
        dx, dy, radius, i0, fz = self._local(p)
        m = self.relief.shape[1]
        # the angle only indexes the relief table: float32 atan2 (5x faster) moves D by < 1e-6 mm
        theta = np.arctan2(dy.astype(np.float32), dx.astype(np.float32)).astype(dx.dtype)
        v = (theta + dx.dtype.type(np.pi)) * dx.dtype.type(m / (2 * np.pi))
        j0 = np.minimum(v.astype(np.int64), m - 1)
        fv = v - j0
        flat = i0 * (m + 1) + j0
        tab = self._tables[p.dtype][1]
        d00, d01 = tab[flat], tab[flat + 1]
        d10, d11 = tab[flat + (m + 1)], tab[flat + (m + 2)]
        top = d00 + (d01 - d00) * fv
        d = top + (d10 + (d11 - d10) * fv - top) * fz
        return np.sqrt(dx * dx + dy * dy) - radius - d

    def bound(self, p: np.ndarray) -> np.ndarray:
        """Upper bound ``ρ - E(z) >= F(p)`` (so ``bound < 0`` means free space), float [N]."""
        dx, dy, env, _, _ = self._local(p, use_envelope=True)
        return np.sqrt(dx * dx + dy * dy) - env

    def surface_coords(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texture coordinates (z in mm, θ in radians) of points ``p: float [N, 3]``."""
        dx, dy, _, _, _ = self._local(p)
        return p[:, 2], np.arctan2(dy.astype(np.float32), dx.astype(np.float32)).astype(dx.dtype)

    def centreline(self, z: np.ndarray) -> np.ndarray:
        """Centreline points ``c(z)``: float64 [N, 3] mm."""
        z = np.asarray(z, np.float64).reshape(-1)
        ab = _lerp_rows(self.axis, self.z0, self.dz, z)
        return np.stack([ab[:, 0], ab[:, 1], z], axis=1)

    def radius(self, z: np.ndarray) -> np.ndarray:
        """Base radius ``R(z)`` (without relief), mm."""
        z = np.asarray(z, np.float64).reshape(-1)
        return _lerp_rows(self.axis, self.z0, self.dz, z)[:, 2]


def tube_lipschitz(axis: np.ndarray, relief: np.ndarray, dz: float, safety: float = 1.25) -> float:
    """A bound on ``|∇F|`` of ``TubeSurface`` from finite differences of its (piecewise-linear) tables.

    In the cross-section frame ``(ξ, η) = (x - a, y - b)``, ``∇_ξη F = e_ρ - (D_θ / ρ) e_θ`` (orthogonal parts) and
    ``∂F/∂z = -∇_ξη F · (a', b') - R' - D_z``, so per table cell
    ``|∇F|² <= 1 + (D_θ/ρ)² + (sqrt(1 + (D_θ/ρ)²) |(a', b')| + |R'| + |D_z|)²`` with ``ρ ≈ R + D`` at the wall.
    """
    da = np.abs(np.diff(axis, axis=0)) / dz                     # [K-1, 3]
    dzr = np.abs(np.diff(relief, axis=0)) / dz                  # [K-1, M]
    dtheta = 2 * np.pi / relief.shape[1]
    dth = np.abs(np.diff(np.concatenate([relief, relief[:, :1]], axis=1), axis=1)) / dtheta  # [K, M]
    dth = np.maximum(dth, np.roll(dth, 1, axis=1))
    wall = np.maximum(axis[:, 2:3] + relief.min(axis=1, keepdims=True), 1.0)
    ang = dth / wall
    ang = np.maximum(ang[1:], ang[:-1])                         # [K-1, M]
    shift = np.hypot(da[:, 0], da[:, 1])[:, None]
    xy = np.sqrt(1.0 + ang ** 2)
    gz = xy * shift + da[:, 2:3] + dzr
    return float(safety * np.sqrt(xy ** 2 + gz ** 2).max())


def slope_envelope(values: np.ndarray, step: float, slope: float = 1.0) -> np.ndarray:
    """Largest function ``<= values`` whose slope is at most ``slope``: ``min_j values[j] + slope |i - j| step``.

    Two linear passes (forward and backward min-propagation). float64 [K] -> float64 [K].
    """
    out = np.array(values, np.float64)
    inc = slope * step
    for i in range(1, len(out)):
        out[i] = min(out[i], out[i - 1] + inc)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] + inc)
    return out


def envelope_lipschitz(axis: np.ndarray, dz: float, slope: float = 1.0, safety: float = 1.1) -> float:
    """Gradient bound of ``ρ - E(z)``: ``sqrt(1 + (|(a', b')| + slope)²)``."""
    da = np.abs(np.diff(axis[:, :2], axis=0)) / dz
    return float(safety * np.sqrt(1.0 + (np.hypot(da[:, 0], da[:, 1]).max() + slope) ** 2))


@dataclass(frozen=True, eq=False)
class HeightfieldSurface:
    """Open tissue surface ``z = H(x, y)``; the camera looks along +z from ``z < H``.

    Attributes:
        x0, y0, step: grid origin and spacing, mm.
        height: float64 [Ny, Nx] ``H`` in mm (row = y, column = x), clamped outside the grid.
        lipschitz: bound on ``|∇F|``.
    """

    x0: float
    y0: float
    step: float
    height: np.ndarray
    lipschitz: float
    envelope_lipschitz: float = 1.0

    def __post_init__(self) -> None:
        flat = np.ascontiguousarray(self.height, np.float64).reshape(-1)
        object.__setattr__(self, "_tables", {np.dtype(np.float64): flat, np.dtype(np.float32): flat.astype(np.float32)})
        object.__setattr__(self, "_nearest", float(self.height.min()) - 0.05)

    def bound(self, p: np.ndarray) -> np.ndarray:
        """Upper bound ``z - min H >= F(p)``: the plane just in front of the nearest tissue, float [N]."""
        return p[:, 2] - p.dtype.type(self._nearest)

    def field(self, p: np.ndarray) -> np.ndarray:
        """``F(p) = z - H(x, y)`` for ``p: float [N, 3]`` mm. Returns float [N]."""
        ny, nx = self.height.shape
        i0, fy = _row_index(p[:, 1], self.y0, self.step, ny)
        j0, fx = _row_index(p[:, 0], self.x0, self.step, nx)
        tab = self._tables[p.dtype]
        flat = i0 * nx + j0
        h00, h01, h10, h11 = tab[flat], tab[flat + 1], tab[flat + nx], tab[flat + nx + 1]
        top = h00 + (h01 - h00) * fx
        return p[:, 2] - (top + (h10 + (h11 - h10) * fx - top) * fy)

    def surface_coords(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texture coordinates (y, x) in mm."""
        return p[:, 1], p[:, 0]


def heightfield_lipschitz(height: np.ndarray, step: float, safety: float = 1.1) -> float:
    """``sqrt(1 + max|∇H|^2)`` with the gradient of the bilinear interpolant bounded by the cell differences."""
    gy = np.abs(np.diff(height, axis=0)).max() / step
    gx = np.abs(np.diff(height, axis=1)).max() / step
    return float(safety * np.sqrt(1.0 + gx ** 2 + gy ** 2))


@dataclass(frozen=True, eq=False)
class Instrument:
    """Rigid instrument shaft: cylinder of ``radius`` along unit ``direction`` from the tip centre ``tip``,
    ``length`` mm long, closed by a hemisphere at the tip. World mm."""

    tip: np.ndarray
    direction: np.ndarray
    radius: float
    length: float

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Smallest positive ray parameter of the hit, ``inf`` for a miss.

        Args:
            origin: float64 [3] ray origin (outside the instrument).
            dirs: float64 [N, 3] unit directions.
        Returns:
            float64 [N] ray length in mm.
        """
        u = self.direction
        w = origin - self.tip
        wu = w @ u
        du = dirs @ u
        dperp = dirs - du[:, None] * u
        wperp = w - wu * u
        a = np.einsum("ij,ij->i", dperp, dperp)
        b = 2.0 * (dperp @ wperp)
        c = wperp @ wperp - self.radius ** 2
        disc = b * b - 4 * a * c
        t_cyl = np.full(len(dirs), np.inf)
        ok = (disc >= 0) & (a > 1e-12)
        t = (-b[ok] - np.sqrt(disc[ok])) / (2 * a[ok])
        s = wu + t * du[ok]
        good = (t > 0) & (s >= 0) & (s <= self.length)
        t_cyl[np.flatnonzero(ok)[good]] = t[good]
        # hemispherical tip: sphere of the same radius at the tip centre, the half with s <= 0
        wd = dirs @ w
        disc_s = wd ** 2 - (w @ w - self.radius ** 2)
        t_sph = np.full(len(dirs), np.inf)
        ok = disc_s >= 0
        t = -wd[ok] - np.sqrt(disc_s[ok])
        s = wu + t * du[ok]
        good = (t > 0) & (s <= 0)
        t_sph[np.flatnonzero(ok)[good]] = t[good]
        return np.minimum(t_cyl, t_sph)

    def distance(self, p: np.ndarray) -> np.ndarray:
        """Signed distance of points ``p: float64 [N, 3]`` to the instrument surface (capsule side), mm."""
        w = p - self.tip
        s = w @ self.direction
        perp = np.linalg.norm(w - s[:, None] * self.direction, axis=1) - self.radius
        tip = np.linalg.norm(w, axis=1) - self.radius
        return np.where(s < 0, tip, perp)

    def axial(self, p: np.ndarray) -> np.ndarray:
        """Distance of the points' projections from the tip along the shaft, mm (for the material bands)."""
        return (p - self.tip) @ self.direction


@dataclass(frozen=True, eq=False)
class Scene:
    """One organ scene: tissue surface, optional instrument, albedo, material and the camera path.

    Attributes:
        organ: organ name.
        surface: ``TubeSurface`` or ``HeightfieldSurface``.
        albedo: float32 [U, V, 3] linear-RGB table over the surface coordinates.
        tex_origin, tex_step: coordinates of albedo row/column 0 and their spacing (units of ``surface_coords``).
        tex_wrap: the column axis is periodic (tube angle).
        material: shading parameters (``specular``, ``shininess``, ``light_power``, ``ambient``, ``exposure``).
        instrument: optional ``Instrument``.
        params: scalar parameters drawn for this scene (recorded for reproducibility).
    """

    organ: str
    surface: TubeSurface | HeightfieldSurface
    albedo: np.ndarray
    tex_origin: tuple[float, float]
    tex_step: tuple[float, float]
    tex_wrap: bool
    material: dict
    instrument: Instrument | None = None
    params: dict = field(default_factory=dict)

    def tissue_albedo(self, p: np.ndarray) -> np.ndarray:
        """Albedo (linear RGB, float32 [N, 3]) of tissue points ``p: float [N, 3]``."""
        s, w = self.surface.surface_coords(p)
        return sample_bilinear(self.albedo, (s - self.tex_origin[0]) / self.tex_step[0],
                               (w - self.tex_origin[1]) / self.tex_step[1], wrap_v=self.tex_wrap)
