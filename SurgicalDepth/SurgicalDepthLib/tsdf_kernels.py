"""Tensor kernels of the TSDF fusion (``tsdf.TSDFVolume``): block hash keys, the depth pyramid of the block
allocation, the padded-image pixel index and packed colour, and the choice between these torch ops and the fused
kernels (``tsdf_triton`` on CUDA, ``tsdf_numba`` on the CPU). Pure functions on torch tensors (CPU or CUDA);
shapes and units in each docstring.
Block keys: 21 bits per block coordinate in one int64, lexicographic order.
"""
from __future__ import annotations

import importlib
import importlib.util
import math

import torch

BLOCK = 8  # voxels per block side (sparse mode)
_KEY_BITS = 21  # block coordinate bits per axis in the int64 hash key
_KEY_OFF = 1 << (_KEY_BITS - 1)
#: block coordinates a key holds per axis: [−KEY_REACH, KEY_REACH)
KEY_REACH = _KEY_OFF


def decode_block_keys(keys: torch.Tensor) -> torch.Tensor:
    """Block coordinates int64 [n, 3] from hash keys [n] (inverse of ``encode_block_keys``)."""
    mask = (1 << _KEY_BITS) - 1
    return torch.stack([(keys >> (2 * _KEY_BITS)) & mask, (keys >> _KEY_BITS) & mask, keys & mask], 1) - _KEY_OFF


def encode_block_keys(bc: torch.Tensor) -> torch.Tensor:
    """Hash keys int64 [n] of block coordinates int64 [n, 3] (each in [−2^20, 2^20)); key order is lexicographic
    coordinate order. Inverse of ``decode_block_keys``."""
    b = bc + _KEY_OFF
    return (b[:, 0] << (2 * _KEY_BITS)) | (b[:, 1] << _KEY_BITS) | b[:, 2]


def unique_block_keys(bc: torch.Tensor) -> torch.Tensor:
    """Sorted unique keys (``encode_block_keys``) of block coordinates given as planes [3, n] (n > 0, with
    duplicates) of integral float32 values (floored coordinates).

    Marks the blocks in an occupancy grid over their bounding box when that box is small (at most 16 cells per
    coordinate given, or 2^16 cells), which is faster than sorting the keys; ``torch.unique`` otherwise.
    """
    lo, hi = bc.amin(1), bc.amax(1)
    ext = (hi - lo + 1).tolist()
    n_cells = math.prod(ext) if all(math.isfinite(e) for e in ext) else math.inf
    if n_cells > max(16 * bc.shape[1], 1 << 16) or n_cells >= 1 << 24:
        return torch.unique(encode_block_keys(bc.T.long()))
    ext, n_cells = [int(e) for e in ext], int(n_cells)
    # cell index (x·ext_y + y)·ext_z + z in float32: products and sums are integers below 2^24, hence exact
    rel = bc - lo[:, None]
    cell = rel[0].mul(ext[1] * ext[2]).add_(rel[1], alpha=ext[2]).add_(rel[2]).long()
    occupied = torch.zeros(n_cells, dtype=torch.bool, device=bc.device).index_fill_(0, cell, True)
    return occupied_block_keys(occupied, lo.long(), ext)


