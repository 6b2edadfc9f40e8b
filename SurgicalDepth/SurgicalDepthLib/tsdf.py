"""Truncated signed distance (TSDF) fusion of posed depth maps, vectorised in torch (CPU or CUDA).

Method: KinectFusion (Newcombe et al., ISMAR 2011) — each voxel centre is projected into the depth map, its
projective signed distance ``sdf = depth(u, v) − z_voxel`` (positive in front of the surface) is truncated to
``[−truncation, truncation]``, stored as ``tsdf = sdf / truncation ∈ [−1, 1]`` and averaged over frames with
weight 1 per observation; voxels more than ``truncation`` behind the surface are not updated. Colour is
averaged the same way. The surface is the zero level set, extracted by VTK's ``vtkFlyingEdges3D``.

Storage: a dense grid over ``bounds`` or, with ``bounds=None``, a sparse set of 8³-voxel blocks allocated
where depth lands (a sorted key table searched with ``torch.searchsorted``), so memory follows the observed
surface, not the scene extent. Either way a frame visits only the blocks its truncation band passes through
(``tsdf_allocation``). On CUDA devices with Triton installed, allocation and fusion run as three fused kernels per
frame (``tsdf_triton``), on the CPU with Numba installed fusion runs as one compiled loop (``tsdf_numba``; ``kernel=``).
"""
from __future__ import annotations

import importlib
import logging
import math
import numbers
from typing import Any

import numpy as np
import torch

from .camera import Intrinsics, distort_normalized, pixel_rays
from .geometry import check_rigid
from .tsdf_allocation import TILE_LEVELS, tile_rays, touched_blocks
from .tsdf_kernels import (BLOCK, KEY_REACH, decode_block_keys, pack_rgb, padded, pixel_index_, resolve_kernel,
                           unpack_rgb_, valid_depth)
from .tsdf_mesh import grid_to_mesh

logger = logging.getLogger(__name__)


_NO_DEPTH = -torch.finfo(torch.float32).max  # what integration reads where a pixel has no depth
_PLANES = 5  # running sums per voxel: tsdf, weight, red, green, blue


