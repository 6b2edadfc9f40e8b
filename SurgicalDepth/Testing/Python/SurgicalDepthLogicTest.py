"""Self-tests of the Surgical Depth logic in real Slicer (ctest ``py_SurgicalDepthLogicTest``; kept out of
``SurgicalDepth.py`` so that the module stays thin).

Each test runs ``SurgicalDepthLogic.process`` (or ``startLive``) on a synthetic clip rendered by
SurgicalDepthTrainingLib and is skipped with a message when the Python packages are missing in testing mode
(extension build machines install nothing). Run in Slicer:
``slicer.testing.runUnitTest(['<this folder>'], 'SurgicalDepthLogicTest')``.
"""
import time
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

import SurgicalDepth  # the module (not its test class: the test loader would run it here too)


class SurgicalDepthLogicTest(ScriptedLoadableModuleTest):
    """One RGB volume, the current frame of a browser, a whole clip with a stride, cancel, the field of view, live
    depth and the inference backends."""

    def setUp(self):
        from SurgicalDepthLib.slicer_helpers import MissingRequirements
        slicer.mrmlScene.Clear()
        try:
            SurgicalDepth.SurgicalDepthLogic().setupPythonRequirements(askConfirmation=True)
        except MissingRequirements as exc:  # testing mode installs nothing
            self.skipTest(f"Surgical Depth self-test skipped: {exc}")
        import SurgicalDepthTrainingLib as sdt
        from SurgicalDepthLib.video import write_image
        self.logic = SurgicalDepth.SurgicalDepthLogic()
        self.folder = slicer.util.tempDirectory("SurgicalDepthLogicTest")
        self.clip = sdt.render_clip("colon", n_frames=6, seed=3, height=56, width=70)
        for i, frame in enumerate(self.clip):
            write_image(Path(self.folder) / f"{i:03d}.png", frame["image"])

    def _waitFor(self, condition, timeout: float = 60.0) -> None:
        """Process Qt events (the live timer) until ``condition()``."""
        end = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), end, "timed out")
            slicer.app.processEvents()
            time.sleep(0.01)

    def test_volume(self):
        """One RGB volume: depth with the volume's geometry, NaN (never 0) depth not drawn, cloud <= budget."""
        import numpy as np
        volume = slicer.util.addVolumeFromArray(self.clip[0]["image"][None], np.diag([0.5, 0.5, 2.0, 1.0]), "frame",
                                                "vtkMRMLVectorVolumeNode")
        nodes = self.logic.process(volume=volume, inputSize=70, pointBudget=500)
        depth = slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(0))
        self.assertTrue(depth.shape == (1, 56, 70) and not (depth == 0).any())
        self.assertTrue(np.allclose(self.logic._ijk(nodes.depth.GetNthDataNode(0)), self.logic._ijk(volume)))
        self.assertTrue(nodes.proxies["depth"].GetDisplayNode().GetApplyThreshold())
        self.assertLessEqual(nodes.proxies["points"].GetPolyData().GetNumberOfPoints(), 500)
        self.assertIsNotNone(nodes.meshes)  # one frame: its depth mesh by default

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
        # the run's browser shows its one item: the input's frame 2 under the depth of frame 2 (not item "0")
        self.assertEqual(nodes.browser.GetSelectedItemNumber(), 0)
        shown = nodes.browser.GetProxyNode(seq)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(shown)[0], self.clip[2]["image"]))

    def test_clip_with_stride(self):
        """A clip with a stride: items, NaN (never 0) depth, point budget, fusion, a folder and names per run, and a
        detail read that reaches the depth."""
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
        detailed = self.logic.process(self.folder, inputSize=70, detailSize=98, maxFrames=1)  # "Detail size" field
        one, two = (slicer.util.arrayFromVolume(n.depth.GetNthDataNode(0)) for n in (again, detailed))
        self.assertTrue(np.isfinite(two).any() and not np.allclose(one, two, equal_nan=True))

    def test_cancel(self):
        """Cancel midway through a fused run: Cancelled is raised and no node or folder of the run is left; a volume
        the user loads during the run is not the run's: a cancel keeps it, and a finished run leaves it unfiled."""
        from SurgicalDepthLib.slicer_helpers import Cancelled
        sh, calls, loaded = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene), [], []
        state = lambda: ({n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLNode")}, sh.GetNumberOfItems())  # noqa

        def progress(fraction, text):  # calls: 1 loading the model, 2 frame 1 (the user loads a volume), 3 frame 2
            calls.append(text)
            if len(calls) == 2:
                loaded.append(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded meanwhile"))
            return len(calls) < 3

        before = state()
        with self.assertRaises(Cancelled):
            self.logic.process(self.folder, inputSize=70, fuse=True, progress=progress)
        user = {loaded[0].GetID(), *(loaded[0].GetNthDisplayNode(i).GetID()
                                     for i in range(loaded[0].GetNumberOfDisplayNodes()))}
        self.assertEqual(state(), (before[0] | user, before[1] + bool(sh.GetItemByDataNode(loaded[0]))))
        calls.clear()
        nodes = self.logic.process(self.folder, inputSize=70, maxFrames=2, progress=lambda *a: progress(*a) or True)
        self.assertIsNotNone(loaded[1].GetScene())
        self.assertNotEqual(sh.GetItemParent(sh.GetItemByDataNode(loaded[1])), nodes.folder)

    def test_field_of_view_label_map(self):
        """The run's field of view (here a mask file): a label map (1 = tissue) with the depth volumes' geometry in
        the run's folder, depth NaN outside it; "none": every pixel, no label map; a cancel leaves none."""
        import numpy as np
        from SurgicalDepthLib.fov import write_fov_mask
        from SurgicalDepthLib.slicer_helpers import Cancelled
        mask = np.zeros((56, 70), bool)
        mask[4:52, 6:64] = True
        path = Path(slicer.util.tempDirectory("SurgicalDepthLogicTest-fov")) / "scope.png"
        write_fov_mask(path, mask)
        nodes = self.logic.process(self.folder, inputSize=70, maxFrames=2, fovMask=str(path))
        self.assertTrue(nodes.fov.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(nodes.fov)[0] > 0, mask))
        self.assertTrue(np.allclose(self.logic._ijk(nodes.fov), self.logic._ijk(nodes.depth.GetNthDataNode(1))))
        self.assertTrue(np.isnan(slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(1))[0][~mask]).all())
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(nodes.fov)), nodes.folder)
        self.assertIsNone(self.logic.process(self.folder, inputSize=70, maxFrames=1, fovMask="none").fov)
        labels = len(slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode"))
        with self.assertRaises(Cancelled):
            self.logic.process(self.folder, inputSize=70, fovMask=mask, progress=lambda fraction, text: fraction < 0.5)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode")), labels)

    def test_live(self):
        """Live depth of an updating volume: the run of its current image, then each update shown in place in the
        run's proxies (no node added), the first frames recorded up to the budget; stop returns at once (the worker
        ends after its image in inference, and the status then says so) and nothing is shown after it."""
        import numpy as np
        import SurgicalDepthLib as sd
        volume = slicer.util.addVolumeFromArray(self.clip[0]["image"][None], np.diag([0.5, 0.5, 2.0, 1.0]), "live",
                                                "vtkMRMLVectorVolumeNode")
        statuses = []
        nodes = self.logic.startLive(volume, inputSize=70, pointBudget=300, recordFrames=3, depthMesh=False,
                                     onUpdate=statuses.append)
        self.assertTrue(self.logic.liveRunning)
        count = len(slicer.util.getNodesByClass("vtkMRMLNode"))
        for i in range(1, 5):
            slicer.util.updateVolumeFromArray(volume, self.clip[i]["image"][None])  # as an OpenIGTLink connector
            self._waitFor(lambda i=i: nodes.frameCount >= 1 + i)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLNode")), count)  # in place
        self.assertEqual([nodes.depth.GetNthIndexValue(k) for k in range(nodes.depth.GetNumberOfDataNodes())],
                         ["0", "1", "2"])  # process's item, then the budget's first live frames
        fov = slicer.util.arrayFromVolume(nodes.fov)[0] > 0 if nodes.fov else None
        expected = next(sd.depth_stream(self.logic.loadModel(), [self.clip[4]["image"]], input_size=70,
                                        fov_mask=fov)).depth_mm
        got = slicer.util.arrayFromVolume(nodes.proxies["depth"])[0]
        self.assertTrue(np.allclose(got, expected, rtol=1e-4, atol=1e-3, equal_nan=True))
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(nodes.proxies["frames"])[0],
                                       self.clip[4]["image"]))
        self.assertLessEqual(nodes.proxies["points"].GetPolyData().GetNumberOfPoints(), 300)
        slicer.util.updateVolumeFromArray(volume, self.clip[5]["image"][None])  # in inference while it stops
        started = time.monotonic()
        self.logic.stopLive()
        self.assertLess(time.monotonic() - started, 0.5)  # the GUI does not wait for the image in inference
        self.assertFalse(self.logic.liveRunning)
        self._waitFor(lambda: statuses[-1].endswith("(stopped)"))  # the timer says when the worker has ended
        slicer.util.updateVolumeFromArray(volume, self.clip[6]["image"][None])
        slicer.app.processEvents()
        self.assertEqual(nodes.frameCount, 5)  # stopped: no more images taken, none shown after the stop
        statuses.clear()
        self.logic.stopLive(wait=True)  # nothing left to stop
        self.assertEqual(statuses, [])

    def test_backends(self):
        """The Backend choice reaches the model: PyTorch and (when installed) OpenVINO depth agree (both fp32: ``auto``
        is bf16 on a bf16 GPU or CPU, whose error alone is ~2e-2 of the depth range; NaN in the same pixels); each run
        names its backend, models are cached per backend (not per source alone), and ``auto`` says why it chose."""
        import importlib.util
        import numpy as np
        volume = slicer.util.addVolumeFromArray(self.clip[0]["image"][None], None, "frame", "vtkMRMLVectorVolumeNode")
        names = {"torch": "PyTorch", "openvino": "OpenVINO"}
        installed = all(importlib.util.find_spec(module) for module in ("openvino", "onnx"))  # onnx: the exporter
        depth = {}
        for backend in ["torch"] + (["openvino"] if installed else []):
            nodes = self.logic.process(volume=volume, inputSize=70, fovMask="none", backend=backend, precision="fp32")
            self.assertTrue(self.logic.modelStatus.startswith(names[backend]), self.logic.modelStatus)
            self.assertIs(nodes.model, self.logic.loadModel(backend=backend, precision="fp32"))
            depth[backend] = slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(0))[0]
        self.logic.loadModel(backend="auto")
        self.assertIn("(auto: ", self.logic.modelStatus)
        if not installed:
            self.skipTest("OpenVINO part skipped: the openvino and onnx packages are not installed")
        ref, got = depth["torch"], depth["openvino"]
        self.assertGreaterEqual(np.mean(np.isnan(ref) == np.isnan(got)), 0.99)
        both = np.isfinite(ref) & np.isfinite(got)
        error = np.abs(got - ref)[both] / (np.nanmax(ref) - np.nanmin(ref))
        self.assertLessEqual(np.percentile(error, 99), 0.02)
        self.assertLessEqual(np.median(error), 0.005)
