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

from .raycast import rotate
from .textures import channel_planes, sample_planes


def _lerp_rows(table: np.ndarray, start: float, step: float, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``table[K, C]`` sampled at ``start + k * step`` (clamped); returns [N, C]."""
    idx = np.clip((x - start) / step, 0.0, table.shape[0] - 1.000001)
    i0 = idx.astype(np.int64)
    f = (idx - i0)[:, None]
    return table[i0] * (1.0 - f) + table[i0 + 1] * f


def _row_index(x: np.ndarray, start: float, step: float, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i0`` (int64 [N]) and fraction (float64 [N]) of ``x: float64 [N]`` on the grid ``start + k * step``,
    clamped to the rows 0 .. ``rows - 1``."""
    idx = x - start
    idx *= 1.0 / step
    np.maximum(idx, 0.0, out=idx)
    np.minimum(idx, rows - 1.001, out=idx)
    i0 = idx.astype(np.int64)
    idx -= i0
    return i0, idx


def _points64(p: np.ndarray) -> np.ndarray:
    """``p`` as float64 (the fields evaluate in float64; float32 marching points are converted exactly)."""
    return np.asarray(p, np.float64)


def _bilerp_packed(pairs: np.ndarray, flat: np.ndarray, stride: int, f_col: np.ndarray,
                   f_row: np.ndarray) -> np.ndarray:
    """Bilinear lookup in a table packed as ``value + 1j * (next column's value - value)`` (complex [R * stride]).

    Args:
        flat: int64 [N] flat index of the cell's top-left entry (overwritten); stride: entries per table row;
        f_col, f_row: float64 [N] fractions along the columns and rows.
    Returns:
        float64 [N] interpolated values.
    """
    near = pairs.take(flat)  # row i0, columns (j0, j0 + 1)
    flat += stride
    far = pairs.take(flat)  # row i0 + 1
    top = near.real + near.imag * f_col
    out = far.real + far.imag * f_col
    out -= top
    out *= f_row
    out += top
    return out


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
        # lookup tables for few, cache-friendly 1-D gathers (``take``): per row, value + 1j * slope of a(z), b(z),
        # E(z) ([3, K] complex); the wall radius W = R + D as pairs W[i, j] + 1j * (W[i, j + 1] - W[i, j]) with the
        # periodic column M = column 0 appended ([K, M + 1] complex), so the bilinear W is two gathers (R is linear
        # in z within a row interval, so folding it into the bilinear table leaves the surface unchanged)
        k, m = self.relief.shape
        if len(self.axis) != k or self.envelope.shape != (k,):
            raise ValueError(f"TubeSurface tables disagree: axis {self.axis.shape}, relief {self.relief.shape}, "
                             f"envelope {self.envelope.shape}")
        ext = np.concatenate([self.axis[:, :2], self.envelope[:, None]], axis=1).astype(np.float64)
        slope = np.diff(ext, axis=0, append=ext[-1:])
        wall = np.asarray(self.axis[:, 2:3], np.float64) + np.asarray(self.relief, np.float64)
        wall = np.concatenate([wall, wall[:, :2]], axis=1)
        object.__setattr__(self, "_lines", np.ascontiguousarray((ext + 1j * slope).T))
        object.__setattr__(self, "_wall", (wall[:, :-1] + 1j * np.diff(wall, axis=1)).reshape(-1))

    def _offsets(self, p: np.ndarray, line: int = -1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Cross-section offsets ``dx = x - a(z)``, ``dy = y - b(z)``, the z row index / fraction and (``line=2``)
        the envelope ``E(z)``; ``p``: float64 [N, 3]."""
        i0, fz = _row_index(p[:, 2], self.z0, self.dz, len(self.axis))
        a, b = self._lines[0].take(i0), self._lines[1].take(i0)
        dx = p[:, 0] - (a.real + a.imag * fz)
        dy = p[:, 1] - (b.real + b.imag * fz)
        extra = None
        if line >= 0:
            e = self._lines[line].take(i0)
            extra = e.real + e.imag * fz
        return dx, dy, i0, fz, extra

    def field(self, p: np.ndarray) -> np.ndarray:
        """``F(p)`` for points ``p: float [N, 3]`` mm; negative inside the lumen. Returns float64 [N]."""
        p = _points64(p)
        dx, dy, i0, fz, _ = self._offsets(p)
        m = self.relief.shape[1]
        # the angle only indexes the relief table: float32 atan2 (5x faster) moves D by < 1e-6 mm; v in [0, M]
        theta = np.arctan2(dy.astype(np.float32), dx.astype(np.float32))
        v = np.add(theta, np.pi, dtype=np.float64)
        v *= m / (2 * np.pi)
        j0 = v.astype(np.int64)
        v -= j0
        flat = i0 * (m + 1)
        flat += j0
        wall = _bilerp_packed(self._wall, flat, m + 1, v, fz)
        out = dx * dx
        out += dy * dy
        np.sqrt(out, out=out)
        out -= wall
        return out

    def bound(self, p: np.ndarray) -> np.ndarray:
        """Upper bound ``ρ - E(z) >= F(p)`` (so ``bound < 0`` means free space), float64 [N]."""
        dx, dy, _, _, env = self._offsets(_points64(p), line=2)
        out = dx * dx
        out += dy * dy
        np.sqrt(out, out=out)
        out -= env
        return out

    def surface_coords(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texture coordinates (z in mm, θ in radians) of points ``p: float [N, 3]``; float64 [N] each."""
        p = _points64(p)
        dx, dy, _, _, _ = self._offsets(p)
        return p[:, 2], np.arctan2(dy.astype(np.float32), dx.astype(np.float32)).astype(np.float64)

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
        # pairs H[i, j] + 1j * (H[i, j + 1] - H[i, j]): the bilinear H is two 1-D gathers (``take``)
        height = np.asarray(self.height, np.float64)
        pad = np.concatenate([height, height[:, -1:]], axis=1)
        object.__setattr__(self, "_pairs", (height + 1j * np.diff(pad, axis=1)).reshape(-1))
        object.__setattr__(self, "_nearest", float(self.height.min()) - 0.05)

    def bound(self, p: np.ndarray) -> np.ndarray:
        """Upper bound ``z - min H >= F(p)``: the plane just in front of the nearest tissue, float [N]."""
        return p[:, 2] - p.dtype.type(self._nearest)

    def field(self, p: np.ndarray) -> np.ndarray:
        """``F(p) = z - H(x, y)`` for ``p: float [N, 3]`` mm. Returns float64 [N]."""
        p = _points64(p)
        ny, nx = self.height.shape
        i0, fy = _row_index(p[:, 1], self.y0, self.step, ny)
        j0, fx = _row_index(p[:, 0], self.x0, self.step, nx)
        flat = i0 * nx
        flat += j0
        return p[:, 2] - _bilerp_packed(self._pairs, flat, nx, fx, fy)

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
        # ray components in the instrument frame (shaft axis u, e1, e2 across it): one 3x3 transform of all rays
        u = np.asarray(self.direction, np.float64)
        e1 = np.cross(u, (1.0, 0.0, 0.0) if abs(u[0]) < 0.9 else (0.0, 1.0, 0.0))
        e1 /= np.linalg.norm(e1)
        frame = np.stack([u, e1, np.cross(u, e1)])
        comps = rotate(frame, dirs)
        du, d1, d2 = comps[:, 0], comps[:, 1], comps[:, 2]
        wu, w1, w2 = frame @ (np.asarray(origin, np.float64) - self.tip)
        r2 = self.radius ** 2
        # shaft: |w_perp + t d_perp| = r, nearer root, within 0 <= s <= length along the axis
        a = d1 * d1 + d2 * d2
        b = 2.0 * (d1 * w1 + d2 * w2)
        disc = b * b - 4 * a * (w1 * w1 + w2 * w2 - r2)
        t_cyl = np.full(len(dirs), np.inf)
        ok = np.flatnonzero((disc >= 0) & (a > 1e-12))
        t = (-b[ok] - np.sqrt(disc[ok])) / (2 * a[ok])
        s = wu + t * du[ok]
        good = (t > 0) & (s >= 0) & (s <= self.length)
        t_cyl[ok[good]] = t[good]
        # hemispherical tip: sphere of the same radius at the tip centre, the half with s <= 0
        wd = du * wu + d1 * w1 + d2 * w2
        disc_s = wd * wd - (wu * wu + w1 * w1 + w2 * w2 - r2)
        t_sph = np.full(len(dirs), np.inf)
        ok = np.flatnonzero(disc_s >= 0)
        t = -wd[ok] - np.sqrt(disc_s[ok])
        s = wu + t * du[ok]
        good = (t > 0) & (s <= 0)
        t_sph[ok[good]] = t[good]
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "_albedo_planes", channel_planes(np.asarray(self.albedo, np.float32)))

    def tissue_albedo_planes(self, p: np.ndarray) -> list[np.ndarray]:
        """Albedo of tissue points ``p: float [N, 3]`` as R, G, B float32 [N] arrays (linear RGB)."""
        s, w = self.surface.surface_coords(p)
        rows, cols = self.albedo.shape[:2]
        return sample_planes(self._albedo_planes, rows, cols, (s - self.tex_origin[0]) / self.tex_step[0],
                             (w - self.tex_origin[1]) / self.tex_step[1], wrap_v=self.tex_wrap)

    def tissue_albedo(self, p: np.ndarray) -> np.ndarray:
        """Albedo (linear RGB, float32 [N, 3]) of tissue points ``p: float [N, 3]``."""
        return np.stack(self.tissue_albedo_planes(p), axis=-1)
