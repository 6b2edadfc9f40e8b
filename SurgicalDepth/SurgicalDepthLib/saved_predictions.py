"""Predictions that ``surgical-depth predict`` wrote, read back as a depth source for :func:`depth_stream`.

``predict`` writes, for each video (or image folder given with ``--video``), a folder ``OUT/<name>/`` holding one
map per frame, ``<source index:06d>.<format>``, and the description :data:`INFO_NAME`::

    {"model": "...", "output_kind": "disparity" | "depth", "depth_unit": "relative" | "m" | "mm",
     "format": "npy" | "png" | "nrrd" | "tiff", "size": [H, W], "input": "...", "reference_fov_deg": 100 | null}

(``reference_fov_deg``: the reference lens the maps still read as — a model with one, predicted without
``--intrinsics`` — so that ``reconstruct --depth ... --intrinsics`` corrects them to the lens as it corrects the
model's own output; null: corrected already, or a model without one; missing in older folders: null.)

``reconstruct --depth OUT/<name>`` then builds geometry from these maps instead of running the model again.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .atomic_io import atomic_path
from .depth_io import load_depth
from .depth_kind import OutputKind
from .lens import model_reference_fov

INFO_NAME = "predictions.json"


def write_info(path: str | os.PathLike, *, model: Any, file_format: str, size: tuple[int, int],
               source: str, lens_corrected: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write the description :data:`INFO_NAME` of a prediction folder to ``path`` (atomically); ``model`` gives
    source, kind and unit. ``reference_fov_deg`` records the reference lens the maps still read as (None when
    ``lens_corrected`` or the model has none), so a later run given the calibration corrects them as it would
    correct the model's own output. ``extra``: more JSON fields the writing command records (predict's
    ``fov_masks``)."""
    reference = None if lens_corrected else model_reference_fov(model)
    data = {"model": str(getattr(model, "source", model)), "output_kind": str(OutputKind.parse(model.output_kind).value),
            "depth_unit": model.depth_unit, "format": file_format, "size": [int(size[0]), int(size[1])],
            "input": str(source), "reference_fov_deg": reference, **(extra or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return path


class SavedPredictions:
    """A prediction folder written by ``predict``: has the model attributes :func:`depth_stream` reads
    (``output_kind``, ``depth_unit``, ``source``) and yields stored maps instead of running a network."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        info = self.folder / INFO_NAME
        if not info.is_file():
            raise FileNotFoundError(f"{self.folder} is not a prediction folder of 'surgical-depth predict' "
                                    f"(no {INFO_NAME}); predict the video first, or folders with --video")
        try:
            data = json.loads(info.read_text())
            self.output_kind = OutputKind.parse(data["output_kind"]).value
            self.depth_unit = str(data["depth_unit"])
            self.format = str(data["format"])
            self.size = (int(data["size"][0]), int(data["size"][1]))
        except (KeyError, TypeError, IndexError, json.JSONDecodeError) as exc:
            raise ValueError(f"{info}: not a valid prediction description ({exc})") from None
        self.source = str(data.get("model", self.folder))
        # the maps' reference lens, as a model's config carries it (lens.model_reference_fov reads it there)
        self.config = SimpleNamespace(reference_fov_deg=data.get("reference_fov_deg"))
        self.default_batch_size = 1

    def path(self, index: int) -> Path:
        return self.folder / f"{int(index):06d}.{self.format}"

    def check_frames(self, indices: Iterable[int], size: tuple[int, int]) -> None:
        """Before any output: every frame of ``indices`` (source frame numbers) has a map here, and the frames'
        ``size`` ``(H, W)`` is the maps' size. Raises FileNotFoundError / ValueError naming the folder, the first
        missing frame, and the ``--stride`` / ``--max-frames`` the maps were predicted with where they tell."""
        if tuple(size) != self.size:
            raise ValueError(f"{self.folder} holds maps of {self.size[0]}x{self.size[1]} but the frames are "
                             f"{size[0]}x{size[1]}: predictions of another video")
        indices = list(indices)
        missing = [i for i in indices if not self.path(i).is_file()]
        if not missing:
            return
        held = sorted(int(f.stem) for f in self.folder.glob(f"*.{self.format}") if f.stem.isdigit())
        raise FileNotFoundError(f"{self.folder} has no prediction for frame {missing[0]} (missing: {len(missing)} "
                                f"of the {len(indices)} frames asked for); {_held_frames(held)}")

    def predictions(self, items: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(index, rgb, stored map)`` for each ``(index, rgb)``; a missing map or a size mismatch is an error
        naming the file."""
        for index, rgb in items:
            path = self.path(index)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: {self.folder} has no prediction for frame {index}")
            pred = load_depth(path)
            if self.format == "png":  # PNG stores invalid values as 0
                pred[pred == 0] = np.nan
            if pred.shape != rgb.shape[:2]:
                raise ValueError(f"{path} is {pred.shape[0]}x{pred.shape[1]} but frame {index} is "
                                 f"{rgb.shape[0]}x{rgb.shape[1]}")
            yield index, rgb, pred


def _held_frames(held: list[int]) -> str:
    """What a prediction folder holds, and the options that select exactly those frames when there are such."""
    if not held:
        return "it holds no maps"
    step = held[1] - held[0] if len(held) > 1 else 1
    if held[0] == 0 and step > 0 and held == list(range(0, step * len(held), step)):
        return (f"it holds frames 0 to {held[-1]} every {step}: give the --stride {step} and --max-frames "
                f"{len(held)} predict was given")
    return f"it holds {len(held)} frames from {held[0]} to {held[-1]}"
