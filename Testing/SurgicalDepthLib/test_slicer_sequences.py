"""Tests of SurgicalDepthLib.slicer_sequences with a recording stand-in for ``slicer.util`` and MRML nodes (Slicer
cannot run here; the module's self-tests store real runs and live images in Slicer)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from SurgicalDepthLib.slicer_sequences import store_outputs


class Recorder:
    """Any method call is recorded as ``(owner, name, args)`` in the shared ``log``."""

    def __init__(self, owner: str, log: list):
        self._owner, self._log = owner, log

    def __getattr__(self, name):
        return lambda *args: self._log.append((self._owner, name, args))


def test_each_output_goes_to_its_node_and_only_recorded_frames_to_the_sequences():
    """Catches a live image past the recorded budget (index value None) written into the sequences anyway, a volume
    stored without the input frame's geometry, and a pose or mesh sent through the volume path."""
    log: list = []
    util = Recorder("util", log)
    util.vtkMatrixFromArray = lambda m: ("matrix", m.tobytes())
    kinds = ("depth", "frames", "poses", "points")
    temps = {kind: Recorder(f"temp {kind}", log) for kind in kinds}
    nodes = SimpleNamespace(**{kind: Recorder(f"sequence {kind}", log) for kind in kinds})
    ijk = np.diag([0.5, 0.5, 1.0, 1.0])
    outputs = {"depth": np.ones((1, 2, 3), np.float32), "frames": np.zeros((1, 2, 3, 3), np.uint8),
               "poses": np.eye(4), "points": "polydata"}
    store_outputs(util, nodes, temps, None, ijk, outputs)
    assert [entry[:2] for entry in log] == [
        ("util", "updateVolumeFromArray"), ("temp depth", "SetIJKToRASMatrix"),
        ("util", "updateVolumeFromArray"), ("temp frames", "SetIJKToRASMatrix"),
        ("util", "updateTransformMatrixFromArray"), ("temp points", "SetAndObserveMesh")]
    assert log[1][2] == (("matrix", ijk.tobytes()),) and log[5][2] == ("polydata",)
    log.clear()
    store_outputs(util, nodes, temps, "7", ijk, {"depth": outputs["depth"], "points": "polydata"})
    stored = [(owner, args[1]) for owner, name, args in log if name == "SetDataNodeAtValue"]
    assert stored == [("sequence depth", "7"), ("sequence points", "7")]
