"""Self-tests of the Surgical Depth Training logic in real Slicer (ctest ``py_SurgicalDepthTrainingLogicTest``; kept
out of ``SurgicalDepthTraining.py`` so that the module stays thin).

The history plot needs nothing beyond Slicer; the evaluation runs a real ``surgical-depth evaluate`` process on a
synthetic data set, the cancel a real ``synth``; both are skipped with a message when the Python packages are missing
in testing mode (extension build machines install nothing). Run in Slicer:
``slicer.testing.runUnitTest(['<this folder>'], 'SurgicalDepthTrainingLogicTest')``.
"""
import time
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

import SurgicalDepthTraining  # the module (not its test class: the test loader would run it here too)


class SurgicalDepthTrainingLogicTest(ScriptedLoadableModuleTest):
    """The training history plot, a real evaluation process with its displayed results, and a cancelled run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_history_plot, self.test_evaluate_synthetic, self.test_cancel):
            self.setUp()
            test()

    def test_history_plot(self):
        folder = Path(slicer.util.tempDirectory("SurgicalDepthTrainingTest"))
        (folder / "log.csv").write_text("epoch,step,loss,val_abs_rel,val_a1,lr\n0,0,nan,0.30,0.5,3e-05\n"
                                        "0,50,0.4,,,2e-05\n1,100,0.3,0.20,0.7,1e-05\n")
        loss, absRel = SurgicalDepthTraining.SurgicalDepthTrainingLogic().showResults(str(folder))["tables"]
        self.assertEqual((loss.GetNumberOfRows(), absRel.GetNumberOfRows()), (2, 2))  # NaN / empty cells dropped
        self.assertAlmostEqual(float(slicer.util.arrayFromTableColumn(absRel, "step")[1]), 100.0)

    def _logicWithRequirements(self):
        from SurgicalDepthLib.slicer_helpers import MissingRequirements
        logic = SurgicalDepthTraining.SurgicalDepthTrainingLogic()
        try:
            logic._requirements()  # torch, OpenCV (the synthetic renderer) and the rest
        except MissingRequirements as exc:  # testing mode installs nothing
            self.skipTest(f"Surgical Depth Training self-test skipped: {exc}")
        return logic

    def test_cancel(self):
        """Cancel of a running synth through PythonSlicer: reported "cancelled", quickly (the stop line, not the
        escalation a minute later), with no process of it left and no data set written."""
        from SurgicalDepthTrainingLib.process_tree import child_pids
        logic, outcomes = self._logicWithRequirements(), []
        p = logic.getParameterNode()
        p.datasetRoot = Path(slicer.util.tempDirectory("SurgicalDepthTrainingCancel")) / "data"
        p.synthFrames, p.earlierResults = 5000, "keep"
        process = logic.startSynth(p, onFinished=outcomes.append)
        pid, end = process.processId(), time.monotonic() + 120
        while logic.tracker.event is None:  # rendering has begun
            self.assertLess(time.monotonic(), end, "no progress from synth")
            slicer.app.processEvents()
            time.sleep(0.05)
        start = time.monotonic()
        logic.cancel()
        logic.wait(50)
        self.assertLess(time.monotonic() - start, 50)
        self.assertEqual(outcomes, ["cancelled"])
        self.assertEqual(child_pids(pid), [])  # the interpreter under the launcher has ended too
        self.assertFalse(Path(p.datasetRoot).exists())

    def test_evaluate_synthetic(self):
        logic, outcomes = self._logicWithRequirements(), []
        import SurgicalDepthTrainingLib as sdt
        root = Path(slicer.util.tempDirectory("SurgicalDepthTrainingData"))
        sdt.write_synthetic(sdt.render_clip("colon", n_frames=3, seed=2, height=56, width=70), root / "seq_0000",
                            {"organ": "colon", "seed": 2, "generator": {"organ": "colon", "seed": 2}})
        p = logic.getParameterNode()
        # outside the dataset root: evaluate refuses outputs inside it (a data set's own files are never outputs)
        p.dataset, p.datasetRoot = "synthetic", root
        p.outputFolder = Path(slicer.util.tempDirectory("SurgicalDepthTrainingEvaluation"))
        paths = logic.startEvaluation(p, onFinished=outcomes.append)
        self.assertEqual(logic.wait(600), 0)
        self.assertEqual((outcomes, logic.tracker.percent), (["finished"], 100))
        nodes = logic.showResults(None, **paths)
        self.assertEqual([name for name, _value in nodes["metrics"]][:3], ["abs_rel", "sq_rel", "rmse"])
        self.assertEqual(nodes["metricsTable"].GetNumberOfRows(), len(nodes["metrics"]))
        self.assertIsNotNone(nodes["figure"].GetImageData())
        # the same folder again: refused while the panel keeps earlier results, replaced when it is told to
        logic.startEvaluation(p, onFinished=outcomes.append)
        self.assertEqual((logic.wait(600), outcomes[-1]), (2, "failed"))
        p.earlierResults = "replace"
        logic.startEvaluation(p, onFinished=outcomes.append)
        self.assertEqual((logic.wait(600), outcomes[-1]), (0, "finished"))
