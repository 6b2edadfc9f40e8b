"""First roots of implicit surfaces along rays: sphere tracing to bracket them, float64 refinement to pin them.

- Sphere tracing (Hart 1996, "Sphere tracing: a geometric method for the antialiased ray tracing of implicit
  surfaces"): a step of ``|F| / L`` (``L`` a Lipschitz bound of ``F``) cannot cross the surface. Marching
  positions are float32 (``field`` must accept float32 points).
- Once ``F`` changes sign, the bracket ``[lo, hi]`` (``F(lo) < 0 <= F(hi)``) is refined in float64 with the
  Illinois variant of regula falsi to ``|F| < 1e-7`` or a bracket narrower than ``tol`` mm, so the returned hit
  lies on the surface to well below 1e-4 mm.

Ray directions are handled *planar*, float [3, N] (one contiguous row per component; the ``*_planar`` functions
take them so): points are then built and read per component without strided access, and working sets compact
with one ``take`` per array. ``trace`` and ``march_bound`` take the usual [N, 3].
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

Field = Callable[[np.ndarray], np.ndarray]

F_TOL = 1e-7  # |F| (mm) accepted as on the surface


def ray_points(origin: np.ndarray, dirs_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points ``origin + t d`` as a float [N, 3] view of a planar [3, N] array.

    Args:
        origin: float [3]; dirs_t: float [3, N] planar directions; t: float [N] ray lengths.
    Returns:
        [N, 3] (``result[:, k]`` is contiguous); dtype by numpy promotion of the inputs.
    """
    p = dirs_t * t
    p += origin[:, None]
    return p.T


