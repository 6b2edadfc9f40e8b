"""Procedural noise and tissue albedo tables (pure functions of a seeded generator).

Noise is band-limited Gaussian noise made by filtering white noise in the Fourier domain, so every table is
periodic in both axes (a tube's angular axis wraps without a seam). Vessels are the zero crossings of such noise
("ridged noise", Musgrave 1994: ``1 - |n|``), which form connected, branching curves like submucosal vessels.
"""
from __future__ import annotations

import numpy as np


def band_noise(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
               wavelength_mm: float) -> np.ndarray:
    """Smooth periodic Gaussian noise with features about ``wavelength_mm`` wide, zero mean, unit std.

    Args:
        shape: table size (rows, cols).
        spacing: sample spacing (row, col) in mm.
        wavelength_mm: feature size (standard deviation of the Gaussian low-pass in space is wavelength / 4).
    Returns:
        float32 [rows, cols].
    """
    if wavelength_mm <= 0:
        raise ValueError(f"wavelength_mm must be > 0, got {wavelength_mm!r}")
    rows, cols = shape
    sigma = wavelength_mm / 4.0
    # the Gaussian low-pass is separable: draw random spectrum coefficients only where the gain is not
    # negligible, inverse-transform the few non-zero columns along the rows, then every row along the columns
    gain_r = np.exp(-2.0 * (np.pi * sigma * np.fft.fftfreq(rows, d=spacing[0])) ** 2)
    gain_c = np.exp(-2.0 * (np.pi * sigma * np.fft.rfftfreq(cols, d=spacing[1])) ** 2)
    keep_r = np.flatnonzero(gain_r > 1e-4)
    n_c = max(int(np.count_nonzero(gain_c > 1e-4)), 1)
    coeff = rng.standard_normal((len(keep_r), n_c, 2))
    spectrum = np.zeros((rows, n_c), np.complex128)
    spectrum[keep_r] = (coeff[..., 0] + 1j * coeff[..., 1]) * gain_r[keep_r, None] * gain_c[None, :n_c]
    partial = np.fft.ifft(spectrum, axis=0)
    full = np.zeros((rows, cols // 2 + 1), np.complex128)
    full[:, :n_c] = partial
    field = np.fft.irfft(full, n=cols, axis=1)
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                  wavelength_mm: float, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Sum of ``octaves`` band noises, each half the wavelength and ``gain`` times the amplitude; unit std."""
    total = np.zeros(shape, np.float32)
    for k in range(octaves):
        total += gain ** k * band_noise(rng, shape, spacing, wavelength_mm / 2 ** k)
    return total / total.std()


def vessel_mask(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                wavelength_mm: float, width: float) -> np.ndarray:
    """Thin connected curves in [0, 1] (1 on a vessel): a smooth step on ``1 - |noise|`` of warped noise."""
    n = band_noise(rng, shape, spacing, wavelength_mm)
    n += 0.35 * band_noise(rng, shape, spacing, wavelength_mm / 3.0)
    ridge = 1.0 - np.abs(n)
    edge0 = 1.0 - width
    t = np.clip((ridge - edge0) / max(width, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def mucosa_albedo(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                  base_rgb: np.ndarray, vessel_rgb: np.ndarray, scale: float = 1.0, vessels: float = 1.0,
                  speckle: float = 0.0) -> np.ndarray:
    """Linear-RGB albedo table of mucosa: mottled base colour, large and small vessels, optional villous speckle.

    Args:
        base_rgb, vessel_rgb: float [3] linear RGB in [0, 1].
        scale: texture scale multiplier (1 = nominal feature sizes of ~10 mm mottling, ~6 mm vessel mesh).
        vessels: vessel visibility in [0, 1].
        speckle: strength of fine (~0.6 mm) bright/dark villus speckle.
    Returns:
        float32 [rows, cols, 3].
    """
    base = np.asarray(base_rgb, np.float32)
    vcol = np.asarray(vessel_rgb, np.float32)
    mottle = fractal_noise(rng, shape, spacing, 12.0 * scale, octaves=3)
    hue = band_noise(rng, shape, spacing, 20.0 * scale)
    albedo = base[None, None, :] * (1.0 + 0.12 * mottle[..., None])
    albedo[..., 2] *= 1.0 + 0.10 * hue
    albedo[..., 1] *= 1.0 - 0.08 * hue
    big = vessel_mask(rng, shape, spacing, 9.0 * scale, 0.06) * vessels
    small = vessel_mask(rng, shape, spacing, 3.5 * scale, 0.05) * (0.5 * vessels)
    v = np.clip(big + small, 0.0, 1.0)[..., None]
    albedo = albedo * (1.0 - 0.7 * v) + vcol[None, None, :] * (0.7 * v)
    if speckle > 0:
        fine = band_noise(rng, shape, spacing, 0.6 * scale)
        albedo *= 1.0 + speckle * 0.25 * fine[..., None]
    return np.clip(albedo, 0.0, 1.0).astype(np.float32)


def reflectance_patches(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                        strength: float) -> np.ndarray:
    """Multiplier of an albedo table that lays patches of other reflectance on the tissue: blood, bile, mucus,
    bruising, pale scar or fat, so that how bright a region is says less about how near it is.

    Two independent patch layers, each a soft-edged region of band noise (features 10–40 mm, covering 15–40 % of
    the table, edges ~1/10 of a feature) with its own colour gain: brightness ``exp(strength · U(ln 0.35, ln 1.8))``
    times a per-channel tint ``exp(strength · U(-0.25, 0.25))``.

    Args:
        shape: table size (rows, cols); spacing: sample spacing (row, col) in mm.
        strength: in [0, 1]; 0 gives ones (no patches).
    Returns:
        float32 [rows, cols, 3], > 0.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    out = np.ones(shape + (3,), np.float32)
    for _ in range(2):
        field = band_noise(rng, shape, spacing, float(rng.uniform(10.0, 40.0)))
        edge = float(np.quantile(field, 1.0 - rng.uniform(0.15, 0.4)))
        t = np.clip((field - edge) / 0.25 + 0.5, 0.0, 1.0)
        mask = (t * t * (3.0 - 2.0 * t))[..., None]
        gain = np.exp(strength * (rng.uniform(np.log(0.35), np.log(1.8)) + rng.uniform(-0.25, 0.25, 3)))
        out *= (1.0 + (gain.astype(np.float32) - 1.0) * mask).astype(np.float32)
    return out


def _bilinear_cells(rows: int, cols: int, u: np.ndarray, v: np.ndarray, wrap_v: bool, dtype: np.dtype
                    ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """Flat indices of the four texels around fractional indices ``(u, v)`` (int64 [N] each: (i, j), (i, j + 1),
    (i + 1, j), (i + 1, j + 1)) and the fractions ``fu, fv`` (``dtype`` [N, 1]); see ``sample_bilinear``."""
    u = np.clip(u, 0.0, rows - 1.001)
    i0 = u.astype(np.int64)
    fu = (u - i0).astype(dtype)[:, None]
    if wrap_v:
        if v.size and not (v.min() >= 0 and v.max() < cols):  # (np.mod is slow: skip it when nothing wraps)
            v = np.mod(v, cols)
        j0 = v.astype(np.int64) % cols
        j1 = j0 + 1
        j1[j1 == cols] = 0
    else:
        v = np.clip(v, 0.0, cols - 1.001)
        j0 = v.astype(np.int64)
        j1 = j0 + 1
    fv = (v - np.floor(v)).astype(dtype)[:, None]
    r0 = i0 * cols
    r1 = r0 + cols
    return (r0 + j0, r0 + j1, r1 + j0, r1 + j1), fu, fv


def _blend(c00: np.ndarray, c01: np.ndarray, c10: np.ndarray, c11: np.ndarray, fu: np.ndarray, fv: np.ndarray
           ) -> np.ndarray:
    gv = 1 - fv
    top = c00 * gv + c01 * fv
    bottom = c10 * gv + c11 * fv
    return top * (1 - fu) + bottom * fu


def sample_bilinear(table: np.ndarray, u: np.ndarray, v: np.ndarray, wrap_v: bool = True) -> np.ndarray:
    """Bilinear lookup of ``table[rows, cols, ...]`` at fractional indices ``u`` (rows, clamped) and ``v`` (cols).

    ``v`` wraps around when ``wrap_v`` (periodic angular axis), else it is clamped.
    Returns ``table.dtype`` [N, ...].
    """
    rows, cols = table.shape[:2]
    flat = table.reshape(rows * cols, -1)
    cells, fu, fv = _bilinear_cells(rows, cols, u, v, wrap_v, table.dtype)
    # ``take`` along axis 0 gathers whole texels several times faster than fancy indexing
    out = _blend(*(flat.take(c, axis=0) for c in cells), fu, fv)
    return out.reshape((len(out),) + table.shape[2:])


def channel_planes(table: np.ndarray) -> tuple[np.ndarray, ...]:
    """float [rows, cols, C] -> C contiguous float [rows * cols] planes for ``sample_planes``."""
    rows, cols = table.shape[:2]
    return tuple(np.ascontiguousarray(table[..., k]).reshape(rows * cols) for k in range(table.shape[2]))


def sample_planes(planes: tuple[np.ndarray, ...], rows: int, cols: int, u: np.ndarray, v: np.ndarray,
                  wrap_v: bool = True) -> list[np.ndarray]:
    """``sample_bilinear`` of a table split by ``channel_planes`` (shape rows x cols): one [N] array per channel,
    the same values. Gathering single channels and blending [N] arrays avoids numpy's slow broadcasting over a
    short channel axis (about 3x faster for RGB)."""
    dtype = planes[0].dtype
    cells, fu, fv = _bilinear_cells(rows, cols, u, v, wrap_v, dtype)
    fu, fv = fu[:, 0], fv[:, 0]
    return [_blend(*(plane.take(c) for c in cells), fu, fv) for plane in planes]
