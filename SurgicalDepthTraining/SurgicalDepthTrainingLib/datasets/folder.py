"""Generic image + depth folders (``folder``) with a declared depth encoding.

Options (all keyword):
- ``image_dir`` / ``depth_dir``: sub-folders of ``root`` (defaults: the first of ``rgb images image color`` and
  of ``depth depths`` that exists; ``"."`` = root itself);
- ``image_glob`` / ``depth_glob``: glob patterns inside them (defaults: image files / ``*``), may use ``**``;
- ``match``: ``"stem"`` (same file stem, default), ``"index"`` (same last number in the name), or a format
  string building the depth name from the image stem, e.g. ``"{stem}_depth.png"`` or ``"aov_{stem}.png"``;
- ``depth_scale`` (**required** for integer depth files): millimetres per stored unit (``depth_unit="mm"``) or
  relative units per stored unit; float files (.npy, float TIFF) default to 1.0;
- ``depth_unit``: ``"mm"`` (default) or ``"relative"``; ``invalid_value`` (default 0): the stored invalid code;
- ``require_16bit`` (default True for integer PNG/TIFF): refuse 8-bit depth files.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from SurgicalDepthLib.frame_sources import is_image_file

from ._base import DEPTH_UNITS, DatasetError, DepthDataset, Pair, frame_number, natural_order, read_raw

_DEFAULT_IMAGE_DIRS = ("rgb", "images", "image", "color")
_DEFAULT_DEPTH_DIRS = ("depth", "depths")


class Folder(DepthDataset):
    """Any images + depth files with a declared scale; see the module docstring for options."""

    name = "folder"
    depth_unit = "mm"
    min_depth = 1e-3
    max_depth = None

    def __init__(self, root, split=None, *, image_dir: str | None = None, depth_dir: str | None = None,
                 image_glob: str | None = None, depth_glob: str = "*", match: str = "stem",
                 depth_scale: float | None = None, depth_unit: str = "mm", invalid_value: float = 0,
                 require_16bit: bool = True, **options) -> None:
        if depth_unit not in DEPTH_UNITS:
            raise ValueError(f"folder: depth_unit must be one of {DEPTH_UNITS}, got {depth_unit!r}")
        if depth_scale is not None and not (isinstance(depth_scale, (int, float)) and depth_scale > 0):
            raise ValueError(f"folder: depth_scale must be a number > 0 (mm per stored unit), got {depth_scale!r}")
        self.depth_unit = depth_unit
        if depth_unit == "relative":
            self.min_depth = None
        self.depth_scale = depth_scale
        self.invalid_value = invalid_value
        self.require_16bit = bool(require_16bit)
        self._opts = dict(image_dir=image_dir, depth_dir=depth_dir, image_glob=image_glob, depth_glob=depth_glob,
                          match=match)
        if split is not None:
            raise ValueError(f"folder: has no splits, got split={split!r}; point root at the sub-folder instead")
        super().__init__(root, None, **options)

    def _pick(self, given: str | None, defaults: tuple[str, ...], what: str) -> Path:
        if given is not None:
            path = self.root / given
            if not path.is_dir():
                raise FileNotFoundError(f"folder: {what} {path} not found")
            return path
        for name in defaults:
            if (self.root / name).is_dir():
                return self.root / name
        raise FileNotFoundError(f"folder: none of {list(defaults)} found under {self.root}; "
                                f"pass {what}= to name the {what.split('_')[0]} folder")

    def _list_pairs(self) -> list[Pair]:
        o = self._opts
        img_dir = self._pick(o["image_dir"], _DEFAULT_IMAGE_DIRS, "image_dir")
        dep_dir = self._pick(o["depth_dir"], _DEFAULT_DEPTH_DIRS, "depth_dir")
        if o["image_glob"] is None:
            images = sorted((p for p in img_dir.glob("*") if p.is_file() and is_image_file(p)), key=natural_order)
        else:
            images = sorted((p for p in img_dir.glob(o["image_glob"]) if p.is_file()), key=natural_order)
        depth_files = sorted((p for p in dep_dir.glob(o["depth_glob"]) if p.is_file()), key=natural_order)
        key, depth_key, expect = self._keys(o["match"], dep_dir)
        table: dict = {}
        for p in depth_files:
            table.setdefault(depth_key(p), []).append(p)
        matched = {img: self._depth_of(img, table.get(key(img), [])) for img in images}
        # image and depth folders may coincide ("." for both): a file that is some image's depth is no image
        depths = {depth.resolve() for depth in matched.values() if depth is not None}
        pairs = []
        for img, depth in matched.items():
            if img.resolve() in depths:
                continue
            if depth is None:
                self._missing(img, expect(img))
                continue
            pairs.append(Pair(img, depth, img.parent, frame_number(img.name)))
        return pairs

    @staticmethod
    def _keys(match: str, dep_dir: Path) -> tuple[Callable, Callable, Callable]:
        """(key of an image, key of a depth file, the depth path an image expects) for the ``match`` rule."""
        if match == "stem":
            return (lambda p: p.stem), (lambda p: p.stem), (lambda p: dep_dir / f"{p.stem}.*")
        if match == "index":
            return ((lambda p: frame_number(p.name)), (lambda p: frame_number(p.name)),
                    (lambda p: dep_dir / f"*{frame_number(p.name)}*"))
        if "{stem}" in match:
            return ((lambda p: match.format(stem=p.stem)), (lambda p: p.name),
                    (lambda p: dep_dir / match.format(stem=p.stem)))
        raise ValueError(f"folder: match must be 'stem', 'index' or a format string with '{{stem}}', got {match!r}")

    @staticmethod
    def _depth_of(img: Path, candidates: list[Path]) -> Path | None:
        """The one depth file matching ``img`` (``img`` itself excluded), None without one; several are an error
        naming them (picking one silently could pair the image with a preview or another frame's depth)."""
        found = [p for p in candidates if p.resolve() != img.resolve()]
        if len(found) > 1:
            raise DatasetError(f"{img}: {len(found)} depth files match it ({', '.join(p.name for p in found[:4])}"
                               f"{', ...' if len(found) > 4 else ''}); pass depth_glob= or match= to pick one")
        return found[0] if found else None

    def decode_depth(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(path)
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and path.suffix.lower() != ".npy":
            raw = raw[..., 0]  # greyscale stored with equal channels
        if raw.ndim != 2:
            raise DatasetError(f"{path}: depth has shape {raw.shape}, expected [H, W]")
        if raw.dtype.kind in "ui":
            if self.require_16bit and raw.dtype == np.uint8:
                raise DatasetError(f"{path}: depth file is 8-bit uint8, expected 16-bit (pass "
                                   f"require_16bit=False if 8-bit depth is intended)")
            if self.depth_scale is None:
                raise DatasetError(f"{path}: integer depth ({raw.dtype}) needs depth_scale= (mm per unit)")
        elif raw.dtype.kind != "f":
            raise DatasetError(f"{path}: depth dtype {raw.dtype} is not numeric")
        scale = 1.0 if self.depth_scale is None else float(self.depth_scale)
        valid = np.isfinite(raw) & (raw != self.invalid_value) & (raw > 0)
        with np.errstate(over="ignore"):
            scaled = np.where(valid, raw.astype(np.float64) * scale, 0).astype(np.float32)
        valid &= np.isfinite(scaled)  # a stored value beyond float32 once scaled is no depth
        return np.where(valid, scaled, 0).astype(np.float32), valid
