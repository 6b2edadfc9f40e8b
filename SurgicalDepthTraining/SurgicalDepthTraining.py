"""Surgical Depth Training: fine-tune and evaluate depth models from 3D Slicer.

Training runs as a separate process (``surgical-depth train`` through ``PythonSlicer -m SurgicalDepthTrainingLib``, or
``torchrun`` for several GPUs) driven by ``qt.QProcess``: a crash or a CUDA out-of-memory error cannot take Slicer
down, the GUI stays responsive, and progress is read from the process output and the history CSV. All training
code is in the Slicer-free ``SurgicalDepthTrainingLib``; this file only builds commands and shows results.
"""
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Decimals, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

#: must equal ``SurgicalDepthTrainingLib.slicer_helpers.DATASET_NAMES`` (checked by the pytest suite)
DATASET_NAMES = ["synthetic", "colondepth", "endoslam", "c3vd", "simcol3d", "scared", "hamlyn", "servct", "liit",
                 "folder"]


class SurgicalDepthTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Surgical Depth Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Depth Estimation")]
        self.parent.dependencies = ["SurgicalDepth"]
        self.parent.contributors = ["SurgicalDepth contributors"]
        self.parent.helpText = _(
            "Fine-tune Depth Anything models on surgical datasets (or a generated synthetic one) and evaluate them. "
            "Training runs as a separate process (surgical-depth train); progress, the metrics table, the loss / "
            "AbsRel plot and the qualitative figure are shown here.<br>Python console: "
            "<code>logic = slicer.util.getModuleLogic('SurgicalDepthTraining'); "
            "logic.showResults('/path/to/output')</code>.")
        self.parent.acknowledgementText = _("Uses SurgicalDepthTrainingLib (pip package surgical-depth).")


@parameterNodeWrapper
class SurgicalDepthTrainingParameterNode:
    dataset: Annotated[str, Choice(DATASET_NAMES)] = "synthetic"
    datasetRoot: Path
    synthFrames: Annotated[int, WithinRange(1, 100000)] = 64
    baseModel: str = "default"
    loss: Annotated[str, Choice(["l1", "silog", "ssi"])] = "l1"  # the paper's recipe: L1, AdamW 3e-5, batch 16
    learningRate: Annotated[float, WithinRange(1e-8, 1.0), Decimals(8)] = 3e-5
    batchSize: Annotated[int, WithinRange(1, 1024)] = 16
    epochs: Annotated[int, WithinRange(1, 10000)] = 10
    inputSize: Annotated[int, WithinRange(14, 2044)] = 518
    loraRank: Annotated[int, WithinRange(0, 512)] = 0
    freezeEncoder: bool = False
    gpus: Annotated[int, WithinRange(1, 64)] = 1
    outputFolder: Path
    alignment: Annotated[str, Choice(["median", "scale_shift", "none"])] = "median"


class SurgicalDepthTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SurgicalDepthTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SurgicalDepthTrainingLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.synthButton.connect("clicked(bool)", self.onSynth)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResults)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)  # disconnects the GUI; enter() reconnects

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[SurgicalDepthTrainingParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def _setRunning(self, running: bool, text: str = "") -> None:
        for button in (self.ui.synthButton, self.ui.trainButton, self.ui.evaluateButton):
            button.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.statusLabel.text = text
        if running:
            self.ui.progressBar.value = 0

    def _onLine(self, line: str) -> None:
        from SurgicalDepthTrainingLib.slicer_helpers import parse_progress_line, progress_percent
        progress = parse_progress_line(line)
        if progress is not None:
            self.ui.progressBar.value = progress_percent(progress)
            self.ui.statusLabel.text = line.strip()[:160]

    def _onFinished(self, what: str, after: Optional[Callable] = None) -> Callable:
        def finished(exitCode: int, lines: list) -> None:
            self._setRunning(False, _("{what} finished (exit code {code}).").format(what=what, code=exitCode))
            if exitCode != 0:
                slicer.util.errorDisplay(_("{what} failed.").format(what=what), detailedText="\n".join(lines))
            elif after is not None:
                with slicer.util.tryWithErrorDisplay(_("Could not show the results.")):
                    after()
        return finished

    def onSynth(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start the synthetic data generation."), waitCursor=True):
            self.logic.startSynth(self._parameterNode, self._onLine, self._onFinished(_("Synthetic data")))
            self._setRunning(True, _("Generating synthetic data..."))

    def onTrain(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            p = self._parameterNode
            self.logic.startTraining(p, self._onLine, self._onFinished(
                _("Training"), lambda: self.showResults(str(p.outputFolder))))
            self._setRunning(True, _("Training..."))

    def onEvaluate(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start the evaluation."), waitCursor=True):
            p = self._parameterNode
            report = self.logic.startEvaluation(p, self._onLine, self._onFinished(
                _("Evaluation"), lambda: self.showResults(str(p.outputFolder), report)))
            self._setRunning(True, _("Evaluating..."))

    def onCancel(self) -> None:
        self.logic.cancel()
        self._setRunning(False, _("Cancelled."))

    def onShowResults(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show the results."), waitCursor=True):
            self.showResults(str(self._parameterNode.outputFolder))

    def showResults(self, folder: str, report: Optional[str] = None) -> None:
        nodes = self.logic.showResults(folder, report)
        rows = nodes.get("metrics", [])
        self.ui.metricsTable.setRowCount(len(rows))
        for i, (name, value) in enumerate(rows):
            self.ui.metricsTable.setItem(i, 0, qt.QTableWidgetItem(name))
            self.ui.metricsTable.setItem(i, 1, qt.QTableWidgetItem(value))


class SurgicalDepthTrainingLogic(ScriptedLoadableModuleLogic):
    """Builds ``surgical-depth`` command lines, runs them with ``qt.QProcess`` and shows their outputs in MRML."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process = None
        self._lines: list = []

    def getParameterNode(self):
        return SurgicalDepthTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """``PythonSlicer`` (Slicer's Python with its environment) when on PATH, else ``sys.executable``."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def _folder(path, what: str) -> str:
        from SurgicalDepthLib.slicer_helpers import path_or_none
        folder = path_or_none(path)
        if folder is None:
            raise ValueError(f"{what}: no folder chosen")
        return folder

    def recipe(self, p):
        from SurgicalDepthTrainingLib.slicer_helpers import TrainRecipe
        return TrainRecipe(dataset=p.dataset, root=self._folder(p.datasetRoot, "dataset folder"),
                           output=self._folder(p.outputFolder, "output folder"), model=p.baseModel.strip() or "default",
                           loss=p.loss, lr=p.learningRate, batch_size=p.batchSize, epochs=p.epochs,
                           input_size=p.inputSize, lora_rank=p.loraRank, freeze_encoder=p.freezeEncoder)

    def startSynth(self, p, onLine=None, onFinished=None):
        from SurgicalDepthTrainingLib.slicer_helpers import synth_command
        root = self._folder(p.datasetRoot, "dataset folder")
        return self.start(synth_command(self.pythonExecutable(), root, frames=p.synthFrames), onLine, onFinished)

    def startTraining(self, p, onLine=None, onFinished=None):
        from SurgicalDepthTrainingLib.slicer_helpers import train_command
        args = train_command(self.pythonExecutable(), self.recipe(p), n_gpus=p.gpus)
        return self.start(args, onLine, onFinished)

    def startEvaluation(self, p, onLine=None, onFinished=None) -> str:
        """Starts ``surgical-depth evaluate``; returns the path of the JSON report it will write."""
        from SurgicalDepthTrainingLib.slicer_helpers import evaluate_command
        report = str(Path(self._folder(p.outputFolder, "output folder")) / "evaluation.json")
        args = evaluate_command(self.pythonExecutable(), p.dataset, self._folder(p.datasetRoot, "dataset folder"),
                                p.baseModel.strip() or "default", report, p.alignment)
        self.start(args, onLine, onFinished)
        return report

    def start(self, args: list, onLine: Optional[Callable] = None, onFinished: Optional[Callable] = None):
        """Run ``args`` as a ``qt.QProcess`` with both Lib packages on ``PYTHONPATH``; ``onLine(text)`` gets each
        output line, ``onFinished(exitCode, lastLines)`` the end. Returns the process (its signals arrive on the
        main thread, so the callbacks may touch MRML and the GUI)."""
        from SurgicalDepthTrainingLib.slicer_helpers import pythonpath_with
        if self.isRunning():
            raise RuntimeError("a surgical-depth process is already running; cancel it first")
        slicer.util.getModuleLogic("SurgicalDepth").setupPythonRequirements(askConfirmation=True)
        import SurgicalDepthLib
        import SurgicalDepthTrainingLib
        libDirs = [Path(m.__file__).resolve().parent.parent for m in (SurgicalDepthLib, SurgicalDepthTrainingLib)]
        env = qt.QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONPATH", pythonpath_with(libDirs, env.value("PYTHONPATH")))
        env.insert("PYTHONUNBUFFERED", "1")  # progress lines arrive as they are printed
        process, self._lines, pending = qt.QProcess(), [], [""]
        process.setProcessEnvironment(env)
        process.setProcessChannelMode(qt.QProcess.MergedChannels)

        def readOutput():
            text = pending[0] + process.readAllStandardOutput().data().decode("utf-8", "replace")
            *lines, pending[0] = text.replace("\r", "\n").split("\n")
            for line in filter(None, lines):
                self._lines = (self._lines + [line])[-200:]
                if onLine is not None:
                    onLine(line)

        def finished(exitCode, exitStatus):
            readOutput()
            self._process = None
            if onFinished is not None:
                onFinished(int(exitCode), list(self._lines))

        process.connect("readyReadStandardOutput()", readOutput)
        process.connect("finished(int,QProcess::ExitStatus)", finished)
        process.start(args[0], args[1:])
        if not process.waitForStarted(10000):
            raise RuntimeError(f"could not start {args[0]}: {process.errorString()}")
        self._process = process
        return process

    def isRunning(self) -> bool:
        return self._process is not None

    def wait(self, timeoutSec: float = 3600.0) -> int:
        """Block until the running process ends (console and tests); returns its exit code."""
        process = self._process
        if process is None:
            raise RuntimeError("no surgical-depth process is running")
        if not process.waitForFinished(int(timeoutSec * 1000)):
            self.cancel()
            raise TimeoutError(f"the process did not finish within {timeoutSec} s")
        slicer.app.processEvents()  # deliver the finished() signal
        return process.exitCode()

    def cancel(self) -> None:
        """Stop the running process: SIGTERM (torchrun forwards it to its workers), then kill after 5 s."""
        process = self._process
        if process is None:
            return
        process.terminate()
        if not process.waitForFinished(5000):
            process.kill()
            process.waitForFinished(5000)
        self._process = None

    def showResults(self, folder: str, report: Optional[str] = None) -> dict:
        """Load a training/evaluation output folder: metrics of ``report`` (JSON of ``surgical-depth evaluate``)
        as a vtkMRMLTableNode (and ``"metrics"`` rows for the panel), the per-epoch history CSV as a plot of loss
        and AbsRel, and the qualitative figure PNG as an image volume. Returns the created nodes by kind."""
        from SurgicalDepthTrainingLib.slicer_helpers import find_figure, find_history, metric_rows
        nodes: dict = {}
        if report and Path(report).is_file():
            rows = metric_rows(json.loads(Path(report).read_text()))
            nodes["metrics"] = rows
            nodes["metricsTable"] = self._metricsTable(rows)
        history = find_history(folder)
        if history is not None:
            nodes.update(self.plotHistory(history))
        figure = find_figure(folder)
        if figure is not None:
            nodes["figure"] = slicer.util.loadVolume(str(figure), {"singleFile": True, "show": False})
        if not nodes:
            raise FileNotFoundError(f"no evaluation report, history CSV or figure found in {folder}")
        return nodes

    @staticmethod
    def _metricsTable(rows):
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "SurgicalDepth metrics")
        for i, name in enumerate(("metric", "value")):
            column = table.AddColumn()
            column.SetName(name)
            for j, row in enumerate(rows):
                if i == 0:
                    table.AddEmptyRow()
                table.SetCellText(j, i, row[i])
        return table

    def plotHistory(self, csvPath) -> dict:
        """Per-epoch history CSV → vtkMRMLTableNode + one vtkMRMLPlotSeriesNode per loss/AbsRel column in a
        vtkMRMLPlotChartNode (shown in the layout when there is a main window)."""
        import numpy as np
        from SurgicalDepthTrainingLib.slicer_helpers import plot_columns, read_history_csv
        history = read_history_csv(csvPath)
        x, ys = plot_columns(history)
        if not ys:
            raise ValueError(f"{csvPath}: no loss or abs_rel column to plot; columns: {sorted(history)}")
        names = ([x] if x else []) + ys
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "SurgicalDepth training history")
        slicer.util.updateTableFromArray(table, [np.asarray(history[n], dtype=np.float64) for n in names], names)
        chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "SurgicalDepth training")
        chart.SetXAxisTitle(x or "row")
        series = []
        for name in ys:
            s = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            s.SetAndObserveTableNodeID(table.GetID())
            s.SetXColumnName(x or "")
            s.SetYColumnName(name)
            s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            s.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            chart.AddAndObservePlotSeriesNodeID(s.GetID())
            series.append(s)
        if not slicer.app.commandOptions().noMainWindow:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        return {"historyTable": table, "chart": chart, "series": series}


class SurgicalDepthTrainingTest(ScriptedLoadableModuleTest):
    """Runs a real ``surgical-depth evaluate`` process on a synthetic dataset and checks the displayed results."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_history_plot, self.test_evaluate_synthetic):
            self.setUp()
            test()

    def test_history_plot(self):
        folder = Path(slicer.util.tempDirectory("SurgicalDepthTrainingTest"))
        (folder / "history.csv").write_text("epoch,train_loss,val_abs_rel\n1,0.5,0.30\n2,0.4,0.25\n3,0.3,0.20\n")
        nodes = SurgicalDepthTrainingLogic().showResults(str(folder))
        self.assertEqual(nodes["chart"].GetNumberOfPlotSeriesNodes(), 2)
        self.assertEqual(nodes["historyTable"].GetNumberOfRows(), 3)
        self.assertAlmostEqual(float(slicer.util.arrayFromTableColumn(nodes["historyTable"], "val_abs_rel")[2]), 0.2)

    def test_evaluate_synthetic(self):
        import SurgicalDepthTrainingLib as sdt
        root = Path(slicer.util.tempDirectory("SurgicalDepthTrainingData"))
        sdt.write_synthetic(sdt.render_clip("colon", n_frames=3, seed=2, height=56, width=70), root / "seq_0000",
                            {"organ": "colon", "seed": 2, "generator": {"organ": "colon", "seed": 2}})
        p = SurgicalDepthTrainingLogic().getParameterNode()
        p.dataset, p.datasetRoot, p.outputFolder = "synthetic", root, root / "out"
        (root / "out").mkdir(exist_ok=True)
        logic, done = SurgicalDepthTrainingLogic(), []
        report = logic.startEvaluation(p, onFinished=lambda code, lines: done.append((code, lines)))
        self.assertEqual(logic.wait(600), 0)
        nodes = logic.showResults(str(root / "out"), report)
        self.assertEqual([name for name, _value in nodes["metrics"]][:3], ["abs_rel", "sq_rel", "rmse"])
        self.assertEqual(nodes["metricsTable"].GetNumberOfRows(), len(nodes["metrics"]))
