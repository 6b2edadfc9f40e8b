"""Dataset loaders reading each public surgical/endoscopic depth dataset in its original layout and encoding.

``open_dataset(name, root, split=None, **options)`` returns a ``torch.utils.data.Dataset`` of sample dicts
(``image`` uint8 [H, W, 3] RGB, ``depth`` float32 [H, W], ``valid`` bool [H, W], ``depth_unit``, ``intrinsics``,
``pose``, ``name``; see :mod:`._base`). Each dataset exposes ``depth_unit`` ("mm" or "relative") and the default
evaluation range ``min_depth`` / ``max_depth`` (mm; None for relative data) as attributes.

``DATASETS`` is the one registry (name -> loader class); ``list_datasets()`` lists its names.
``collate_samples`` is a ``DataLoader`` ``collate_fn`` for these dicts (None intrinsics/poses kept as lists).
Unlabeled frames (semi-supervised training; no depth, not in ``DATASETS``): ``open_unlabeled`` (:mod:`.frames`).
"""
from __future__ import annotations

import os
from typing import Any

from ._base import DatasetError, DepthDataset, Pair, collate_samples
from .c3vd import C3VD
from .endoslam import EndoSLAM
from .folder import Folder
from .frames import UNLABELED_FRAMES, UnlabeledFrames, open_unlabeled
from .hamlyn import Hamlyn
from .liit import LIIT
from .scared import SCARED
from .servct import SERVCT
from .simcol import ColonDepth, SimCol3D
from .synthetic import Synthetic

DATASETS: dict[str, type[DepthDataset]] = {
    "colondepth": ColonDepth,
    "endoslam": EndoSLAM,
    "c3vd": C3VD,
    "simcol3d": SimCol3D,
    "scared": SCARED,
    "hamlyn": Hamlyn,
    "servct": SERVCT,
    "liit": LIIT,
    "synthetic": Synthetic,
    "folder": Folder,
}

__all__ = ["DATASETS", "UNLABELED_FRAMES", "DatasetError", "DepthDataset", "Pair", "UnlabeledFrames", "collate_samples",
           "list_datasets", "open_dataset", "open_unlabeled"]


def list_datasets() -> list[str]:
    """Registered dataset names, in registry order."""
    return list(DATASETS)


def open_dataset(name: str, root: str | os.PathLike, split: str | list[str] | None = None,
                 **options: Any) -> DepthDataset:
    """Open dataset ``name`` at ``root`` (the dataset root or one of its sequence folders).

    Args:
        name: one of :func:`list_datasets` (case-insensitive).
        root: folder holding the data in the dataset's published layout.
        split: dataset-specific subset (see each loader), or None for everything found.
        **options: loader options: ``skip_bad``, ``min_depth``, ``max_depth``, ``intrinsics`` for all; others
            per loader (e.g. ``organ=`` for endoslam, ``side=`` for hamlyn, ``depth_scale=`` for folder).
    Raises:
        ValueError: unknown name or option; FileNotFoundError: missing root or no pairs found;
        DatasetError: a bad file (the message names it).
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list_datasets()}")
    loader = DATASETS[key]
    unknown = sorted(set(options) - loader.option_names())
    if unknown:
        raise ValueError(f"dataset {key!r}: unknown option(s) {unknown}; expected some of "
                         f"{sorted(loader.option_names())}")
    return loader(root, split, **options)
