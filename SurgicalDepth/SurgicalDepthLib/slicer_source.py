"""The frames one Slicer run reads, without MRML: which items of a source (:func:`select_frames`) and the
:class:`FrameSource` that the module builds from a video (:func:`video_source`), or from the frames of a sequence
browser or a volume (:func:`array_source`); :func:`~SurgicalDepthLib.slicer_run.run_frames` streams it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .slicer_helpers import image_ijk_to_ras, index_value

__all__ = ["FrameSource", "array_source", "check_rgb_sequence", "select_frames", "video_source", "volume_array"]


def select_frames(n_items: int, start: int = 0, stride: int = 1, max_frames: int = 0,
                  current: int | None = None) -> range:
    """Items of an ``n_items`` long source to process: the ``current`` item alone when given ("run on current
    frame"), else ``start, start + stride, ...``, at most ``max_frames`` of them (0 = no limit).

    Raises ValueError naming the value when the selection is empty or an argument is out of range.
    """
    for name, value, low in (("start frame", start, 0), ("frame stride", stride, 1), ("max. frames", max_frames, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if n_items < 1:
        raise ValueError("the input has no frames")
    if current is not None:
        if not 0 <= current < n_items:
            raise ValueError(f"the selected item {current} is not one of the {n_items} frames (is an item "
                             "selected in the sequence browser?)")
        return range(current, current + 1)
    if start >= n_items:
        raise ValueError(f"start frame {start} is past the last frame ({n_items - 1})")
    stop = n_items if max_frames == 0 else min(n_items, start + max_frames * stride)
    return range(start, stop, stride)


@dataclass
class FrameSource:
    """The frames one run reads (built by the module from a video, a sequence browser or a volume).

    ``frames``: what :func:`~SurgicalDepthLib.stream.depth_stream` takes (an opened ``FrameReader`` or an iterable
    of RGB arrays); ``items``: the selected source items; ``by_source_index``: whether the stream's
    ``DepthFrame.index`` is already the source item (a ``FrameReader``) or the position in ``items``;
    ``index_value(item)``: the output sequences' index value; ``ijk_to_ras(item)``: 4×4 geometry of the depth
    volume; ``sequence``: the input's own RGB frames sequence, shared by the outputs' browser (None: the run
    stores the RGB frames it reads in a new sequence).
    """

    name: str
    frames: Any
    items: range
    width: int
    height: int
    index_value: Callable[[int], str]
    ijk_to_ras: Callable[[int], np.ndarray]
    fps: float | None = None
    sequence: Any = None
    by_source_index: bool = False

    @property
    def count(self) -> int:
        return len(self.items)

    def item(self, stream_index: int) -> int:
        """Source item of a ``DepthFrame.index``."""
        return stream_index if self.by_source_index else self.items[stream_index]


def video_source(path: Any, start: int = 0, stride: int = 1, max_frames: int = 0,
                 current_only: bool = False) -> FrameSource:
    """:class:`FrameSource` of a video, image folder, glob or image (``sd.open_frames``): opened, not decoded.

    ``current_only``: only the first frame of the range (what "run on current frame" means for a file). Its
    geometry is :func:`~slicer_helpers.image_ijk_to_ras`; index values are frame times when the fps is known.
    """
    from .video import open_frames

    with open_frames(path) as probe:
        items = select_frames(probe.frame_count, start, stride, 1 if current_only else max_frames)
    # without a limit, read to the end: a container may announce fewer frames than it holds (the reader reads on)
    unlimited = max_frames == 0 and not current_only
    reader = open_frames(path, start=items.start, stop=None if unlimited else items.stop, stride=items.step,
                         prefetch=2)
    height, width = reader.size
    ijk = image_ijk_to_ras(width, height)
    return FrameSource(Path(str(path)).stem or "video", reader, items, width, height,
                       lambda item: index_value(item, reader.fps), lambda item: ijk, fps=reader.fps,
                       by_source_index=True)


#: data node classes of a sequence of RGB frames: vector volumes, and the streaming volumes (a subclass) that
#: Slicer's video readers (SlicerIGSIO: mkv/webm) and OpenIGTLink VIDEO store compressed frames in, decoded when read
RGB_VOLUME_CLASSES = ("vtkMRMLVectorVolumeNode", "vtkMRMLStreamingVolumeNode")


def check_rgb_sequence(class_name: str | None) -> None:
    """ValueError unless a browser's master sequence holds RGB vector volumes (``class_name``: its data nodes')."""
    if class_name not in RGB_VOLUME_CLASSES:
        raise ValueError("process: give videoPath, volume or a browser whose master sequence holds RGB vector "
                         f"volumes (vtkMRMLVectorVolumeNode), not {class_name}")


def volume_array(image_data: Any) -> np.ndarray:
    """The voxels of a volume node's ``GetImageData()`` as a numpy view ``[K, J, I, C]`` — what
    ``slicer.util.arrayFromVolume`` returns for a vector volume — for every RGB volume class: a streaming volume's
    ``GetImageData()`` decodes its current frame, while ``arrayFromVolume`` refuses the class ("Unsupported volume
    type": it compares exact class names, Base/Python/slicer/util.py). ValueError when there is no image yet."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    scalars = None if image_data is None else image_data.GetPointData().GetScalars()
    if scalars is None:
        raise ValueError("the volume holds no image (has a frame been received?)")
    i, j, k = image_data.GetDimensions()
    return vtk_to_numpy(scalars).reshape(k, j, i, scalars.GetNumberOfComponents())


def array_source(name: str, arrays: list, items: range, index_value: Callable[[int], str],
                 ijk_to_ras: Callable[[int], np.ndarray], sequence: Any = None) -> FrameSource:
    """:class:`FrameSource` of RGB volume arrays ``[1, H, W, C >= 3]`` (one per item; views into the volumes'
    memory, made by the caller on the main thread): the stream's reading thread only copies their pixels."""
    from .slicer_helpers import check_rgb_dtype, rgb_from_volume_array

    if not arrays or np.ndim(arrays[0]) != 4:
        raise ValueError(f"{name}: expected RGB vector volumes [1, H, W, 3], got "
                         f"{np.shape(arrays[0]) if arrays else 'no frame'}")
    check_rgb_dtype(arrays[0].dtype, name)  # before the model loads, not in the stream's reading thread
    frames = (rgb_from_volume_array(array, name) for array in arrays)
    return FrameSource(name, frames, items, arrays[0].shape[2], arrays[0].shape[1], index_value, ijk_to_ras,
                       sequence=sequence)
