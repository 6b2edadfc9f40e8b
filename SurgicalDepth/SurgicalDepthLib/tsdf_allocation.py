"""Block allocation of the TSDF fusion (``tsdf.TSDFVolume``): the 8³-voxel blocks that a frame's truncation band
passes through, found on an adaptive quadtree over the depth image. Pure functions on torch tensors (CPU or CUDA);
shapes and units in each docstring (lengths in the volume unit).

The image is covered by square tiles of side 2^L (``depth_pyramid``'s): each tile's footprint at its farthest depth
is at most half a block wide and its depths span at most one block, so a tile's band is the segment
``[min depth − truncation, max depth + truncation]`` of its centre ray. Points along each segment are sampled every
half block; with the half-block footprint they form a grid finer than the blocks over the band. Near tissue gets
large tiles, the far lumen and occlusion edges small ones, so the samples follow the band instead of every pixel's
ray or the whole depth range of a tile.
"""
from __future__ import annotations

import math

import torch

from .tsdf_kernels import BLOCK, depth_pyramid, unique_block_keys

TILE_LEVELS = 6  # the quadtree's tiles are 1 to 2^6 = 64 pixels wide


def tile_rays(pixel_rays: torch.Tensor, level: int, block_len: float) -> torch.Tensor:
    """Ray table of the tiles of side s = 2^``level`` of the ``depth_pyramid`` grid (``TILE_LEVELS`` levels).

    Args:
        pixel_rays: float32 [H, W, 2], the normalised ray (x, y) of every pixel (``camera.pixel_rays``).
        block_len: block edge (volume unit).
    Returns:
        float32 [th·tw, 4]: the ray ``(x, y, 1)`` through the centre pixel of each tile (row-major over the grid
        padded to a multiple of 2^TILE_LEVELS; centres clamped to the image) and the depth step that advances it by
        half a block.
    """
    H, W = pixel_rays.shape[:2]
    s, side, dev = 1 << level, 1 << TILE_LEVELS, pixel_rays.device
    vc = (torch.arange(-(-H // side) * side // s, device=dev) * s + (s - 1) // 2).clamp(max=H - 1)
    uc = (torch.arange(-(-W // side) * side // s, device=dev) * s + (s - 1) // 2).clamp(max=W - 1)
    r = pixel_rays[vc][:, uc].reshape(-1, 2)
    dirs = torch.cat([r, torch.ones_like(r[:, :1])], 1)
    step = 0.5 * block_len / torch.linalg.vector_norm(dirs, dim=1)
    return torch.cat([dirs, step[:, None]], 1)


def band_tiles(d: torch.Tensor, tiles: list[torch.Tensor], focal: float, block_len: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The final quadtree tiles of depth ``d``: ``rays`` [n, 4] (their rows of ``tiles``) and ``ends`` [2, n], each
    tile's largest depth and its smallest depth negated.

    Tiles of side ``s = 2^k`` are final when no larger tile covering them is, they hold valid depth,
    ``s · max depth / focal <= half a block`` and ``max − min depth <= one block``; single pixels are always final.
    Both conditions only get easier for a tile's quarters, so a tile is covered exactly when its parent meets them.

    Args:
        d: float32 depth [H, W], 0 where invalid, with at least one valid pixel.
        tiles: ``tile_rays`` of levels 0..TILE_LEVELS for this camera. focal: the smaller focal length (pixels).
    """
    limit = 0.5 * block_len * focal  # s · depth <= limit: footprint <= half a block
    pyramid = depth_pyramid(d, TILE_LEVELS)
    nearest = -float(pyramid[-1][1].max())  # no tile is final above the size allowed at the nearest depth
    top = min(TILE_LEVELS, max(0, int(math.floor(math.log2(max(limit / nearest, 1.0))))))
    # descend from every tile of the top level through the quarters of the tiles that are not final
    candidates = torch.arange(pyramid[top][0].numel(), device=d.device)
    quarters = torch.tensor([0, 1], device=d.device)
    rays, ends = [], []
    for level in range(top, -1, -1):
        extremes = pyramid[level].view(2, -1).index_select(1, candidates)
        valid = extremes[0] > 0
        final = valid if level == 0 else (extremes[0] <= limit / (1 << level)).logical_and_(
            extremes[0] + extremes[1] <= block_len)
        keep = (final & valid).nonzero()[:, 0]
        rays.append(tiles[level].index_select(0, candidates.index_select(0, keep)))
        ends.append(extremes.index_select(1, keep))
        if level:
            split = candidates[final.logical_not_().logical_and_(valid)]
            width = pyramid[level].shape[2]  # the level below is exactly twice as wide
            first = split.div(width, rounding_mode="floor").mul_(width).add_(split).mul_(2)  # (2·row, 2·col)
            candidates = (first[:, None] + (quarters[:, None] * (2 * width) + quarters).view(-1)).view(-1)
    return torch.cat(rays), torch.cat(ends, 1)


def touched_blocks(d: torch.Tensor, tiles: list[torch.Tensor], focal: float, R: torch.Tensor,
                   camera: torch.Tensor, block_len: float, truncation: float) -> torch.Tensor:
    """Sorted unique keys (``tsdf_kernels.encode_block_keys``) of the blocks that the truncation band
    ``[depth − truncation, depth + truncation]`` of the valid pixels of ``d`` passes through.

    Args:
        d, tiles, focal: as ``band_tiles``. R: camera-to-volume rotation [3, 3]. camera: the camera centre relative
            to the volume's origin [3]. block_len: block edge; truncation: the band's half width (volume unit).
    """
    rays, ends = band_tiles(d, tiles, focal, block_len)
    rays, ends = _spread_wide_pixels(rays, ends, focal, block_len)
    z0 = torch.sub(-truncation, ends[1])  # band: [min depth − truncation, max depth + truncation]
    z1 = ends[0] + truncation
    step = rays[:, 3]
    counts = torch.ceil((z1 - z0) / step).long().add_(1)
    tile = torch.repeat_interleave(counts)
    k = torch.arange(tile.numel(), device=d.device).sub_((torch.cumsum(counts, 0) - counts)[tile]).float()
    # per tile: band start, end, step and ray direction in block units, volume frame
    per_tile = torch.cat([torch.stack([z0, z1, step]), (rays[:, :3] @ R.T).T / block_len])
    g = per_tile.index_select(1, tile)  # [6, samples]
    zs = torch.minimum(torch.addcmul(g[0], k, g[2]), g[1])
    corner = (camera / block_len + 0.5 / BLOCK)[:, None]  # +half a voxel: blocks start half a voxel before
    return unique_block_keys(torch.addcmul(corner, g[3:], zs).floor_())


#: most lateral samples per axis across one pixel (a footprint of 16 half blocks: voxels far too small for the video)
MAX_PIXEL_SAMPLES = 17


def _spread_wide_pixels(rays: torch.Tensor, ends: torch.Tensor, focal: float, block_len: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``band_tiles``' ``rays`` and ``ends`` plus, for single pixels wider than half a block at their depth (a
    low-resolution video fused with fine voxels), rays through a grid across the pixel, at most half a block apart:
    the centre ray alone misses blocks that the pixel's frustum crosses. Offsets in normalised image coordinates
    are ``pixel / focal`` (the pinhole's; with strong distortion the grid is a little narrower than the pixel)."""
    limit = 0.5 * block_len * focal  # depth at which one pixel is half a block wide
    wide = (ends[0] > limit).nonzero()[:, 0]
    if not wide.numel():
        return rays, ends
    n = min(MAX_PIXEL_SAMPLES, int(math.ceil(float(ends[0, wide].max()) / limit)) + 1)  # spacing <= half a block
    frac = torch.linspace(-0.5, 0.5, n, device=rays.device) / focal
    offsets = torch.stack(torch.meshgrid(frac, frac, indexing="ij"), -1).reshape(-1, 2)  # [n², 2]
    xy = (rays[wide, None, :2] + offsets[None]).reshape(-1, 2)
    dirs = torch.cat([xy, torch.ones_like(xy[:, :1])], 1)
    step = 0.5 * block_len / torch.linalg.vector_norm(dirs, dim=1)
    extra = torch.cat([dirs, step[:, None]], 1)
    return torch.cat([rays, extra]), torch.cat([ends, ends[:, wide].repeat_interleave(n * n, 1)], 1)
