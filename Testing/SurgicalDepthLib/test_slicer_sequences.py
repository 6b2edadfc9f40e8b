"""Tests of SurgicalDepthLib.slicer_sequences with a recording stand-in for ``slicer.util`` and MRML nodes (Slicer
cannot run here; the module's self-tests store real runs and live images in Slicer)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from SurgicalDepthLib.slicer_sequences import fill_browser, store_outputs


class Recorder:
    """Any method call is recorded as ``(owner, name, args)`` in the shared ``log``."""

    def __init__(self, owner: str, log: list):
        self._owner, self._log = owner, log

    def __getattr__(self, name):
        return lambda *args: self._log.append((self._owner, name, args))


class SlicerUtil(Recorder):
    """``slicer.util`` as strict as Slicer's (Base/Python/slicer/util.py): ``updateVolumeFromArray`` refuses int64
    voxels and arrays of more than 4 axes, ``updateTransformMatrixFromArray`` anything but 4×4 and
    ``vtkMatrixFromArray`` anything but 3×3 / 4×4 (RuntimeError), so that the recording stand-in accepts no call
    that Slicer would reject."""

    def updateVolumeFromArray(self, node, narray):
        if narray.ndim > 4 or narray.dtype == np.int64:
            raise RuntimeError(f"Unsupported numpy array: {narray.shape} {narray.dtype}")
        self._log.append(("util", "updateVolumeFromArray", (node, narray)))

    def updateTransformMatrixFromArray(self, node, narray):
        if np.shape(narray) != (4, 4):
            raise RuntimeError(f"Unsupported numpy array shape: {np.shape(narray)} expected (4,4)")
        self._log.append(("util", "updateTransformMatrixFromArray", (node, narray)))

    def vtkMatrixFromArray(self, narray):
        if narray.shape not in ((4, 4), (3, 3)):
            raise RuntimeError(f"Unsupported numpy array shape: {narray.shape} expected (4,4)")
        return ("matrix", narray.tobytes())


def test_slicer_util_stand_in_is_as_strict_as_slicer():
    """The stand-in refuses what Slicer refuses (a looser one would hide a wrong shape or type)."""
    util = SlicerUtil("util", [])
    for call, args in ((util.updateVolumeFromArray, (None, np.zeros((1, 2, 2), np.int64))),
                       (util.updateVolumeFromArray, (None, np.zeros((1, 1, 2, 2, 3), np.uint8))),
                       (util.updateTransformMatrixFromArray, (None, np.eye(3))),
                       (util.vtkMatrixFromArray, (np.eye(2),))):
        with pytest.raises(RuntimeError, match="Unsupported"):
            call(*args)


def test_each_output_goes_to_its_node_and_only_recorded_frames_to_the_sequences():
    """Catches a live image past the recorded budget (index value None) written into the sequences anyway, a volume
    stored without the input frame's geometry, and a pose or mesh sent through the volume path."""
    log: list = []
    util = SlicerUtil("util", log)
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


class NumericSequence:
    """A ``vtkMRMLSequenceNode`` with a numeric index: its index values and the lookup Slicer does
    (``GetItemNumberFromIndexValue``: below the first value the first item, else the last item at or below it)."""

    def __init__(self, values: list[str]):
        self.values = values

    def GetNumberOfDataNodes(self):
        return len(self.values)

    def GetNthIndexValue(self, n):
        return self.values[n]

    def item_at(self, value: str) -> int:
        below = [i for i, v in enumerate(self.values) if float(v) <= float(value) + 0.001]
        return below[-1] if below else 0


class SlicerBrowser:
    """A ``vtkMRMLSequenceBrowserNode`` as Slicer's code behaves (Modules/Loadable/Sequences): the first synchronized
    sequence is the master; adding the first one selects item 0 only if the master (not registered yet) had items,
    i.e. never (``AddSynchronizedSequenceNodeID``); ``proxy_values`` is which index value each sequence's proxy shows
    after ``UpdateProxyNodesFromSequences`` (the selected item's value, or "0" when none is selected)."""

    def __init__(self):
        self.sequences, self.selected, self.fps = [], -1, 10.0

    def AddSynchronizedSequenceNode(self, sequence):
        if not self.sequences:  # Slicer: SetSelectedItemNumber(GetNumberOfItems() > 0 ? 0 : -1), no master yet
            self.selected = -1
        self.sequences.append(sequence)

    def SetSelectedItemNumber(self, n):
        self.selected = int(n)

    def SetPlaybackRateFps(self, fps):
        assert isinstance(fps, float)  # vtkSetMacro(PlaybackRateFps, double)
        self.fps = fps

    def proxy_values(self) -> list[str]:
        master = self.sequences[0]
        value = master.GetNthIndexValue(self.selected) if 0 <= self.selected < master.GetNumberOfDataNodes() else "0"
        return [s.GetNthIndexValue(s.item_at(value)) for s in self.sequences]


def test_fill_browser_shows_the_frame_the_depth_was_computed_from():
    """Catches a run's browser left with no selected item (-1): Slicer then shows index value "0" of every
    sequence, so "run on current frame" of frame 7 of an input browser put the depth of frame 7 over the RGB of
    frame 0 (the input's shared sequence), and the run's browser could not be the input of "run on current frame"."""
    frames = NumericSequence([str(i) for i in range(10)])  # the input browser's sequence, shared
    depth, points = NumericSequence(["7"]), NumericSequence(["7"])
    browser = SlicerBrowser()
    fill_browser(browser, [depth, frames, points], 25)
    assert browser.sequences[0] is depth and browser.fps == 25.0
    assert browser.selected == 0 and browser.proxy_values() == ["7", "7", "7"]
