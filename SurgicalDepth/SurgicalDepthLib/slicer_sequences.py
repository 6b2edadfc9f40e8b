"""One frame's outputs into MRML nodes, given Slicer's ``slicer.util`` (this module imports no Slicer module).

The Surgical Depth module calls :func:`store_outputs` for each frame a run yields (into the scene-less nodes it
reuses per output kind, then into the run's sequences) and for each live image (into the browser's proxies)."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["store_outputs"]


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