def occupied_block_keys(occupied: torch.Tensor, lo: torch.Tensor, ext: list[int]) -> torch.Tensor:
    """Sorted keys (``encode_block_keys``) of the occupied cells of a block grid.

    Args:
        occupied: bool [ext_x·ext_y·ext_z], cell ``(x·ext_y + y)·ext_z + z`` for block ``lo + (x, y, z)``.
        lo: int64 [3], the grid's first block. ext: its extent in blocks per axis.
    """
    plane = ext[1] * ext[2]
    cell = occupied.nonzero()[:, 0]  # ascending = lexicographic (x, y, z) order = key order
    return encode_block_keys(torch.stack([cell // plane, cell % plane // ext[2], cell % ext[2]], 1) + lo)


def depth_pyramid(depth: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Depth extremes of the square tiles of side 2^L, L = 0..``levels``, of ``depth`` float32 [H, W] (0 = invalid,
    else > 0).

    Level L is float32 [2, h_L, w_L]: plane 0 the tile's largest depth (0 when it has no valid pixel), plane 1 its
    smallest valid depth negated (−float32 max when none). The image is padded with invalid pixels to a multiple of
    2^levels on both sides, so every level halves the one below exactly: tile (i, j) of level L + 1 holds tiles
    (2i + a, 2j + b), a, b ∈ {0, 1}, of level L, and tiles are aligned with the image origin.
    """
    side = 1 << levels
    H, W = depth.shape
    big = torch.finfo(torch.float32).max
    base = depth.new_empty((2, -(-H // side) * side, -(-W // side) * side))
    base[0, H:].zero_()
    base[0, :H, W:].zero_()
    base[1, H:].fill_(-big)
    base[1, :H, W:].fill_(-big)
    base[0, :H, :W] = depth
    # invalid pixels: −(0 + big); arithmetic rather than masked_fill, which is ~10× slower on the CPU
    torch.add(depth, torch.eq(depth, 0.0, out=torch.empty_like(depth)), alpha=big, out=base[1, :H, :W]).neg_()
    pyramid = [base]
    for _ in range(levels):  # 2×2 maxima as two strided maxima: ~15× faster than max_pool2d on the CPU
        rows = torch.maximum(pyramid[-1][:, 0::2], pyramid[-1][:, 1::2])
        pyramid.append(torch.maximum(rows[:, :, 0::2], rows[:, :, 1::2]))
    return pyramid


def valid_depth(depth: torch.Tensor, max_depth: float | None) -> torch.Tensor:
    """``depth`` float32 [H, W] with 0 where it carries no information: NaN, ±inf, ``<= 0`` or ``> max_depth``
    (when not None); valid values are returned unchanged (a new tensor)."""
    d = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)
    if max_depth is not None:
        d.mul_(torch.le(d, max_depth, out=torch.empty_like(d)))
    return d


def padded(img: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Image [H, W, ...] with a one-pixel border of ``fill``, flattened to [(H + 2)·(W + 2), ...]."""
    out = img.new_full((img.shape[0] + 2, img.shape[1] + 2) + tuple(img.shape[2:]), fill)
    out[1:-1, 1:-1] = img
    return out.view((out.shape[0] * out.shape[1],) + tuple(img.shape[2:]))


def pixel_index_(u: torch.Tensor, v: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Flat index into a ``padded`` image of size ``width × height`` of the pixel containing (u, v).

    Args:
        u, v: float32 coordinates in the padded image (same shape; its pixel (i, j) covers u ∈ [i, i + 1),
            v ∈ [j, j + 1), so image pixel (i, j) is padded pixel (i + 1, j + 1)); no NaN. Coordinates beyond the
            image land on the border. Both are overwritten (used as scratch).
    Returns:
        int32 (int64 for padded images of 2^31 pixels or more) tensor of u's shape: ``(j + 1)·(width + 2) + i + 1``
        inside the image, an index into the border outside it.
    """
    dtype = torch.int32 if (height + 2) * (width + 2) < 1 << 31 else torch.int64
    # clamped to [0, size + 1], truncation towards zero is the floor
    col = u.clamp_(0, width + 1).to(dtype)
    return col.add_(v.clamp_(0, height + 1).to(dtype), alpha=width + 2)


def pack_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 colours [..., 3] → float32 [...] holding ``r·65536 + g·256 + b`` exactly (an integer below 2^24)."""
    c = rgb.to(torch.float32)
    return torch.add(c[..., 2], c[..., 1], alpha=256).add_(c[..., 0], alpha=65536)


def unpack_rgb_(planes: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_rgb``, in place: float32 planes [3, ...] whose plane 2 holds packed colours on entry
    (planes 0 and 1 are overwritten) → (r, g, b) planes in 0–255 (a packed 0 gives black). Returns ``planes``."""
    packed = planes[2]
    r = torch.mul(packed, 1.0 / 65536, out=planes[0]).floor_()
    packed.add_(r, alpha=-65536)  # g·256 + b, exact
    g = torch.mul(packed, 1.0 / 256, out=planes[1]).floor_()
    packed.add_(g, alpha=-256)
    return planes


KERNELS = ("auto", "torch", "triton", "numba")  # TSDFVolume(kernel=...): fused kernels in tsdf_triton, tsdf_numba


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """``TSDFVolume``'s ``kernel`` argument → ``"torch"``, ``"triton"`` or ``"numba"``; ``"auto"`` picks Triton on
    CUDA devices and Numba on the CPU where they are installed, else torch ops. ValueError naming the value when
    the kernel is unknown, not installed or does not run on ``device``."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        fused = "triton" if device.type == "cuda" else "numba" if device.type == "cpu" else "torch"
        return fused if fused != "torch" and importlib.util.find_spec(fused) is not None else "torch"
    if kernel != "torch":
        if importlib.util.find_spec(kernel) is None:
            extra = "pip install triton" if kernel == "triton" else "pip install surgical-depth[fast]"
            raise ValueError(f"kernel={kernel!r} needs the {kernel} package ({extra})")
        if not importlib.import_module(f".tsdf_{kernel}", __package__).usable_on(device):
            where = "CUDA devices (or in Triton's interpreter, TRITON_INTERPRET=1)" if kernel == "triton" else "the CPU"
            raise ValueError(f"kernel={kernel!r} runs on {where}, not on {device}")
    return kernel
