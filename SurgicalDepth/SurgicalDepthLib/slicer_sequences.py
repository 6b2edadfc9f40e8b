"""One frame's outputs into MRML nodes, given Slicer's ``slicer.util`` (this module imports no Slicer module).

The Surgical Depth module calls :func:`store_outputs` for each frame a run yields (into the scene-less nodes it
reuses per output kind, then into the run's sequences) and for each live image (into the browser's proxies), then
:func:`fill_browser` to play the run's sequences in its new browser."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["fill_browser", "store_outputs"]


def store_outputs(util: Any, nodes: Any, temps: dict[str, Any], value: str | None, ijk: np.ndarray,
                  outputs: dict[str, Any]) -> None:
    """Write ``outputs`` (``slicer_run.frame_outputs``: kind -> array, 4×4 pose or ``vtkPolyData``) into
    ``temps[kind]``; with an index ``value``, also into the sequence ``getattr(nodes, kind)`` at that value (None:
    shown only, e.g. a live image past the recorded ones). Volumes take the input frame's 4×4 IJK→RAS ``ijk``;
    ``util`` is ``slicer.util``."""
    for kind, data in outputs.items():
        node = temps[kind]
        if kind in ("frames", "depth"):
            util.updateVolumeFromArray(node, data)
            node.SetIJKToRASMatrix(util.vtkMatrixFromArray(ijk))  # the input frame's geometry
        elif kind == "poses":
            util.updateTransformMatrixFromArray(node, data)
        else:
            node.SetAndObserveMesh(data)
        if value is not None:
            getattr(nodes, kind).SetDataNodeAtValue(node, value)


def fill_browser(browser: Any, sequences: list[Any], fps: float) -> None:
    """Make the new ``vtkMRMLSequenceBrowserNode`` ``browser`` play the run's filled ``sequences`` in sync (the first,
    the depth, is the master) at ``fps`` frames per second, showing its first item.

    The item is selected explicitly: ``AddSynchronizedSequenceNode`` picks the selected item before it registers
    the first sequence (``vtkMRMLSequenceBrowserNode::AddSynchronizedSequenceNodeID``), so a browser built over
    filled sequences keeps item -1 ("none"), and ``UpdateProxyNodesFromSequences`` then shows index value "0" of
    every sequence (``vtkSlicerSequencesLogic.cxx``): an input browser's shared frames at its item 0 under the depth
    of another frame, and "run on current frame" refusing the run's browser as input."""
    for sequence in sequences:
        browser.AddSynchronizedSequenceNode(sequence)
    browser.SetPlaybackRateFps(float(fps))
    browser.SetSelectedItemNumber(0)
