"""Truncated signed distance (TSDF) fusion of posed depth maps, vectorised in torch (CPU or CUDA).

Method: KinectFusion (Newcombe et al., ISMAR 2011) — each voxel centre is projected into the depth map, its
projective signed distance ``sdf = depth(u, v) − z_voxel`` (positive in front of the surface) is truncated to
``[−truncation, truncation]``, stored as ``tsdf = sdf / truncation ∈ [−1, 1]`` and averaged over frames with
weight 1 per observation; voxels more than ``truncation`` behind the surface are not updated. Colour is
averaged the same way. The surface is the zero level set, extracted by VTK's ``vtkFlyingEdges3D``.

Storage: a dense grid over ``bounds`` or, with ``bounds=None``, a sparse set of 8³-voxel blocks allocated
where depth lands (a sorted key table searched with ``torch.searchsorted``), so memory follows the observed
surface, not the scene extent.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from .camera import Intrinsics, distort_normalized, pixel_rays
from .geometry import check_rigid

logger = logging.getLogger(__name__)

BLOCK = 8  # voxels per block side (sparse mode)
_KEY_BITS = 21  # block coordinate bits per axis in the int64 hash key
_KEY_OFF = 1 << (_KEY_BITS - 1)


def _decode(keys: torch.Tensor) -> torch.Tensor:
    """Block coordinates int64 [n, 3] from hash keys [n]."""
    mask = (1 << _KEY_BITS) - 1
    return torch.stack([(keys >> (2 * _KEY_BITS)) & mask, (keys >> _KEY_BITS) & mask, keys & mask], 1) - _KEY_OFF


class TSDFVolume:
    """TSDF volume fused from depth maps with known camera poses.

    Args:
        voxel_size: voxel edge, in the depth unit (mm when metric).
        truncation: truncation distance (same unit), at least one voxel; 3–5 voxels is typical.
        bounds: ``((xmin, ymin, zmin), (xmax, ymax, zmax))`` world box for a dense grid, or None for sparse
            8³ blocks allocated where depth lands.
        device: torch device for the volume and the integration arithmetic (``"cuda"`` runs it on the GPU).
        max_voxels: refuse dense grids larger than this (memory: 20 bytes per voxel); for a sparse volume,
            the grid that mesh extraction fills over the allocated blocks' bounding box.
        max_depth: depth beyond this (same unit) is not integrated (like Open3D's ``depth_trunc``): a few far
            outliers would otherwise allocate blocks far away and blow up the extraction grid. None = no limit.

    Both layouts store 8³-voxel blocks (a dense volume is a pre-allocated block grid) holding running sums
    Σ tsdf, Σ colour and the weight (observation count); values are divided out on extraction.
    """

    def __init__(self, voxel_size: float, truncation: float, bounds: Any = None, device: str | torch.device = "cpu",
                 max_voxels: int = 1 << 27, max_depth: float | None = None) -> None:
        if max_depth is not None and not (max_depth > 0 and math.isfinite(max_depth)):
            raise ValueError(f"max_depth must be a positive number or None, got {max_depth!r}")
        self.max_depth = max_depth
        self.max_voxels = int(max_voxels)
        if not (isinstance(voxel_size, (int, float)) and voxel_size > 0 and math.isfinite(voxel_size)):
            raise ValueError(f"voxel_size must be a positive number, got {voxel_size!r}")
        if not (isinstance(truncation, (int, float)) and truncation >= voxel_size and math.isfinite(truncation)):
            raise ValueError(f"truncation must be >= voxel_size ({voxel_size}), got {truncation!r}")
        self.voxel_size = float(voxel_size)
        self.truncation = float(truncation)
        self.device = torch.device(device)
        self.n_frames = 0
        self._rays_cache: dict[tuple, tuple[torch.Tensor, float]] = {}  # rays of the last camera used
        self._n_blocks = 0
        self.bounds = None
        self._origin = np.zeros(3)
        if bounds is not None:
            lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
            if lo.shape != (3,) or hi.shape != (3,) or not (hi > lo).all():
                raise ValueError(f"bounds must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with max > min, "
                                 f"got {bounds!r}")
            dims = np.ceil((hi - lo) / self.voxel_size).astype(np.int64) + 1
            grid_blocks = -(-dims // BLOCK)
            if int(np.prod(grid_blocks)) * BLOCK ** 3 > max_voxels:
                raise ValueError(f"bounds give a dense grid of {dims.tolist()} = {int(np.prod(dims))} voxels, more "
                                 f"than max_voxels={max_voxels}; use a larger voxel_size or bounds=None (sparse)")
            self.bounds = (tuple(lo.tolist()), tuple(hi.tolist()))
            self._origin = lo
            self._dims = tuple(int(d) for d in dims)
            self._grid_blocks = tuple(int(b) for b in grid_blocks)
            self._n_blocks = int(np.prod(grid_blocks))
        self._keys = torch.empty(0, dtype=torch.int64, device=self.device)  # sparse: sorted block keys
        self._slots = torch.empty(0, dtype=torch.int64, device=self.device)
        self._tsdf = torch.zeros((self._n_blocks, BLOCK ** 3), device=self.device)  # Σ tsdf
        self._weight = torch.zeros((self._n_blocks, BLOCK ** 3), device=self.device)
        self._color = torch.zeros((self._n_blocks, 3, BLOCK ** 3), device=self.device)  # Σ colour, planar

    # ------------------------------------------------------------------ integration
    def integrate(self, depth: np.ndarray, rgb: np.ndarray | None, intrinsics: Intrinsics, pose: Any) -> None:
        """Fuse one frame.

        Args:
            depth: ``[H, W]`` z-depth (volume unit); NaN/inf/``<= 0`` pixels carry no information.
            rgb: uint8 ``[H, W, 3]`` or None.
            intrinsics: camera for exactly ``W × H`` (distortion supported).
            pose: 4×4 camera-to-world rigid transform.
        """
        if not isinstance(intrinsics, Intrinsics):
            raise TypeError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        depth = np.asarray(depth)
        if depth.ndim != 2 or depth.shape != (intrinsics.height, intrinsics.width):
            raise ValueError(f"depth shape {depth.shape} does not match the intrinsics size "
                             f"{intrinsics.height}x{intrinsics.width} (HxW)")
        if rgb is not None:
            rgb = np.asarray(rgb)
            if rgb.shape != depth.shape + (3,):
                raise ValueError(f"rgb must be [H, W, 3] = {depth.shape + (3,)}, got shape {rgb.shape}")
        pose = check_rigid(pose)
        dev = self.device
        d = torch.as_tensor(np.ascontiguousarray(depth, dtype=np.float32)).to(dev)
        keep = torch.isfinite(d) & (d > 0)
        if self.max_depth is not None:
            keep &= d <= self.max_depth
        d = torch.where(keep, d, torch.zeros((), device=dev))
        col = None
        if rgb is not None:  # planar [3, H·W + 1] with a black sentinel pixel at the end
            col = torch.zeros((3, depth.size + 1), device=dev)
            col[:, :-1] = torch.as_tensor(np.ascontiguousarray(rgb)).to(dev).reshape(-1, 3).T
        R = torch.as_tensor(pose[:3, :3], dtype=torch.float32, device=dev)
        t = torch.as_tensor(pose[:3, 3], dtype=torch.float32, device=dev)
        self.n_frames += 1
        if not bool((d > 0).any()):
            logger.warning("TSDFVolume.integrate: frame has no valid depth; nothing fused")
            return
        origin = torch.as_tensor(self._origin, dtype=torch.float32, device=dev)
        keys = self._touched_blocks(d, intrinsics, R, t, origin)
        bc = _decode(keys)
        if self.bounds is None:
            slots = self._slots_for(keys)
        else:
            nb = torch.as_tensor(self._grid_blocks, device=dev)
            inside = ((bc >= 0) & (bc < nb)).all(1)
            bc = bc[inside]
            slots = (bc[:, 0] * nb[1] + bc[:, 1]) * nb[2] + bc[:, 2]
            if slots.numel() == 0:
                return
        # camera-frame voxel centres, one contiguous [nb, 512] plane per axis: R^T (p - t) = block part + local part
        cam_block = ((bc * BLOCK).float() * self.voxel_size + (origin - t)) @ R
        cam_local = (self._local_offsets().float() * self.voxel_size) @ R
        X, Y, Z = (cam_block[:, k, None] + cam_local[None, :, k] for k in range(3))
        obs, upd, pix = self._observe(X, Y, Z, d, intrinsics)
        # running sums; slots are unique, so index_add_ is a plain scatter-add
        self._tsdf.index_add_(0, slots, torch.where(upd, obs, torch.zeros((), device=dev)))
        self._weight.index_add_(0, slots, upd.float())
        if col is not None:
            pix = torch.where(upd, pix, torch.full((), d.numel(), dtype=torch.long, device=dev))  # → sentinel
            self._color.index_add_(0, slots, torch.stack([col[k].take(pix) for k in range(3)], 1))

    def _observe(self, X: torch.Tensor, Y: torch.Tensor, Z: torch.Tensor, depth: torch.Tensor,
                 intr: Intrinsics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Truncated projective SDF of voxels at camera coordinates (X, Y, Z) (same shape).

        Returns ``(tsdf ∈ [−1, 1], update mask, flat pixel index)``; voxels outside the image, without valid depth,
        or more than ``truncation`` behind the surface are not updated.
        """
        H, W = depth.shape
        front = Z > 1e-9
        inv_z = 1.0 / torch.where(front, Z, torch.ones((), device=Z.device))
        x, y = X * inv_z, Y * inv_z
        if intr.distortion is not None:
            # the distortion polynomial is only valid (monotonic) over the image's own field of view
            front &= x * x + y * y <= self._max_r2(intr)
            x, y = distort_normalized(x, y, intr.distortion)
        u = x * intr.fx + (intr.cx + 0.5)  # +0.5: truncation below rounds to the nearest pixel centre
        v = y * intr.fy + (intr.cy + 0.5)
        inside = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        pix = torch.where(inside, v.long() * W + u.long(), torch.zeros((), dtype=torch.long, device=Z.device))
        sdf = depth.take(pix) - Z
        upd = inside & (sdf >= -self.truncation) & (sdf + Z > 0)
        return (sdf * (1.0 / self.truncation)).clamp_(max=1.0), upd, pix

    def _rays(self, intr: Intrinsics) -> torch.Tensor:
        key = (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height, repr(intr.distortion))
        if key not in self._rays_cache:
            rays = torch.as_tensor(pixel_rays(intr), dtype=torch.float32).to(self.device)
            self._rays_cache = {key: (rays, float((rays ** 2).sum(-1).max()) * 1.0001)}
        return self._rays_cache[key][0]

    def _max_r2(self, intr: Intrinsics) -> float:
        self._rays(intr)
        return next(iter(self._rays_cache.values()))[1]

    def _touched_blocks(self, d: torch.Tensor, intr: Intrinsics, R: torch.Tensor, t: torch.Tensor,
                        origin: torch.Tensor) -> torch.Tensor:
        """Sorted unique keys of the 8³ blocks (voxel-index frame relative to ``origin``) that the truncation band
        ``[depth − truncation, depth + truncation]`` of the valid pixels passes through.

        The image is split into tiles whose footprint is at most half a block wide; along each tile's centre ray,
        points from (min depth − truncation) to (max depth + truncation) are sampled every half block, so the
        samples form a grid finer than the blocks over the band.
        """
        import torch.nn.functional as F

        H, W = d.shape
        block_len = BLOCK * self.voxel_size
        s = max(1, int(0.5 * block_len * min(intr.fx, intr.fy) / float(d.max())))
        inf = torch.full((), float("inf"), device=d.device)
        dmin = -F.max_pool2d(-torch.where(d > 0, d, inf)[None, None], s, ceil_mode=True)[0, 0]
        dmax = F.max_pool2d(d[None, None], s, ceil_mode=True)[0, 0]
        ok = dmax > 0
        vc = (torch.arange(dmax.shape[0], device=d.device) * s + (s - 1) // 2).clamp(max=H - 1)
        uc = (torch.arange(dmax.shape[1], device=d.device) * s + (s - 1) // 2).clamp(max=W - 1)
        r = self._rays(intr)[vc][:, uc][ok]
        dirs = torch.cat([r, torch.ones_like(r[:, :1])], 1)
        z0, z1 = dmin[ok] - self.truncation, dmax[ok] + self.truncation
        step = 0.5 * block_len / torch.linalg.vector_norm(dirs, dim=1)
        n_steps = int(torch.ceil(((z1 - z0) / step).max())) + 1
        zs = torch.minimum(z0[:, None] + torch.arange(n_steps, device=d.device)[None] * step[:, None], z1[:, None])
        p = (dirs[:, None, :] * zs[..., None]).reshape(-1, 3) @ R.T + (t - origin)
        b = torch.floor(p / block_len + 0.5 / BLOCK).long() + _KEY_OFF
        return torch.unique((b[:, 0] << (2 * _KEY_BITS)) | (b[:, 1] << _KEY_BITS) | b[:, 2])

    def _local_offsets(self) -> torch.Tensor:
        r = torch.arange(BLOCK, device=self.device)
        return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)

    def _slots_for(self, keys: torch.Tensor) -> torch.Tensor:
        """Pool slots of the sorted unique block ``keys``, allocating blocks not seen before."""
        slots = torch.empty_like(keys)
        found = torch.zeros_like(keys, dtype=torch.bool)
        if self._keys.numel():
            pos = torch.searchsorted(self._keys, keys).clamp(max=self._keys.numel() - 1)
            found = self._keys[pos] == keys
            slots[found] = self._slots[pos[found]]
        new_keys = keys[~found]
        n_new = new_keys.numel()
        if n_new:
            need = self._n_blocks + n_new
            if need > self._tsdf.shape[0]:
                grow = max(need, 2 * self._tsdf.shape[0]) - self._tsdf.shape[0]
                dev = self.device
                self._tsdf = torch.cat([self._tsdf, torch.zeros((grow, BLOCK ** 3), device=dev)])
                self._weight = torch.cat([self._weight, torch.zeros((grow, BLOCK ** 3), device=dev)])
                self._color = torch.cat([self._color, torch.zeros((grow, 3, BLOCK ** 3), device=dev)])
            new_slots = torch.arange(self._n_blocks, need, device=self.device)
            slots[~found] = new_slots
            self._n_blocks = need
            all_keys = torch.cat([self._keys, new_keys])
            order = torch.argsort(all_keys)
            self._keys, self._slots = all_keys[order], torch.cat([self._slots, new_slots])[order]
        return slots

    @property
    def n_blocks(self) -> int:
        """Allocated 8³ blocks (sparse mode; 0 for a dense volume)."""
        return 0 if self.bounds is not None else self._n_blocks

    # ------------------------------------------------------------------ extraction
    def to_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Dense copy ``(tsdf [X,Y,Z], weight [X,Y,Z], color [X,Y,Z,3], origin [3])`` over the observed box;
        voxel (i, j, k) is centred at ``origin + (i, j, k) · voxel_size``; unobserved voxels have weight 0, tsdf 1."""
        if self.bounds is not None:
            nb = self._grid_blocks
            slots = torch.arange(self._n_blocks, device=self.device)
            bc = torch.stack([slots // (nb[1] * nb[2]), (slots // nb[2]) % nb[1], slots % nb[2]], 1)
            bmin = torch.zeros(3, dtype=torch.long, device=self.device)
            dims = [n * BLOCK for n in nb]
            origin = self._origin.copy()
        else:
            if self._n_blocks == 0:
                raise ValueError("TSDFVolume is empty: integrate at least one frame with valid depth first")
            slots = self._slots
            bc = _decode(self._keys)
            bmin = bc.min(0).values
            dims = ((bc.max(0).values - bmin + 1) * BLOCK).tolist()
            if int(np.prod(dims)) > self.max_voxels:
                raise ValueError(f"the fused blocks span a grid of {dims} = {int(np.prod(dims))} voxels, more than "
                                 f"max_voxels={self.max_voxels}: far outlier depths? pass max_depth= or a larger "
                                 "voxel_size")
            origin = (bmin * BLOCK).cpu().numpy().astype(np.float64) * self.voxel_size
        vox = ((bc - bmin)[:, None, :] * BLOCK + self._local_offsets()[None]).reshape(-1, 3).cpu().numpy()
        w = self._weight[slots].reshape(-1)
        inv_w = 1.0 / w.clamp(min=1.0)
        tsdf = np.ones(dims, np.float32)
        weight = np.zeros(dims, np.float32)
        color = np.zeros(dims + [3], np.float32)
        ix = (vox[:, 0], vox[:, 1], vox[:, 2])
        tsdf[ix] = torch.where(w > 0, self._tsdf[slots].reshape(-1) * inv_w, 1.0).cpu().numpy()
        weight[ix] = w.cpu().numpy()
        color[ix] = (self._color[slots].transpose(1, 2).reshape(-1, 3) * inv_w[:, None]).cpu().numpy()
        if self.bounds is not None:
            crop = tuple(slice(0, n) for n in self._dims)
            tsdf, weight, color = tsdf[crop], weight[crop], color[crop]
        return tsdf, weight, color, origin

    def extract_mesh(self) -> Any:
        """Zero level set as ``vtkPolyData``: triangles, point "Normals" (towards free space) and uint8 "RGB".

        Triangles with a corner on an edge to an unobserved voxel (weight 0) are dropped, so the boundary of the
        observed region does not produce spurious walls.
        """
        if self.n_frames == 0:
            raise ValueError("TSDFVolume is empty: integrate at least one frame first")
        tsdf, weight, color, origin = self.to_grid()
        return grid_to_mesh(tsdf, weight, color, origin, self.voxel_size)


def grid_to_mesh(tsdf: np.ndarray, weight: np.ndarray, color: np.ndarray, origin: np.ndarray,
                 voxel_size: float) -> Any:
    """Zero level set of a TSDF grid ``[X, Y, Z]`` (voxel (i, j, k) at ``origin + (i, j, k)·voxel_size``).

    ``vtkFlyingEdges3D`` on the grid as ``vtkImageData``; vertices on an edge touching a weight-0 voxel are
    dropped with their triangles; per-vertex colour is the linear interpolation of ``color`` along the edge.
    """
    from scipy.ndimage import map_coordinates
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D

    from .geometry import _cell_array, _vtk_array

    dims = tsdf.shape
    image = vtkImageData()
    image.SetDimensions(*dims)
    image.SetOrigin(*(float(o) for o in origin))
    image.SetSpacing(voxel_size, voxel_size, voxel_size)
    # VTK orders points x fastest: the [X, Y, Z] grid transposed to [Z, Y, X] in C order
    values = np.ascontiguousarray(np.where(weight > 0, tsdf, 1.0).transpose(2, 1, 0), dtype=np.float32).ravel()
    image.GetPointData().SetScalars(numpy_to_vtk(values, deep=False))
    fe = vtkFlyingEdges3D()
    fe.SetInputData(image)
    fe.SetValue(0, 0.0)
    fe.SetComputeNormals(True)
    fe.SetComputeGradients(False)
    fe.SetComputeScalars(False)
    fe.Update()
    surf = fe.GetOutput()
    out = vtkPolyData()
    if surf.GetNumberOfPoints() == 0:
        logger.warning("TSDFVolume.extract_mesh: no zero crossing in the volume; returning an empty mesh")
        return out
    pts = vtk_to_numpy(surf.GetPoints().GetData()).astype(np.float64)
    normals = vtk_to_numpy(surf.GetPointData().GetNormals())
    tris = vtk_to_numpy(surf.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    f = (pts - origin) / voxel_size
    r = np.rint(f)
    on_grid = np.abs(f - r) < 1e-3
    i0 = np.where(on_grid, r, np.floor(f)).astype(np.int64)
    i1 = np.where(on_grid, r, np.ceil(f)).astype(np.int64)
    for a in (i0, i1):
        np.clip(a, 0, np.array(dims) - 1, out=a)
    ok = (weight[i0[:, 0], i0[:, 1], i0[:, 2]] > 0) & (weight[i1[:, 0], i1[:, 1], i1[:, 2]] > 0)
    tris = tris[ok[tris].all(axis=1)]
    used = np.unique(tris)
    remap = np.full(len(pts), -1, np.int64)
    remap[used] = np.arange(used.size)
    pts_out = np.ascontiguousarray(pts[used], dtype=np.float32)
    rgb = np.stack([map_coordinates(color[..., c], f[used].T, order=1, mode="nearest") for c in range(3)], 1)
    vpts = vtkPoints()
    vpts.SetData(_vtk_array(pts_out))
    out.SetPoints(vpts)
    # flying edges winds triangles and orients normals towards decreasing values (behind the surface);
    # flip both so they face free space, like depth_to_mesh
    out.SetPolys(_cell_array(remap[tris[:, ::-1]], 3))
    n_arr = _vtk_array(np.ascontiguousarray(-normals[used], dtype=np.float32), "Normals")
    out.GetPointData().SetNormals(n_arr)
    out.GetPointData().AddArray(_vtk_array(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB"))
    out.GetPointData().SetActiveScalars("RGB")
    return out