def checked_bracket(field: Field, origin: np.ndarray, dirs_t: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    f_lo: np.ndarray | None = None, f_hi: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Float64 brackets from marching ones (float32 positions): ``(lo, hi, F(lo), F(hi))``, float64 [N] (new).

    End values within 1e-3 mm of zero (or not given) are re-evaluated in float64; an end that float32 rounding
    put on the wrong side is pushed out by 1e-3 mm (at most 4 times).

    Args:
        origin: float64 [3]; dirs_t: float64 [3, N] planar directions.
    """
    lo, hi = np.array(lo, np.float64), np.array(hi, np.float64)
    f_lo = np.zeros(len(lo)) if f_lo is None else np.array(f_lo, np.float64)
    f_hi = np.zeros(len(hi)) if f_hi is None else np.array(f_hi, np.float64)
    for f, t in ((f_lo, lo), (f_hi, hi)):
        close = np.flatnonzero(np.abs(f) < 1e-3)
        if close.size:
            f[close] = field(ray_points(origin, dirs_t[:, close], t[close]))
    for _ in range(4):
        bad_lo, bad_hi = np.flatnonzero(f_lo >= 0), np.flatnonzero(f_hi < 0)
        if not (bad_lo.size or bad_hi.size):
            break
        lo[bad_lo] = np.maximum(lo[bad_lo] - 1e-3, 0.0)
        hi[bad_hi] += 1e-3
        f_lo[bad_lo] = field(ray_points(origin, dirs_t[:, bad_lo], lo[bad_lo]))
        f_hi[bad_hi] = field(ray_points(origin, dirs_t[:, bad_hi], hi[bad_hi]))
    return lo, hi, f_lo, f_hi


def illinois(field: Field, origin: np.ndarray, dirs_t: np.ndarray, a: np.ndarray, b: np.ndarray, fa: np.ndarray,
             fb: np.ndarray, tol: float, max_iter: int = 60) -> np.ndarray:
    """Illinois regula falsi (Dowell & Jarratt 1971) on float64 brackets ``[a, b]``, ``fa = F(a) < 0 <= fb``.

    Each step is the secant through ``(a, fa)`` and ``(b, fb)`` (bisection if it leaves the bracket); the iterate
    replaces ``a`` where ``F < 0``, else ``b``, and the value at an end kept twice in a row is halved, which
    keeps convergence superlinear where plain regula falsi stalls. Rays leave the working set as they converge.

    Args:
        field: ``F(p: float64 [N, 3]) -> float64 [N]``.
        origin: float64 [3]; dirs_t: float64 [3, N] planar ray directions.
        a, b, fa, fb: float64 [N] brackets and their field values (not modified).
        tol: bracket width at which a ray stops, mm.
    Returns:
        float64 [N] ray lengths of the roots, mm.
    """
    root = np.array(b, np.float64)
    ids, d = np.arange(len(a)), dirs_t
    a, b, fa, fb = (np.array(x, np.float64) for x in (a, b, fa, fb))
    # which end moved last (1.0) — none at first; updates below select with exact 0 / 1 weights (x * 1 + y * 0
    # is x): masked copies mispredict on the random masks and are ~5x slower
    moved_a, moved_b = np.zeros(len(a)), np.zeros(len(a))
    active = np.ones(len(a), bool)  # converged rays stay in the working set until compaction pays off
    for _ in range(max_iter):
        if ids.size == 0:
            break
        t = b - fb * (b - a) / (fb - fa)
        inside = (t > a) & (t < b)
        if not inside.all():  # secant outside the bracket (or nan): bisect
            t = np.where(inside, t, 0.5 * (a + b))
        ft = field(ray_points(origin, d, t))
        neg = (ft < 0).astype(np.float64)  # 1: the root is in [t, b], t replaces a
        pos = 1.0 - neg
        fb *= 1.0 - 0.5 * (neg * moved_a)  # a moves twice in a row: halve f(b) (Illinois); symmetric for b
        fa *= 1.0 - 0.5 * (pos * moved_b)
        a *= pos
        a += t * neg
        fa *= pos
        fa += ft * neg
        b *= neg
        b += t * pos
        fb *= neg
        fb += ft * pos
        moved_a, moved_b = neg, pos
        done = np.abs(ft) < F_TOL
        done |= b - a < tol
        done &= active
        if done.any():
            fin = np.flatnonzero(done)
            root[ids[fin]] = t[fin]
            active &= ~done
            n_active = np.count_nonzero(active)
            if n_active < 0.9 * len(active) or n_active < 2048:
                k = np.flatnonzero(active)
                ids, a, b, fa, fb, moved_a, moved_b, active = (
                    x.take(k) for x in (ids, a, b, fa, fb, moved_a, moved_b, active))
                d = d.take(k, axis=1)
    return root


def refine(field: Field, origin: np.ndarray, dirs_t: np.ndarray, lo: np.ndarray, hi: np.ndarray, tol: float,
           f_lo: np.ndarray | None = None, f_hi: np.ndarray | None = None, max_iter: int = 60) -> np.ndarray:
    """Roots in brackets ``[lo, hi]`` found by marching (end values ``f_lo``/``f_hi`` from float32 positions):
    ``roots.checked_bracket`` then Illinois regula falsi in float64 to ``tol`` mm. ``dirs_t``: float64 [3, N]."""
    lo, hi, f_lo, f_hi = checked_bracket(field, origin, dirs_t, lo, hi, f_lo, f_hi)
    return illinois(field, origin, dirs_t, lo, hi, f_lo, f_hi, tol, max_iter)


def march_bound_planar(bound: Field, lipschitz: float, origin: np.ndarray, dirs_t: np.ndarray,
                       t_max: np.ndarray, stop: float = 0.5, max_iter: int = 200) -> np.ndarray:
    """``march_bound`` with planar directions ``dirs_t``: float [3, N]."""
    n = dirs_t.shape[1]
    o32 = np.asarray(origin, np.float32)
    t = np.zeros(n, np.float32)
    ids, d = np.arange(n), np.ascontiguousarray(dirs_t, np.float32)
    t_end, t_cur = np.asarray(t_max, np.float32), t.copy()
    inv_l = np.float32(1.0 / lipschitz)
    for _ in range(max_iter):
        if ids.size == 0:
            break
        b = bound(ray_points(o32, d, t_cur))
        free = b < -stop
        t_new = np.minimum(t_cur - b * inv_l, t_end)
        t[ids] = np.where(free, t_new, t_cur)
        keep = free & (t_new < t_end)
        if not keep.all():
            k = np.flatnonzero(keep)
            ids, t_end, t_new, d = ids.take(k), t_end.take(k), t_new.take(k), d.take(k, axis=1)
        t_cur = t_new
    # step back by the float32 rounding of the position so the start stays in free space
    return np.maximum(t.astype(np.float64) - 1e-3, 0.0)


def march_bound(bound: Field, lipschitz: float, origin: np.ndarray, dirs: np.ndarray, t_max: np.ndarray,
                stop: float = 0.5, max_iter: int = 200) -> np.ndarray:
    """Sphere-trace an upper bound ``B >= F`` of the field until ``B >= -stop`` (or ``t_max``), in float32.

    Where ``B < 0`` the true field is negative too, so the returned lengths lie in free space before the first
    hit and can start ``trace``. ``dirs``: float [N, 3]. Returns float64 [N] ray lengths, mm.
    """
    return march_bound_planar(bound, lipschitz, origin, np.asarray(dirs).T, t_max, stop, max_iter)


def trace_planar(field: Field, lipschitz: float, origin: np.ndarray, dirs_t: np.ndarray,
                 t_max: float | np.ndarray, min_step: float = 0.2, min_step_per_mm: float = 0.0, tol: float = 1e-5,
                 max_iter: int = 400, t_start: np.ndarray | None = None, grow: bool = True) -> np.ndarray:
    """``trace`` with planar directions ``dirs_t``: float64 [3, N]."""
    n = dirs_t.shape[1]
    origin = np.asarray(origin, np.float64)
    dirs_t = np.ascontiguousarray(dirs_t, np.float64)
    f0 = float(field(origin[None, :])[0])
    if f0 >= 0:
        raise ValueError(f"ray origin {origin.tolist()} is inside the surface (F = {f0:.4g} >= 0)")
    o32 = origin.astype(np.float32)
    t_end = np.broadcast_to(np.asarray(t_max, np.float32), (n,)).copy()
    t = np.zeros(n, np.float32) if t_start is None else np.minimum(np.asarray(t_start, np.float32), t_end)
    d = dirs_t.astype(np.float32, order="C")
    f = np.full(n, f0, np.float32) if t_start is None else field(ray_points(o32, d, t))
    result = np.full(n, np.inf)
    neg_inv_l = -np.float32(1.0 / lipschitz)
    floor0, floor_k = np.float32(min_step), np.float32(min_step_per_mm)
    ids = np.arange(n)  # working set, compacted as rays finish
    brackets = []
    evaluations = 0
    for it in range(max_iter):
        if ids.size == 0:
            break
        evaluations += ids.size
        if grow and it >= 30 and it % 15 == 0:
            # the last few rays graze the wall (|F| stays small); longer minimum steps end the costly tail
            floor0, floor_k = 2 * floor0, 2 * floor_k
        t_new = t + np.maximum(f * neg_inv_l, floor0 + floor_k * t)
        np.minimum(t_new, t_end, out=t_new)
        f_new = field(ray_points(o32, d, t_new))
        keep = f_new < 0
        keep &= t_new < t_end
        if keep.all():
            t, f = t_new, f_new
            continue
        c = np.flatnonzero(f_new >= 0)
        if c.size:
            brackets.append((ids.take(c), t.take(c), t_new.take(c), f.take(c), f_new.take(c)))
        k = np.flatnonzero(keep)
        ids, t_end, t, f, d = ids.take(k), t_end.take(k), t_new.take(k), f_new.take(k), d.take(k, axis=1)
    if ids.size:
        raise RuntimeError(f"ray marching did not finish for {ids.size} rays in {max_iter} iterations")
    logger.debug("sphere tracing: %d rays, %.1f field evaluations per ray", n, evaluations / max(n, 1))
    if brackets:
        idx, lo, hi, f_lo, f_hi = (np.concatenate([b[k] for b in brackets]) for k in range(5))
        result[idx] = refine(field, origin, dirs_t[:, idx], lo, hi, tol, f_lo, f_hi)
    return result


def trace(field: Field, lipschitz: float, origin: np.ndarray, dirs: np.ndarray, t_max: float | np.ndarray,
          min_step: float = 0.2, min_step_per_mm: float = 0.0, tol: float = 1e-5, max_iter: int = 400,
          t_start: np.ndarray | None = None) -> np.ndarray:
    """First intersection of rays with the zero set of ``field``.

    Marching runs on float32 positions (``field`` must accept float32 points); the bracket around the first
    sign change is refined in float64.

    Args:
        field: ``F(p: float [N, 3]) -> float [N]``, negative at ``origin``.
        lipschitz: bound on ``|∇F|``.
        origin: float64 [3] common ray origin, mm.
        dirs: float64 [N, 3] unit directions.
        t_max: largest ray length searched, mm: a scalar or float [N] per ray.
        min_step: smallest march step, mm (features thinner than this along a ray may be stepped over).
        min_step_per_mm: the smallest step grows by this much per mm of ray length (cone tracing: about half a
            pixel footprint, so far, sub-pixel features cost no extra steps). With ``grow`` (``trace_planar``,
            default) both minimums double every 15 iterations after the 30th, for the few rays that graze a wall
            for a long stretch (such a ray can then step over a thin rim in front of it: ``raycast.cast`` traces
            those again with ``grow=False``).
        tol: bracket width at which refinement stops, mm.
        t_start: float [N] ray lengths known to be in free space before the first hit (e.g. from
            ``march_bound``); default 0.
    Returns:
        float64 [N] ray length of the first hit in mm; ``inf`` where nothing is hit within ``t_max``.
    """
    return trace_planar(field, lipschitz, origin, np.asarray(dirs, np.float64).T, t_max, min_step,
                        min_step_per_mm, tol, max_iter, t_start)
