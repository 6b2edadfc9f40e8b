"""Surgical Depth Training: fine-tune and evaluate depth models from 3D Slicer.

Training runs as a separate process (``PythonSlicer -m SurgicalDepthTrainingLib train --progress jsonl``, or
``torchrun`` for several GPUs) driven by ``qt.QProcess``: a crash or a CUDA out-of-memory error cannot take Slicer
down and the GUI stays responsive. Progress comes from the JSON lines on its stdout, the loss / AbsRel history from
the run's ``log.csv``. The training code is in the Slicer-free ``SurgicalDepthTrainingLib``.
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
from slicer.parameterNodeWrapper import Choice, Decimals, SingleStep, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from SurgicalDepthLib.weights import REGISTRY_NAMES  # the weights registry itself: it needs only the standard library

# Slicer builds the parameter node when it loads this file, before torch (which the other registries import) may be
# installed: the other choices and defaults below are literals, and the pytest suite checks them against the
# registries (datasets, losses.LOSSES, metrics.ALIGNMENTS) and TrainConfig's defaults.
DATASET_NAMES = ["synthetic", "colondepth", "endoslam", "c3vd", "simcol3d", "scared", "hamlyn", "servct", "liit",
                 "folder"]
LOSS_NAMES = ["l1", "silog", "ssi"]
ALIGNMENTS = ["median", "scale_shift", "none"]
#: base model: the shipped default, a registry name (weights in the local cache), or "file" (baseModelFile)
BASE_MODELS = ["default", *REGISTRY_NAMES, "file"]
#: an earlier run's results in the output folder: keep them (refuse to start), resume its training, or replace them
EARLIER_RESULTS = ["keep", "resume", "replace"]
# the longest Slicer's exit waits for a cancelled run to stop on its own (train saves last.pt) before ending it
EXIT_GRACE_MS = 30000


class SurgicalDepthTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Surgical Depth Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Depth Estimation")]
        self.parent.dependencies = ["SurgicalDepth"]
        self.parent.contributors = ["SurgicalDepth contributors"]
        self.parent.helpText = _(
            "Fine-tune Depth Anything models on surgical datasets (or a generated synthetic one) and evaluate them in "
            "a separate process (surgical-depth train / evaluate); shows progress, metrics, the loss / AbsRel plot and "
            "the qualitative figure.<br>Python console: <code>slicer.util.getModuleLogic('SurgicalDepthTraining')"
            ".showResults('/path/to/output')</code>.")
        self.parent.acknowledgementText = _("Uses SurgicalDepthTrainingLib (pip package surgical-depth).")


@parameterNodeWrapper
class SurgicalDepthTrainingParameterNode:
    dataset: Annotated[str, Choice(DATASET_NAMES)] = "synthetic"
    datasetRoot: Path
    synthFrames: Annotated[int, WithinRange(1, 100000)] = 64
    baseModel: Annotated[str, Choice(BASE_MODELS)] = "default"
    baseModelFile: Path
    # TrainConfig's defaults (the paper's recipe: L1, AdamW 3e-5, batch 16; 256 x 386 rounded to multiples of 14)
    loss: Annotated[str, Choice(LOSS_NAMES)] = "l1"
    learningRate: Annotated[float, WithinRange(1e-6, 1.0), Decimals(6), SingleStep(1e-5)] = 3e-5
    batchSize: Annotated[int, WithinRange(1, 1024)] = 16
    epochs: Annotated[int, WithinRange(1, 10000)] = 10
    inputHeight: Annotated[int, WithinRange(14, 2044), SingleStep(14)] = 252
    inputWidth: Annotated[int, WithinRange(14, 2044), SingleStep(14)] = 392
    loraRank: Annotated[int, WithinRange(0, 512)] = 0
    freezeEncoder: bool = False
    gpus: Annotated[int, WithinRange(1, 64)] = 1
    outputFolder: Path
    earlierResults: Annotated[str, Choice(EARLIER_RESULTS)] = "keep"
    alignment: Annotated[str, Choice(ALIGNMENTS)] = "median"


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
        self.ui.synthButton.connect("clicked(bool)", lambda: self._run(_("Synthetic data"), self.logic.startSynth))
        self.ui.trainButton.connect("clicked(bool)", lambda: self._run(  # the run's own folder, kept when it starts
            _("Training"), self.logic.startTraining, lambda: self.showResults(**self.logic.outputs)))
        self.ui.evaluateButton.connect("clicked(bool)", lambda: self._run(
            _("Evaluation"), self.logic.startEvaluation, lambda: self.showResults(None, **self.logic.outputs)))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResults)
        self.ui.baseModelComboBox.connect("currentTextChanged(QString)",
                                          lambda text: self.ui.baseModelFileLineEdit.setEnabled(text == "file"))
        self.initializeParameterNode()

    def cleanup(self) -> None:  # also at Slicer's exit, after its event loop: no timer fires any more
        self.removeObservers()
        if self.logic:
            self.logic.stopAndWait(EXIT_GRACE_MS)

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

    def _onProgress(self, tracker) -> None:  # overall percentage; stage, step/total, loss, AbsRel
        self.ui.progressBar.value = tracker.percent
        self.ui.statusLabel.text = tracker.status()

    def _onFinished(self, what: str, after: Optional[Callable] = None) -> Callable:
        def finished(outcome: str) -> None:  # "finished", "failed" or "cancelled" (never reported as a failure)
            from SurgicalDepthTrainingLib.slicer_helpers import finish_text
            self._setRunning(False, finish_text(what, outcome, self.logic.tracker, self.logic.exitCode))
            if outcome == "failed":
                slicer.util.errorDisplay(self.ui.statusLabel.text, detailedText="\n".join(self.logic.log))
            elif outcome == "finished":
                self.ui.progressBar.value = 100
                if after is not None:
                    with slicer.util.tryWithErrorDisplay(_("Could not show the results.")):
                        after()
        return finished

    def _run(self, what: str, start: Callable, after: Optional[Callable] = None) -> None:
        """Start a process with ``start(parameterNode, onProgress, onFinished)``; ``after()`` when it succeeds."""
        with slicer.util.tryWithErrorDisplay(_("Could not start: {what}.").format(what=what), waitCursor=True):
            start(self._parameterNode, self._onProgress, self._onFinished(what, after))
            self._setRunning(True, _("{what}: starting...").format(what=what))

    def onCancel(self) -> None:
        self.logic.cancel()  # returns at once; the process's finished signal reports "Cancelled."
        self.ui.cancelButton.enabled = False
        self.ui.statusLabel.text = _("Cancelling...")

    def onShowResults(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show the results."), waitCursor=True):
            folder = self.logic._folder(self._parameterNode.outputFolder, "output folder")
            self.showResults(folder, str(Path(folder) / "evaluation.json"))

    def showResults(self, folder: Optional[str], report: Optional[str] = None, figure: Optional[str] = None) -> None:
        nodes = self.logic.showResults(folder, report, figure)
        rows = nodes.get("metrics", [])
        self.ui.metricsTable.setRowCount(len(rows))
        for i, (name, value) in enumerate(rows):
            self.ui.metricsTable.setItem(i, 0, qt.QTableWidgetItem(name))
            self.ui.metricsTable.setItem(i, 1, qt.QTableWidgetItem(value))


class SurgicalDepthTrainingLogic(ScriptedLoadableModuleLogic):
    """Builds ``surgical-depth`` command lines, runs them with ``qt.QProcess`` and shows their outputs in MRML."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process, self._cancelled, self._saving = None, False, False
        self.log: list = []  # last stderr lines of the current / last process (messages, warnings, the error)
        self.tracker = self.exitCode = None  # its ProgressTracker (stdout JSON lines) and exit code
        self.outputs: dict = {}  # showResults' arguments for the last run: its folder, or its report and figure

    def getParameterNode(self):
        return SurgicalDepthTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """``PythonSlicer`` (Slicer's Python with its environment) when on PATH, else ``sys.executable``."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def _folder(path, what: str) -> str:
        from SurgicalDepthLib.slicer_helpers import path_or_none
        if path_or_none(path) is None:
            raise ValueError(f"{what}: no folder chosen")
        return path_or_none(path)

    @staticmethod
    def _requirements() -> None:  # torch & co.: the commands are checked against the registries, which import them
        slicer.util.getModuleLogic("SurgicalDepth").setupPythonRequirements(askConfirmation=True)

    def recipe(self, p):
        from SurgicalDepthTrainingLib.slicer_helpers import TrainRecipe, base_model_source
        return TrainRecipe(dataset=p.dataset, root=self._folder(p.datasetRoot, "dataset folder"),
                           output=self._folder(p.outputFolder, "output folder"),
                           model=base_model_source(p.baseModel, p.baseModelFile), loss=p.loss, lr=p.learningRate,
                           batch_size=p.batchSize, epochs=p.epochs, input_size=(p.inputHeight, p.inputWidth),
                           lora_rank=p.loraRank, freeze_encoder=p.freezeEncoder)

    def startSynth(self, p, onProgress=None, onFinished=None):
        root = self._folder(p.datasetRoot, "dataset folder")
        self._requirements()
        from SurgicalDepthTrainingLib.slicer_helpers import synth_command
        return self.start(synth_command(self.pythonExecutable(), root, frames=p.synthFrames, earlier=p.earlierResults),
                          onProgress, onFinished)

    def startTraining(self, p, onProgress=None, onFinished=None):
        recipe = self.recipe(p)  # its fields are checked first (recipe() imports nothing that needs torch)
        self._requirements()
        from SurgicalDepthTrainingLib.slicer_helpers import train_command
        self.outputs = {"folder": recipe.output}  # shown when it ends, whatever the panel shows by then
        return self.start(train_command(self.pythonExecutable(), recipe, n_gpus=p.gpus, earlier=p.earlierResults),
                          onProgress, onFinished)

    def startEvaluation(self, p, onProgress=None, onFinished=None) -> dict:
        """Starts ``surgical-depth evaluate``; returns (and keeps in ``outputs``) the files it writes: ``{"report":
        JSON, "figure": qualitative PNG}`` in the output folder."""
        out, root = Path(self._folder(p.outputFolder, "output folder")), self._folder(p.datasetRoot, "dataset folder")
        self._requirements()
        from SurgicalDepthTrainingLib.slicer_helpers import base_model_source, evaluate_command
        out.mkdir(parents=True, exist_ok=True)
        self.outputs = {"report": str(out / "evaluation.json"), "figure": str(out / "qualitative.png")}
        self.start(evaluate_command(self.pythonExecutable(), p.dataset, root,
                                    base_model_source(p.baseModel, p.baseModelFile), self.outputs["report"],
                                    p.alignment, figure=self.outputs["figure"], earlier=p.earlierResults),
                   onProgress, onFinished)
        return self.outputs

    def start(self, args: list, onProgress: Optional[Callable] = None, onFinished: Optional[Callable] = None):
        """Run ``args`` (a ``--progress jsonl`` command line) as a ``qt.QProcess`` with both Lib packages on
        ``PYTHONPATH``: stdout lines feed ``self.tracker`` (then ``onProgress(tracker)``), stderr lines ``self.log``;
        ``onFinished(outcome)`` gets "finished", "failed" or "cancelled". Signals arrive on the main thread."""
        from SurgicalDepthTrainingLib.slicer_helpers import (STOPPING_NOTE, LineBuffer, ProgressTracker, command_name,
                                                             pythonpath_with, run_outcome)
        if self._process is not None:
            raise RuntimeError("a surgical-depth process is still running; cancel it first")
        import SurgicalDepthLib
        import SurgicalDepthTrainingLib
        libDirs = [Path(m.__file__).resolve().parent.parent for m in (SurgicalDepthLib, SurgicalDepthTrainingLib)]
        env = qt.QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONPATH", pythonpath_with(libDirs, env.value("PYTHONPATH")))
        env.insert("PYTHONUNBUFFERED", "1")  # progress lines arrive as they are printed
        env.insert("PYTHONIOENCODING", "utf-8")  # what LineBuffer decodes (Windows pipes: the ANSI code page)
        process, out, err = qt.QProcess(), LineBuffer(), LineBuffer(carriage_return=True)
        self.tracker, self.log, self.exitCode = ProgressTracker(command_name(args)), [], None
        self._cancelled = self._saving = False
        process.setProcessEnvironment(env)

        def readOutput(final: bool = False):
            for line in out.feed(process.readAllStandardOutput().data(), final):
                if self.tracker.feed(line) is not None and onProgress is not None:
                    onProgress(self.tracker)

        def readErrors(final: bool = False):
            lines = [ln for ln in err.feed(process.readAllStandardError().data(), final) if ln.strip()]
            self._saving = self._saving or any(STOPPING_NOTE in ln for ln in lines)
            self.log = (self.log + lines)[-200:]

        def finished(exitCode, exitStatus):
            readOutput(final=True)
            readErrors(final=True)
            crashed = exitStatus == qt.QProcess.CrashExit  # no exit code then (killed, out of memory)
            self._process, self.exitCode = None, None if crashed else int(exitCode)
            if onFinished is not None:
                onFinished(run_outcome(int(exitCode), crashed, self._cancelled))

        process.connect("readyReadStandardOutput()", readOutput)
        process.connect("readyReadStandardError()", readErrors)
        process.connect("finished(int,QProcess::ExitStatus)", finished)
        process.start(args[0], args[1:])
        if not process.waitForStarted(10000):
            raise RuntimeError(f"could not start {args[0]}: {process.errorString()}")
        self._process = process
        return process

    def wait(self, timeoutSec: float = 3600.0) -> int:
        """Block until the running process ends (Python console and tests only: it freezes the GUI); returns its
        exit code. On timeout the process is killed and TimeoutError raised."""
        process = self._process
        if process is None:
            raise RuntimeError("no surgical-depth process is running")
        # waitForFinished is also False for a process that ended before it was called (its signal not yet delivered)
        if not process.waitForFinished(int(timeoutSec * 1000)) and process.state() != qt.QProcess.NotRunning:
            from SurgicalDepthTrainingLib.process_tree import kill_process_tree
            self._cancelled = True
            kill_process_tree(process.processId())  # kill() would reach PythonSlicer, not the interpreter under it
            process.waitForFinished(10000)
            slicer.app.processEvents()
            raise TimeoutError(f"the process did not finish within {timeoutSec} s")
        slicer.app.processEvents()  # deliver the finished() signal
        return process.exitCode()

    def cancel(self) -> None:
        """Stop the running process without blocking the GUI (``process_tree.cancel_process``: the stop line, then
        SIGTERM to the interpreter and the whole tree; longer once a training said it saves). Finished: "cancelled"."""
        from SurgicalDepthTrainingLib.process_tree import cancel_process
        if self._process is not None:
            self._cancelled = True
            cancel_process(self._process, lambda: self._saving, qt.QTimer.singleShot)

    def stopAndWait(self, timeoutMs: int) -> None:
        """Cancel and wait (blocking; ``process_tree.stop_and_wait``): for Slicer's exit, where no timer fires."""
        from SurgicalDepthTrainingLib.process_tree import stop_and_wait
        if self._process is not None:
            self._cancelled = True
            stop_and_wait(self._process, timeoutMs)

    def showResults(self, folder: Optional[str], report: Optional[str] = None, figure: Optional[str] = None) -> dict:
        """Show the metrics of ``report`` (evaluation JSON) as a vtkMRMLTableNode (and ``"metrics"`` rows), ``log.csv``
        of ``folder`` as a loss / AbsRel plot, ``figure`` (else ``folder``'s newest PNG) as an image. Returns nodes."""
        from SurgicalDepthTrainingLib.slicer_helpers import find_figure, find_history, metric_rows
        nodes: dict = {}
        if report and Path(report).is_file():
            rows = metric_rows(json.loads(Path(report).read_text()))
            nodes["metrics"] = rows
            nodes["metricsTable"] = self._metricsTable(rows)
        history = find_history(folder) if folder else None
        if history is not None:
            nodes.update(self.plotHistory(history))
        figure = figure if figure and Path(figure).is_file() else (find_figure(folder) if folder else None)
        if figure is not None:
            nodes["figure"] = slicer.util.loadVolume(str(figure), {"singleFile": True, "show": False})
            if not slicer.app.commandOptions().noMainWindow:
                slicer.util.setSliceViewerLayers(background=nodes["figure"], fit=True)
        if not nodes:
            raise FileNotFoundError(f"no evaluation report, log.csv or figure found in {folder or report}")
        return nodes

    @staticmethod
    def _metricsTable(rows):
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "SurgicalDepth metrics")
        for name in ("metric", "value"):
            table.AddColumn().SetName(name)
        for j, row in enumerate(rows):
            table.AddEmptyRow()
            for i, text in enumerate(row):
                table.SetCellText(j, i, text)
        return table

    def plotHistory(self, csvPath) -> dict:
        """Training ``log.csv`` → per loss / AbsRel column a vtkMRMLTableNode of its (step, value) rows that have a
        value and a vtkMRMLPlotSeriesNode, in one vtkMRMLPlotChartNode (shown when there is a main window)."""
        import numpy as np
        from SurgicalDepthTrainingLib.slicer_helpers import plot_series, read_history_csv
        series = plot_series(read_history_csv(csvPath))
        if not series:
            raise ValueError(f"{csvPath}: no loss or abs_rel values to plot")
        chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "SurgicalDepth training")
        chart.SetXAxisTitle(series[0][1])
        nodes = {"chart": chart, "tables": [], "series": []}
        for name, x, xs, ys in series:
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"SurgicalDepth {name}")
            slicer.util.updateTableFromArray(table, [np.asarray(xs, np.float64), np.asarray(ys, np.float64)], [x, name])
            s = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            s.SetAndObserveTableNodeID(table.GetID())
            s.SetXColumnName(x)
            s.SetYColumnName(name)
            s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            s.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            chart.AddAndObservePlotSeriesNodeID(s.GetID())
            nodes["tables"] += [table]
            nodes["series"] += [s]
        if not slicer.app.commandOptions().noMainWindow:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        return nodes


class SurgicalDepthTrainingTest(ScriptedLoadableModuleTest):
    def runTest(self):  # the logic self-tests: Testing/Python/SurgicalDepthTrainingLogicTest.py (ctest runs it too)
        from SurgicalDepthLib.slicer_helpers import logic_self_test
        logic_self_test(Path(__file__).parent, "SurgicalDepthTrainingLogicTest", self)
