"""Scenario self-tests of the Surgical Depth logic in real Slicer (ctest ``py_SurgicalDepthLogicTest``; the
module's own ``SurgicalDepthTest`` stays short so that ``SurgicalDepth.py`` stays thin).

Each test runs ``SurgicalDepthLogic.process`` on a synthetic clip rendered by SurgicalDepthTrainingLib and is
skipped with a message when the Python packages are missing in testing mode (extension build machines install
nothing). Run in Slicer: ``slicer.testing.runUnitTest(['<this folder>'], 'SurgicalDepthLogicTest')``.
"""
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

import SurgicalDepth  # the module (not its test class: the test loader would run it here too)


class SurgicalDepthLogicTest(ScriptedLoadableModuleTest):
    """Current frame of a browser, a whole clip with a stride, and cancel."""

    def setUp(self):
        SurgicalDepth.SurgicalDepthTest.setUp(self)  # clears the scene; skips when packages are missing in testing
        import SurgicalDepthTrainingLib as sdt
        from SurgicalDepthLib.video import write_image
        self.logic = SurgicalDepth.SurgicalDepthLogic()
        self.folder = slicer.util.tempDirectory("SurgicalDepthLogicTest")
        self.clip = sdt.render_clip("colon", n_frames=6, seed=3, height=56, width=70)
        for i, frame in enumerate(self.clip):
            write_image(Path(self.folder) / f"{i:03d}.png", frame["image"])

    def test_browser_current_frame(self):
        """The browser's selected item is processed (not item 0, no re-decode); depth gets its IJK to RAS."""
        import numpy as np
        import SurgicalDepthLib as sd
        ijk = np.array([[0.5, 0, 0, 10], [0, 0.5, 0, -20], [0, 0, 2, 30], [0, 0, 0, 1]])
        seq, temp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode"), slicer.vtkMRMLVectorVolumeNode()
        for i, frame in enumerate(self.clip[:3]):
            slicer.util.updateVolumeFromArray(temp, frame["image"][None])
            temp.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk))
            seq.SetDataNodeAtValue(temp, str(i))
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "input")
        browser.AddSynchronizedSequenceNode(seq)
        browser.SetSelectedItemNumber(2)
        nodes = self.logic.process(browser=browser, currentOnly=True, inputSize=70)
        self.assertEqual((nodes.depth.GetNumberOfDataNodes(), nodes.depth.GetNthIndexValue(0)), (1, "2"))
        expected = next(sd.depth_stream(self.logic.loadModel(), [self.clip[2]["image"]], input_size=70)).depth_mm
        got = slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(0))[0]
        self.assertTrue(np.allclose(got, expected, rtol=1e-4, atol=1e-3, equal_nan=True))
        self.assertTrue(np.allclose(self.logic._ijk(nodes.depth.GetNthDataNode(0)), ijk))
        self.assertIs(nodes.frames, seq)  # shared, not copied; the user's browser is unchanged
        self.assertEqual(browser.GetNumberOfSynchronizedSequenceNodes(True), 1)

    def test_clip_with_stride(self):
        """A clip with a stride: items, NaN (never 0) depth, point budget, fusion, a folder and names per run."""
        import numpy as np
        nodes = self.logic.process(self.folder, inputSize=70, intrinsics=self.clip[0]["intrinsics"], frameStride=2,
                                   pointBudget=900, fuse=True)
        for seq in (nodes.frames, nodes.depth, nodes.points, nodes.poses):
            self.assertEqual([seq.GetNthIndexValue(i) for i in range(seq.GetNumberOfDataNodes())], ["0", "2", "4"])
        depth = slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(1))
        self.assertTrue(not (depth == 0).any() and 5 - 1e-3 <= np.nanmin(depth) <= np.nanmax(depth) <= 120 + 1e-3)
        self.assertLessEqual(nodes.points.GetNthDataNode(1).GetPolyData().GetNumberOfPoints(), 900)
        self.assertTrue(nodes.meshes is None and nodes.fused.GetPolyData().GetNumberOfPoints() > 0)
        self.assertTrue(nodes.proxies["depth"].GetDisplayNode().GetApplyThreshold())  # NaN is not drawn
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(nodes.browser)), nodes.folder)
        again = self.logic.process(self.folder, inputSize=70, maxFrames=1)
        self.assertNotEqual((again.browser.GetName(), again.folder), (nodes.browser.GetName(), nodes.folder))

    def test_cancel(self):
        """Cancel midway through a fused run: Cancelled is raised and no node or folder is left."""
        from SurgicalDepthLib.slicer_helpers import Cancelled
        sh, calls = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene), []
        state = lambda: ({n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLNode")}, sh.GetNumberOfItems())  # noqa
        before = state()
        with self.assertRaises(Cancelled):  # progress calls: 1 loading the model, 2 frame 1, 3 frame 2 -> cancel
            self.logic.process(self.folder, inputSize=70, fuse=True,
                               progress=lambda fraction, text: calls.append(text) or len(calls) < 3)
        self.assertEqual(state(), before)