def _is_number(value: Any, kind: type = numbers.Real) -> bool:
    """True for a real (``kind``) number, NumPy scalars included (``np.float32`` is no ``float``); False for bools."""
    return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))


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
            outliers would otherwise allocate blocks far away and blow up the extraction grid. None = no limit
            but the block keys' reach (2^19 blocks: ~4 km at 1 mm voxels; farther depth would wrap into other
            blocks' keys).
        max_blocks: block budget of a sparse volume (10 KiB each; the default, 2^18 blocks = 2.5 GiB, is the
            ``max_voxels`` extraction grid's size). Once reached, frames still update the allocated blocks but no
            new block is allocated: the nearest new blocks of the frame that hits it fill what is left, and one
            warning says so and what to change. Long clips stay bounded in memory.
        kernel: ``"torch"`` (tensor ops, any device), ``"triton"`` (fused Triton kernels, ``tsdf_triton``: CUDA
            devices, or Triton's interpreter), ``"numba"`` (a fused compiled loop, ``tsdf_numba``: the CPU) or
            ``"auto"``: Triton on CUDA devices and Numba on the CPU where they are installed, falling back to torch
            ops (with one warning) if their kernels fail to build.

    Both layouts store 8³-voxel blocks (a dense volume is a pre-allocated block grid) holding running sums
    Σ tsdf, Σ colour and the weight (observation count); values are divided out on extraction.
    """

    def __init__(self, voxel_size: float, truncation: float, bounds: Any = None, device: str | torch.device = "cpu",
                 max_voxels: int = 1 << 27, max_depth: float | None = None,
                 max_blocks: int = (1 << 27) // BLOCK ** 3, kernel: str = "auto") -> None:
        if not (_is_number(max_blocks, numbers.Integral) and max_blocks >= 1):
            raise ValueError(f"max_blocks must be an int >= 1, got {max_blocks!r}")
        self.max_blocks = int(max_blocks)
        self.budget_warned = False  # the block budget was reached (and reported once)
        if max_depth is not None and not (_is_number(max_depth) and max_depth > 0 and math.isfinite(max_depth)):
            raise ValueError(f"max_depth must be a positive number or None, got {max_depth!r}")
        self.max_depth = None if max_depth is None else float(max_depth)  # a NumPy scalar is no JSON number
        if not (_is_number(max_voxels, numbers.Integral) and max_voxels >= 1):
            raise ValueError(f"max_voxels must be an int >= 1, got {max_voxels!r}")
        self.max_voxels = int(max_voxels)
        if not (_is_number(voxel_size) and voxel_size > 0 and math.isfinite(voxel_size)):
            raise ValueError(f"voxel_size must be a positive number, got {voxel_size!r}")
        if not (_is_number(truncation) and truncation >= voxel_size and math.isfinite(truncation)):
            raise ValueError(f"truncation must be >= voxel_size ({voxel_size}), got {truncation!r}")
        self.voxel_size = float(voxel_size)
        # depth past half the block keys' reach (2^20 blocks a side) would wrap into other blocks' keys: not fused
        self._depth_cap = min(max_depth or math.inf, float(KEY_REACH // 2 * BLOCK * self.voxel_size))
        self.truncation = float(truncation)
        self.device = torch.device(device)
        self.kernel = resolve_kernel(kernel, self.device)
        self._kernel_auto = kernel == "auto"
        self.n_frames = 0
        r = torch.arange(BLOCK, device=self.device)  # voxel (i, j, k) of a block, row-major as in the sums
        self._offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        self._offsets_mm = self._offsets.float() * self.voxel_size
        self._rays_cache: dict[tuple, dict] = {}  # see _camera
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
            if math.prod(grid_blocks.tolist()) * BLOCK ** 3 > max_voxels:  # Python ints: no int64 overflow
                raise ValueError(f"bounds give a dense grid of {dims.tolist()} = {math.prod(dims.tolist())} voxels, "
                                 f"more than max_voxels={max_voxels}; use a larger voxel_size or bounds=None (sparse)")
            self.bounds = (tuple(lo.tolist()), tuple(hi.tolist()))
            self._origin = lo
            self._dims = tuple(int(d) for d in dims)
            self._grid_blocks = tuple(int(b) for b in grid_blocks)
            self._n_blocks = math.prod(grid_blocks.tolist())
        self._keys = torch.empty(0, dtype=torch.int64, device=self.device)  # sparse: sorted block keys
        self._slots = torch.empty(0, dtype=torch.int64, device=self.device)
        # running sums per block: planes Σ tsdf, weight (observation count), Σ red, Σ green, Σ blue
        self._sums = torch.zeros((self._n_blocks, _PLANES, BLOCK ** 3), device=self.device)

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
        d = valid_depth(torch.as_tensor(np.ascontiguousarray(depth, dtype=np.float32)).to(dev), self._depth_cap)
        R = torch.as_tensor(pose[:3, :3], dtype=torch.float32, device=dev)
        t = torch.as_tensor(pose[:3, 3], dtype=torch.float32, device=dev)
        cam = self._camera(intrinsics)
        if cam["no_ray"] is not None:
            d = d.masked_fill(cam["no_ray"], 0.0)
        self.n_frames += 1
        d_max = float(d.max())
        if not d_max > 0:
            logger.warning("TSDFVolume.integrate: frame has no valid depth; nothing fused")
            return
        camera = t - torch.as_tensor(self._origin, dtype=torch.float32, device=dev)  # relative to the volume origin
        keys, focal = None, min(intrinsics.fx, intrinsics.fy)
        if self.kernel == "triton" and d_max <= 0.5 * BLOCK * self.voxel_size * focal:  # pixels <= half a block
            keys = self._run_fused("band_blocks", d, cam["ray_table"], R, (pose[:3, 3] - self._origin).tolist(),
                                   self.truncation)
        if keys is None:  # torch ops, a band too large for the Triton grid, or pixels wider than its centre rays
            keys = touched_blocks(d, cam["tiles"], focal, R, camera, BLOCK * self.voxel_size, self.truncation)
        bc = decode_block_keys(keys)
        if self.bounds is None:
            slots, kept = self._slots_for(keys, camera)
            if kept is not None:  # over the block budget: the blocks left out are not fused
                bc, slots = bc[kept], slots[kept]
        else:
            nb = torch.as_tensor(self._grid_blocks, device=dev)
            inside = ((bc >= 0) & (bc < nb)).all(1)
            bc = bc[inside]
            slots = (bc[:, 0] * nb[1] + bc[:, 1]) * nb[2] + bc[:, 2]
        if slots.numel():
            self._fuse(d, rgb, intrinsics, (bc * BLOCK).float() * self.voxel_size - camera, R, slots)

    def _fuse(self, d: torch.Tensor, rgb: np.ndarray | None, intr: Intrinsics, corner: torch.Tensor,
              R: torch.Tensor, slots: torch.Tensor) -> None:
        """Add one frame's observation of the blocks at pool ``slots`` [n] to the running sums.

        Args:
            d: float32 depth [H, W], 0 where invalid. rgb: as ``integrate``.
            corner: float32 [n, 3], position of each block's first voxel centre relative to the camera centre
                (volume frame, volume unit). R: camera-to-world rotation [3, 3].
        """
        dev = self.device
        n = corner.shape[0]
        # homogeneous coordinates (u·z, v·z, z) of the voxel centres in the padded image (pinhole), or camera
        # coordinates (distorted camera: distortion applies to x/z, y/z), as block part + voxel part, in units of
        # the truncation distance (u, v are ratios, so unchanged; z and the depth in those units make sdf the tsdf)
        to_image = R @ self._projection(intr).T / self.truncation
        local = (self._offsets_mm @ to_image).T.contiguous()
        block = (corner @ to_image).T.contiguous()  # contiguous: a strided broadcast add is 8× slower on the CPU
        # missing depth and the border read −float max, so sdf <= −float max there: never observed, and 0 · tsdf = 0
        depth = padded(torch.eq(d, 0.0, out=torch.empty_like(d)).mul_(_NO_DEPTH).add_(d, alpha=1.0 / self.truncation),
                       _NO_DEPTH)
        image = None if rgb is None else torch.as_tensor(np.ascontiguousarray(rgb)).to(dev)
        if self.kernel != "torch" and (image is None or image.dtype == torch.uint8):
            # every voxel is tested for lying behind the camera (free in the kernel; deciding first costs a GPU sync)
            pix = None if intr.distortion is None else self._pixel_of_(
                torch.add(block[:, :, None], local[:, None, :]), intr, True).view(n, -1)
            colour = None if image is None else padded(pack_rgb(image))
            if self._run_fused("fuse_blocks", block, local, pix, depth, colour, slots, self._sums, intr.width,
                               intr.height, True) is not None:
                return
        # one frame's terms, the layout of the running sums: tsdf, weight, colour planes [n, 5, 512]; the
        # coordinates live in the colour planes until the colour is read
        terms = torch.empty((n, _PLANES, BLOCK ** 3), device=dev)
        tsdf, w, colour = terms[:, 0], terms[:, 1], terms[:, 2:].transpose(0, 1)  # colour planes [3, n, 512]
        h = torch.add(block[:, :, None], local[:, None, :], out=colour)
        pix = self._pixel_of_(h, intr, bool(block[2].min() + local[2].min() <= 1e-9))
        torch.sub(torch.index_select(depth, 0, pix).view(n, -1), h[2], out=tsdf)  # (depth − z) / truncation
        torch.ge(tsdf, -1.0, out=w)  # 1 = observed: tsdf and colour join the average
        tsdf.clamp_(-1.0, 1.0).mul_(w)
        if image is None:
            colour.zero_()
        elif image.dtype == torch.uint8:  # one gather of the packed colour
            torch.mul(torch.index_select(padded(pack_rgb(image)), 0, pix).view(n, -1), w, out=colour[2])
            unpack_rgb_(colour)  # unobserved voxels add black
        else:  # other dtypes (not documented, but accepted): one gather per channel
            for k in range(3):
                torch.mul(torch.index_select(padded(image[..., k].float()), 0, pix).view(n, -1), w, out=colour[k])
        self._sums.index_add_(0, slots, terms)  # slots are unique, so this is a plain scatter-add

    def _run_fused(self, name: str, *args: Any) -> Any:
        """``tsdf_<kernel>.<name>(*args)``, a fused kernel; with ``kernel="auto"`` a failure (a Triton or Numba that
        does not import or cannot compile here, a Triton that does not match the GPU's driver) switches this volume
        to torch ops, warns once and returns None."""
        try:
            return getattr(importlib.import_module(f".tsdf_{self.kernel}", __package__), name)(*args)
        except Exception as exc:  # noqa: BLE001 - any build or launch failure of the optional kernels
            if not self._kernel_auto:
                raise
            logger.warning("TSDFVolume: the %s kernels failed (%s: %s); fusing with torch ops instead",
                           self.kernel.capitalize(), type(exc).__name__, exc)
            self.kernel = "torch"
            return None

    def _projection(self, intr: Intrinsics) -> torch.Tensor:
        """[3, 3] map from camera coordinates to homogeneous padded-image coordinates (u·z, v·z, z), where
        flooring u, v gives the padded pixel (nearest image pixel centre + 1); identity for a distorted camera."""
        if intr.distortion is not None:
            return torch.eye(3, device=self.device)
        return torch.tensor([[intr.fx, 0.0, intr.cx + 1.5], [0.0, intr.fy, intr.cy + 1.5], [0.0, 0.0, 1.0]],
                            device=self.device)

    def _pixel_of_(self, h: torch.Tensor, intr: Intrinsics, behind: bool) -> torch.Tensor:
        """Flat index [n] into the ``padded`` image of the pixel that each voxel projects into, from its
        ``_projection`` coordinates ``h`` [3, ...]; voxels outside the image, at ``z <= 1e-9`` (checked only when
        ``behind`` says that some may be) or outside the field of view of a distorted camera get a border pixel.
        ``h[0]`` and ``h[1]`` are overwritten (used as scratch)."""
        X, Y, Z = h
        inv_z = Z.reciprocal()
        u, v = X.mul_(inv_z), Y.mul_(inv_z)
        out = Z <= 1e-9 if behind else None
        if intr.distortion is not None:  # u, v are x/z, y/z here
            # the distortion polynomial is only valid (monotonic) over the image's own field of view
            wide = ~(u * u + v * v <= self._max_r2(intr))
            out = wide if out is None else out | wide
            x, y = distort_normalized(u, v, intr.distortion)
            u = torch.mul(x, intr.fx, out=X).add_(intr.cx + 1.5)
            v = torch.mul(y, intr.fy, out=Y).add_(intr.cy + 1.5)
        if out is not None:  # (NaN or inf there): the border pixel (0, 0)
            u.masked_fill_(out, 0.0)
            v.masked_fill_(out, 0.0)
        return pixel_index_(u, v, intr.width, intr.height).view(-1)

    def _camera(self, intr: Intrinsics) -> dict:
        """Cached per camera (the last one used): ``"max_r2"`` (largest x² + y² of its pixel rays, slightly widened),
        ``"tiles"``, the block allocation's ray table of every quadtree level (``tsdf_allocation.tile_rays``),
        ``"no_ray"``, bool [H, W] of the pixels whose lens gives no forward ray (None when every pixel has one), and
        for the Triton kernels its ``"ray_table"`` (``tsdf_triton.RayTable``)."""
        key = (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height, repr(intr.distortion))
        if key not in self._rays_cache:
            rays = torch.as_tensor(pixel_rays(intr), dtype=torch.float32).to(self.device)
            no_ray = ~torch.isfinite(rays).all(-1)  # an 'ocam' lens past 90° off axis: those pixels are not fused
            rays = rays.masked_fill(no_ray[..., None], 0.0)
            tiles = [tile_rays(rays, level, BLOCK * self.voxel_size) for level in range(TILE_LEVELS + 1)]
            self._rays_cache = {key: {"max_r2": float((rays ** 2).sum(-1).max()) * 1.0001, "tiles": tiles,
                                      "no_ray": no_ray if bool(no_ray.any()) else None}}
            if self.kernel == "triton":
                from .tsdf_triton import RayTable

                self._rays_cache[key]["ray_table"] = RayTable.of(rays, BLOCK * self.voxel_size, self.truncation)
        return self._rays_cache[key]

    def _max_r2(self, intr: Intrinsics) -> float:
        return self._camera(intr)["max_r2"]

    def _slots_for(self, keys: torch.Tensor, camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pool slots of the sorted unique block ``keys``, allocating blocks not seen before within the budget
        (``max_blocks``; the ones nearest to ``camera`` [3], volume frame, first), -1 for blocks left out; and
        None, or where the budget left blocks out, the mask of the kept ones."""
        slots = torch.empty_like(keys)
        kept = None
        found = torch.zeros_like(keys, dtype=torch.bool)
        if self._keys.numel():
            pos = torch.searchsorted(self._keys, keys).clamp(max=self._keys.numel() - 1)
            found = self._keys[pos] == keys
            slots[found] = self._slots[pos[found]]
        new_keys = keys[~found]
        if self._n_blocks + new_keys.numel() > self.max_blocks:
            new_keys = self._nearest_within_budget(new_keys, camera)
            slots[~found] = -1
            chosen = torch.isin(keys, new_keys)
            kept, found = found | chosen, found | ~chosen  # the left-out keys get no new slot
        n_new = new_keys.numel()
        if n_new:
            need = self._n_blocks + n_new
            if need > self._sums.shape[0]:
                self._reserve(min(2 * need, self.max_blocks))  # need <= max_blocks
            self._sums[self._n_blocks:need].zero_()
            new_slots = torch.arange(self._n_blocks, need, device=self.device)
            slots[~found] = new_slots
            self._n_blocks = need
            all_keys = torch.cat([self._keys, new_keys])
            order = torch.argsort(all_keys)
            self._keys, self._slots = all_keys[order], torch.cat([self._slots, new_slots])[order]
        return slots, kept

    def _nearest_within_budget(self, new_keys: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """The (sorted) ``new_keys`` nearest to ``camera`` that still fit the block budget; warns once."""
        room = max(0, self.max_blocks - self._n_blocks)
        if not self.budget_warned:
            self.budget_warned = True
            logger.warning("TSDFVolume: the block budget of %d blocks (%.1f GiB) is reached at frame %d; surface "
                           "seen for the first time from now on is not fused. Use a larger voxel_size, a smaller "
                           "max_depth, fewer frames, or a larger max_blocks.", self.max_blocks,
                           self.max_blocks * BLOCK ** 3 * 20 / 2 ** 30, self.n_frames)
        centres = (decode_block_keys(new_keys).float() + 0.5) * (BLOCK * self.voxel_size)
        nearest = torch.argsort(torch.linalg.vector_norm(centres - camera, dim=1))[:room]
        return torch.sort(new_keys[nearest]).values

    def _reserve(self, capacity: int) -> None:
        """Grow the block pool (sparse mode) to ``capacity`` blocks; rows past the allocated ones are left
        uninitialised and zeroed when they are handed out."""
        sums = torch.empty((capacity, _PLANES, BLOCK ** 3), device=self.device)
        sums[:self._n_blocks] = self._sums[:self._n_blocks]
        self._sums = sums

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
            bc = decode_block_keys(self._keys)
            bmin = bc.min(0).values
            dims = ((bc.max(0).values - bmin + 1) * BLOCK).tolist()
            if math.prod(dims) > self.max_voxels:
                raise ValueError(f"the fused blocks span a grid of {dims} = {math.prod(dims)} voxels, more than "
                                 f"max_voxels={self.max_voxels}: far outlier depths? pass max_depth= (CLI: "
                                 "--max-depth) or a larger voxel_size")
            origin = (bmin * BLOCK).cpu().numpy().astype(np.float64) * self.voxel_size
        vox = ((bc - bmin)[:, None, :] * BLOCK + self._offsets[None]).reshape(-1, 3).cpu().numpy()
        sums = self._sums[slots]
        w = sums[:, 1].reshape(-1)
        inv_w = 1.0 / w.clamp(min=1.0)
        tsdf = np.ones(dims, np.float32)
        weight = np.zeros(dims, np.float32)
        color = np.zeros(dims + [3], np.float32)
        ix = (vox[:, 0], vox[:, 1], vox[:, 2])
        tsdf[ix] = torch.where(w > 0, sums[:, 0].reshape(-1) * inv_w, 1.0).cpu().numpy()
        weight[ix] = w.cpu().numpy()
        color[ix] = (sums[:, 2:].transpose(1, 2).reshape(-1, 3) * inv_w[:, None]).cpu().numpy()
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
