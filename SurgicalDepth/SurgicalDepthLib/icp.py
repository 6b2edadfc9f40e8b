"""Robust point-to-plane ICP and frame-to-frame camera pose estimation from depth maps (numpy + scipy).

Point-to-plane ICP (Chen & Medioni 1992; linearised as in Low, "Linear least-squares optimization for
point-to-plane ICP surface registration", TR04-004, 2004): for source point p (already transformed) matched to
target point q with normal n, the residual is ``r = n · (p − q)``; a small motion (ω, τ) changes it to
``r + (p × n) · ω + n · τ``, so each iteration solves the 6×6 weighted normal equations
``(Jᵀ W J) [ω; τ] = −Jᵀ W r`` with rows ``J = [p × n, n]``.

Robustness (predicted depth has outliers and wrong scale at edges): correspondences farther than
``median + 3·1.4826·MAD`` of the nearest-neighbour distances (and than ``max_correspondence_distance`` when
given) are rejected, and residuals are weighted by Huber (k = 1.345 σ) or Tukey (c = 4.685 σ) M-estimators,
σ = 1.4826 · median |r| (iteratively re-weighted least squares). Target normals: smallest-eigenvalue
eigenvector of the covariance of the k nearest neighbours (PCA, ``scipy.spatial.cKDTree``).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from .camera import Intrinsics
from .geometry import backproject, check_depth_map, check_rigid, point_mask, voxel_downsample

logger = logging.getLogger(__name__)

LOSSES = ("huber", "tukey", "l2")


def estimate_normals(points: np.ndarray, k: int = 16, tree: Any = None) -> np.ndarray:
    """Unit normals float64 ``[N, 3]`` by PCA of each point's ``k`` nearest neighbours, oriented towards the
    origin (the camera centre for camera-frame points)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    tree = cKDTree(pts) if tree is None else tree
    k = min(int(k), len(pts))
    _, idx = tree.query(pts, k=k, workers=-1)
    nb = pts[idx]  # [N, k, 3]
    nb = nb - nb.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    normals = vecs[:, :, 0]  # eigenvalues ascending: smallest = surface normal
    flip = np.einsum("ni,ni->n", normals, pts) > 0  # make n · (0 − p) >= 0
    normals[flip] *= -1
    return normals


def _rotation(omega: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix of rotation vector ``omega`` (radians)."""
    theta = float(np.linalg.norm(omega))
    if theta < 1e-15:
        return np.eye(3)
    k = omega / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def _robust_weights(r: np.ndarray, loss: str) -> tuple[np.ndarray, float]:
    sigma = 1.4826 * float(np.median(np.abs(r)))
    sigma = max(sigma, 1e-12)
    a = np.abs(r)
    if loss == "huber":
        k = 1.345 * sigma
        return np.where(a <= k, 1.0, k / np.maximum(a, 1e-300)), sigma
    if loss == "tukey":
        c = 4.685 * sigma
        return np.where(a < c, (1 - (a / c) ** 2) ** 2, 0.0), sigma
    return np.ones_like(r), sigma


def _check_cloud(name: str, pts: Any) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3], got shape {pts.shape}")
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 6:
        raise ValueError(f"{name} needs at least 6 finite points for a 6-DoF fit, got {len(pts)}")
    return pts


def icp(source_points: np.ndarray, target_points: np.ndarray, init: np.ndarray | None = None,
        max_iterations: int = 50, *, max_correspondence_distance: float | None = None, loss: str = "huber",
        k_normals: int = 16, tolerance: float = 1e-7,
        target_normals: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Rigid transform aligning ``source_points`` to ``target_points`` (robust point-to-plane ICP).

    Args:
        source_points, target_points: ``[N, 3]`` / ``[M, 3]`` (same unit; non-finite rows ignored).
        init: initial 4×4 guess (source → target), default identity.
        max_iterations: iteration cap.
        max_correspondence_distance: hard cap on match distance (points' unit); None = adaptive only.
        loss: ``"huber"``, ``"tukey"`` or ``"l2"`` (no down-weighting).
        k_normals: neighbours for the PCA normals of the target.
        tolerance: stop when the update's rotation (rad) and translation (relative to the cloud extent) are below
            (or when three steps in a row bring the point-to-plane rmse no lower than the best by :data:`STALL`: the
            fit's last digits cycle).
        target_normals: optional precomputed ``[M, 3]`` normals.

    Directions of motion the geometry does not determine (a plane: sliding along it and turning about its normal;
    eigenvalues of the normal equations, rotation scaled by the cloud extent, below :data:`DEGENERATE` of the
    largest) are not moved along, and each step is at most :data:`MAX_STEP_RAD` and that fraction of the extent
    (a trust region: a fit that runs away cannot reach 1e11 mm).

    Returns:
        ``(T, info)``: float64 4×4 with ``target ≈ T[:3, :3] @ source + T[:3, 3]``; ``info`` has ``iterations``,
        ``converged``, ``fitness`` (fraction of source points within three point spacings of the target once
        aligned), ``rmse`` (point-to-plane, accepted matches), ``sigma`` (robust residual scale),
        ``degenerate_dofs`` (directions left where they started, 0–6) and ``loss``.
    """
    from scipy.spatial import cKDTree

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations!r}")
    src = _check_cloud("source_points", source_points)
    tgt = _check_cloud("target_points", target_points)
    T = np.eye(4) if init is None else check_rigid(init, "init").copy()
    tree = cKDTree(tgt)
    if target_normals is None:
        normals = estimate_normals(tgt, k_normals, tree)
    else:
        normals = np.asarray(target_normals, dtype=np.float64)
        if normals.shape != tgt.shape:
            raise ValueError(f"target_normals must be {tgt.shape}, got {normals.shape}")
    extent = max(float(np.linalg.norm(tgt.max(0) - tgt.min(0))), 1e-12)
    cap = np.inf if max_correspondence_distance is None else float(max_correspondence_distance)
    info: dict[str, Any] = {"converged": False, "loss": loss, "degenerate_dofs": 0}
    unit = np.concatenate([np.full(3, 1.0 / extent), np.ones(3)])  # rotation columns in the extent's length
    best, stalled = np.inf, 0
    it = 0
    for it in range(1, int(max_iterations) + 1):
        p = src @ T[:3, :3].T + T[:3, 3]
        dist, idx = tree.query(p, distance_upper_bound=cap, workers=-1)
        ok = np.isfinite(dist)
        if ok.sum() < 6:
            raise ValueError(f"icp: only {int(ok.sum())} correspondences within max_correspondence_distance="
                             f"{max_correspondence_distance}; the clouds do not overlap under the initial pose")
        d_ok = dist[ok]
        med = np.median(d_ok)
        gate = med + 3 * 1.4826 * np.median(np.abs(d_ok - med))
        ok &= dist <= max(gate, 1e-12 * extent)
        ps, q, n = p[ok], tgt[idx[ok]], normals[idx[ok]]
        r = np.einsum("ni,ni->n", n, ps - q)
        w, sigma = _robust_weights(r, loss)
        J = np.concatenate([np.cross(ps, n), n], axis=1) * unit
        x, info["degenerate_dofs"] = _constrained_step(J.T @ (J * w[:, None]), -J.T @ (w * r))
        x *= unit
        x *= min(1.0, MAX_STEP_RAD / max(np.linalg.norm(x[:3]), 1e-300),
                 MAX_STEP_RAD * extent / max(np.linalg.norm(x[3:]), 1e-300))  # trust region
        inc = np.eye(4)
        inc[:3, :3], inc[:3, 3] = _rotation(x[:3]), x[3:]
        T = inc @ T
        rmse = float(np.sqrt(np.mean(r * r)))
        info.update(rmse=rmse, sigma=sigma)
        stalled = stalled + 1 if rmse >= best * (1.0 - STALL) else 0  # no progress: the fit's last digits cycle
        best = min(best, rmse)
        if stalled >= 3 or (np.linalg.norm(x[:3]) < tolerance and np.linalg.norm(x[3:]) < tolerance * extent):
            info["converged"] = True
            break
    # re-orthonormalise accumulated rotation (floating-point drift over iterations)
    U, _, Vt = np.linalg.svd(T[:3, :3])
    T[:3, :3] = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    info["iterations"] = it
    spacing = float(np.median(tree.query(tgt[:: max(1, len(tgt) // 2000)], k=2)[0][:, 1]))
    dist, _ = tree.query(src @ T[:3, :3].T + T[:3, 3], distance_upper_bound=3 * spacing, workers=-1)
    info["fitness"] = float(np.isfinite(dist).mean())
    return T, info


#: An eigenvalue of the normal equations (rotation scaled by the cloud extent) below this fraction of the largest
#: is a direction the geometry does not determine.
DEGENERATE = 1e-6
#: Relative rmse gain below which an ICP step makes no progress.
STALL = 1e-6
#: Largest rotation (rad) and translation (fraction of the cloud extent) of one ICP step.
MAX_STEP_RAD = 0.2


def _constrained_step(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Solution of ``A x = b`` (6×6 symmetric) in the directions that ``A`` determines (eigenvalues at least
    :data:`DEGENERATE` of the largest), 0 along the others; and how many those are."""
    values, vectors = np.linalg.eigh(A)
    good = values > DEGENERATE * max(float(values[-1]), 1e-300)
    coeffs = np.zeros(6)
    coeffs[good] = (vectors[:, good].T @ b) / values[good]
    return vectors @ coeffs, int(np.count_nonzero(~good))


#: Least share of a frame's points that must lie on the previous frame's surface once registered.
MIN_FITNESS = 0.3


class PoseTracker:
    """Streaming camera-to-world poses by chaining frame-to-frame ICP (state: the previous cloud and motion).

    Frame k's points (camera frame) are registered to frame k−1's, starting from the previous relative motion
    (constant velocity), and ``pose_k = pose_{k−1} @ T_k``; frame 0 is the identity. Drift accumulates; for
    relative (non-metric) depth the translation is in the depth map's arbitrary unit.

    Args:
        intrinsics: camera of the depth maps.
        stride: use every ``stride``-th pixel in u and v (speed).
        voxel_size: optional voxel down-sampling of each cloud (depth unit).
        max_iterations, loss, max_correspondence_distance: passed to :func:`icp`.
    """

    def __init__(self, intrinsics: Intrinsics, *, stride: int = 2, voxel_size: float | None = None,
                 max_iterations: int = 50, loss: str = "huber", max_correspondence_distance: float | None = None):
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        self.intrinsics = intrinsics
        self.stride = int(stride)
        self.voxel_size = voxel_size
        self.icp_options = dict(max_iterations=max_iterations, loss=loss,
                                max_correspondence_distance=max_correspondence_distance)
        self.poses: list[np.ndarray] = []
        self.frames: list[dict[str, Any] | None] = []
        self._prev: np.ndarray | None = None
        self._motion = np.eye(4)

    @property
    def method(self) -> str:
        return (f"frame-to-frame robust point-to-plane ICP ({self.icp_options['loss']}), frame 0 = identity, "
                f"pixel stride {self.stride}" + (f", voxel {self.voxel_size}" if self.voxel_size else ""))

    @property
    def last_pose(self) -> np.ndarray:
        """The latest frame's pose (float64 4×4 camera-to-world), the identity before the first frame: what a frame
        that cannot be registered keeps."""
        return self.poses[-1] if self.poses else np.eye(4)

    def update(self, depth: np.ndarray) -> np.ndarray:
        """Pose (float64 4×4 camera-to-world) of the next depth map ``[H, W]`` (invalid pixels skipped).

        A map without any valid depth is a ValueError; one whose few valid pixels all miss the tracking grid (every
        ``stride``-th pixel) is an unusable frame, as one ICP cannot register: the previous pose is kept (warned)."""
        k = len(self.poses)
        try:
            valid = point_mask(check_depth_map(depth, self.intrinsics), self.intrinsics)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"estimate_poses: frame {k}: {exc}") from exc
        mask = np.zeros(valid.shape, dtype=bool)
        mask[::self.stride, ::self.stride] = True
        if not valid.any():  # a blank map is the caller's error
            raise ValueError(f"estimate_poses: frame {k}: no valid depth pixels: all {valid.size} pixels of depth "
                             f"are NaN/inf/<=0")
        if not (valid & mask).any():  # a few valid pixels, all off the tracking grid: an unusable frame
            logger.warning("estimate_poses: frame %d has no valid depth on the tracking grid (every %d-th pixel); "
                           "the previous pose is kept", k, self.stride)
            self.poses.append(self.last_pose)
            self.frames.append({"failed": "no valid depth"})
            return self.poses[-1]
        pts = backproject(depth, self.intrinsics, valid & mask)
        if self.voxel_size is not None:
            pts, _ = voxel_downsample(pts, self.voxel_size)
        if self._prev is None:
            self.poses.append(np.eye(4))
            self.frames.append(None)
        else:
            T, info = self._register(k, pts)
            self.poses.append(self.poses[-1] @ T)
            self.frames.append(info)
            self._motion = T
            if info.get("failed"):  # the previous pose is kept; the next frame registers to the last good cloud
                return self.poses[-1]
        self._prev = pts
        return self.poses[-1]

    def _register(self, k: int, pts: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Frame ``k``'s motion from the previous cloud, or the identity with ``info["failed"]`` (warned) when ICP
        cannot say: too few points or matches, too little overlap (fitness below :data:`MIN_FITNESS`), or a
        motion of more than the clouds' extent in one frame."""
        try:
            T, info = icp(pts, self._prev, init=self._motion, **self.icp_options)
        except ValueError as exc:
            T, info = np.eye(4), {"failed": str(exc)}
        else:
            extent = float(np.linalg.norm(self._prev.max(0) - self._prev.min(0)))
            if info["fitness"] < MIN_FITNESS:
                info["failed"] = f"fitness {info['fitness']:.2f} (too little overlap with the previous frame)"
            elif np.linalg.norm(T[:3, 3]) > extent:
                info["failed"] = (f"a motion of {np.linalg.norm(T[:3, 3]):.3g} in one frame (the view spans "
                                  f"{extent:.3g})")
        if info.get("failed"):
            logger.warning("estimate_poses: frame %d: ICP failed (%s); the previous pose is kept", k, info["failed"])
            return np.eye(4), info
        if info["degenerate_dofs"]:
            logger.warning("estimate_poses: frame %d: the geometry does not determine %d of the 6 directions of "
                           "motion (a flat view?): they are taken as no motion", k, info["degenerate_dofs"])
        elif not info["converged"]:
            logger.warning("estimate_poses: frame %d: ICP did not converge (fitness %.2f)", k, info["fitness"])
        return T, info


def estimate_poses(depths: Iterable[np.ndarray], intrinsics: Intrinsics, *, stride: int = 2,
                   voxel_size: float | None = None, max_iterations: int = 50, loss: str = "huber",
                   max_correspondence_distance: float | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Camera-to-world poses of a depth sequence (see :class:`PoseTracker`); frame 0 is the identity.

    Returns:
        ``(poses, info)``: float64 4×4 camera-to-world matrices, one per frame, and
        ``info = {"method": ..., "frames": [per-frame icp info (frame 0: None)]}`` saying how they were obtained.
    """
    tracker = PoseTracker(intrinsics, stride=stride, voxel_size=voxel_size, max_iterations=max_iterations,
                          loss=loss, max_correspondence_distance=max_correspondence_distance)
    for depth in depths:
        tracker.update(depth)
    if not tracker.poses:
        raise ValueError("estimate_poses: depths is empty")
    return tracker.poses, {"method": tracker.method, "frames": tracker.frames}
