"""Surgical Depth: monocular depth (Depth Anything V1/V2) and 3D reconstruction of surgical video in 3D Slicer.

Thin glue: the computation is in the Slicer-free ``SurgicalDepthLib`` (imported lazily, after the requirements
check); this file writes each frame that ``sd.depth_stream`` yields into MRML sequences (live: ``live_worker``)."""
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLSequenceBrowserNode, vtkMRMLVectorVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from SurgicalDepthLib.weights import REGISTRY_NAMES  # official weights offered in the GUI (standard library only)

#: Slicer colour table for depth colouring: Rainbow runs red (low = near) to purple/blue (high = far).
DEPTH_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"
REQUIREMENTS = Path(__file__).resolve().parent / "Resources" / "SurgicalDepthRequirements.txt"


class SurgicalDepth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Surgical Depth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Depth Estimation")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["SurgicalDepth contributors"]
        self.parent.helpText = _(
            "Monocular depth (Depth Anything V1/V2) for surgical video, sequences, images and live images: depth "
            "volumes, point clouds, meshes and a fused surface in a new sequence browser and folder per run. Camera "
            "(x right, y down, z forward) maps to RAS as R=-x, A=-z, S=-y: the 3D view looks along the endoscope."
            "<br>Python: <code>slicer.util.getModuleLogic('SurgicalDepth').process('clip.mp4', fuse=True)</code>.")
        self.parent.acknowledgementText = _("Depth Anything V1/V2 models (Yang et al., 2024); licences: README.")


# Literals, apart from REGISTRY_NAMES: pytest checks them against the Lib's shared defaults.
@parameterNodeWrapper
class SurgicalDepthParameterNode:
    inputMode: Annotated[str, Choice(["video", "sequence", "volume", "live"])] = "video"
    videoPath: Path
    inputBrowser: vtkMRMLSequenceBrowserNode
    inputVolume: vtkMRMLVectorVolumeNode
    startFrame: Annotated[int, WithinRange(0, 10000000)] = 0
    frameStride: Annotated[int, WithinRange(1, 10000)] = 1
    maxFrames: Annotated[int, WithinRange(0, 10000000)] = 0  # 0 = all frames
    fovMode: Annotated[str, Choice(["auto", "none", "file"])] = "auto"
    fovPath: Path
    modelChoice: Annotated[str, Choice(["default", "file", "registry"])] = "default"
    modelPath: Path
    registryName: Annotated[str, Choice(list(REGISTRY_NAMES))] = "depth-anything-v2-small"
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    precision: Annotated[str, Choice(["auto", "fp32", "fp16", "bf16"])] = "auto"
    backend: Annotated[str, Choice(["auto", "torch", "onnxruntime", "openvino"])] = "auto"  # auto says why
    inputSize: Annotated[int, WithinRange(0, 2044)] = 0  # 0 = the model's own (518 for official models)
    detailSize: Annotated[int, WithinRange(0, 2044)] = 0  # 0 = one read; else a detail read (not live)
    calibrationPath: Path
    fx: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0  # pixels (all four); fx 0 = no calibration
    fy: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    cx: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    cy: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    nearMm: Annotated[float, WithinRange(0.1, 10000.0)] = 5.0
    farMm: Annotated[float, WithinRange(0.2, 100000.0)] = 120.0
    pointCloud: bool = True
    pointBudget: Annotated[int, WithinRange(0, 100000000)] = 200000  # points per frame; 0 = full resolution
    colorByDepth: bool = False
    depthMesh: bool = False
    fuse: bool = False
    voxelMm: Annotated[float, WithinRange(0.05, 50.0)] = 1.0
    liveRecord: bool = False
    liveRecordFrames: Annotated[int, WithinRange(1, 1000000)] = 300


class SurgicalDepthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self._running = False  # one run at a time: the run buttons are disabled while it lasts

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SurgicalDepth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SurgicalDepthLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.runCurrentButton.connect("clicked(bool)", lambda checked: self.onRun(allFrames=False))
        self.ui.runAllButton.connect("clicked(bool)", lambda checked: self.onRun(allFrames=True))
        self.ui.liveStartButton.connect("clicked(bool)", lambda checked: self.onLiveStart())
        self.ui.liveStopButton.connect("clicked(bool)", lambda checked: self.logic.stopLive())
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.logic.stopLive(wait=True)
        self.removeObservers()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.setParameterNode(None)  # disconnects the GUI (live depth goes on); enter() reconnects

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    enter, exit = initializeParameterNode, onSceneStartClose

    def setParameterNode(self, inputParameterNode: Optional[SurgicalDepthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Run buttons: on when the input is set and nothing runs; the model line: the last model's backend, and why."""
        from SurgicalDepthLib.slicer_run import input_ready
        p, live = self._parameterNode, self.logic.liveRunning
        idle = input_ready(p) and not self._running and not live
        self.ui.runCurrentButton.enabled = self.ui.runAllButton.enabled = idle
        self.ui.modelStatusLabel.text = self.logic.modelStatus
        self.ui.liveStartButton.enabled, self.ui.liveStopButton.enabled = idle and p.inputMode == "live", live

    def onRun(self, allFrames: bool) -> None:
        from SurgicalDepthLib.slicer_run import Cancelled, process_arguments  # the parameter node's choices
        self._running, self.ui.statusLabel.text = True, ""  # the run buttons are disabled until it ends
        self._checkCanApply()
        dialog, progress = SurgicalDepthLogic.progressDialog(_("Loading the model..."))
        try:
            with slicer.util.tryWithErrorDisplay(_("Depth estimation failed."), waitCursor=True):
                try:
                    nodes = self.logic.process(**process_arguments(self._parameterNode, allFrames), progress=progress)
                    self.ui.statusLabel.text = _("Done: {count} frame(s).").format(count=nodes.frameCount)
                except Cancelled:
                    self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
        finally:
            dialog.close()
            self._running = False
            self._checkCanApply()

    def onLiveStart(self) -> None:
        from SurgicalDepthLib.slicer_run import live_arguments
        with slicer.util.tryWithErrorDisplay(_("Live depth failed."), waitCursor=True):  # current image first
            self.logic.startLive(**live_arguments(self._parameterNode), onUpdate=self._onLiveUpdate)

    def _onLiveUpdate(self, text: str) -> None:
        self.ui.statusLabel.text = text
        self._checkCanApply()  # after start, stop, or an error that stopped it


class SurgicalDepthLogic(ScriptedLoadableModuleLogic):
    """Depth estimation on MRML data. ``process()`` works headless (Python console, ``--no-main-window``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._models, self.modelStatus = {}, ""  # slicer_model.load_cached's cache; the last model's backend, why
        self._live: Optional[dict] = None  # the live run's worker, nodes, timer and observations
        self._stopping: Optional[dict] = None  # a stopped live run whose worker is still finishing its image
    liveRunning = property(lambda self: self._live is not None)

    def getParameterNode(self):
        return SurgicalDepthParameterNode(super().getParameterNode())

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Install the missing ``REQUIREMENTS`` (``slicer_helpers.ensure_requirements``); never at import."""
        import importlib.util  # PyTorchUtils: SlicerPyTorch (EXTENSION_DEPENDS), the torch build for the driver
        import sys
        from SurgicalDepthLib.slicer_helpers import ensure_requirements, parse_requirements
        PyTorchUtils, slicerPackaging = (importlib.import_module(name) if importlib.util.find_spec(name) else None
                                         for name in ("PyTorchUtils", "slicer.packaging"))  # the latter: >= 5.12
        ensure_requirements(
            parse_requirements(REQUIREMENTS.read_text()), modules=list(sys.modules), ask=askConfirmation,
            testing=slicer.app.testingEnabled(), confirm=slicer.util.confirmOkCancelDisplay,
            restart=slicer.util.restart,
            install_torch=PyTorchUtils and (lambda spec: PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=askConfirmation, torchVersionRequirement=spec) is not None),
            pip_ensure=slicerPackaging and (lambda reqs: slicerPackaging.pip_ensure(
                reqs, prompt_install=askConfirmation, requester="SurgicalDepth")),
            pip_install=slicer.util.pip_install)  # given a list: one pip call, one argument per item (Slicer >= 5.8)

    @staticmethod
    def progressDialog(text: str):
        """A window-modal progress dialog and its ``progress(fraction, text) -> bool`` (False once cancelled)."""
        from SurgicalDepthLib.slicer_run import dialog_progress
        dialog = slicer.util.createProgressDialog(value=0, maximum=100, labelText=text)
        dialog.setWindowModality(qt.Qt.WindowModal)  # the scene cannot change under a run
        return dialog, dialog_progress(dialog, slicer.app.processEvents)

    def loadModel(self, source="default", device="auto", askDownload=True, precision="auto", backend="torch"):
        """``sd.load_model`` with ``backend`` resolved (``auto``: why in ``modelStatus``), cached by source, device,
        backend and precision; official weights not on disk are downloaded only after the user agrees."""
        self.setupPythonRequirements(askConfirmation=True)
        from SurgicalDepthLib.slicer_model import load_cached
        from SurgicalDepthLib.slicer_run import ensure_weights
        self.modelStatus, ask = "", askDownload and (lambda: slicer.util.confirmOkCancelDisplay(_(  # "": not loaded
            "Model {name} is not on this computer. Download the official weights now? The file is checked "
            "against its published SHA256 digest.").format(name=source)))
        net, self.modelStatus = load_cached(self._models, source, device, precision, backend, download=lambda: (
            ensure_weights(source, ask or None, self.progressDialog)))  # Cancel: the next download resumes
        return net

    def process(self, videoPath=None, model="default", *, browser=None, volume=None, startFrame=0, frameStride=1,
                maxFrames=0, currentOnly=False, device="auto", precision="auto", backend="torch", inputSize=0,
                detailSize=0, intrinsics=None, calibration=None, fx=0.0, fy=0.0, cx=0.0, cy=0.0, nearMm=None,
                farMm=None, temporal=False, pointCloud=True, pointBudget=200000, colorByDepth=False, depthMesh=None,
                fuse=False, voxelMm=1.0, fovMask="auto", memoryBudget=None, progress: Optional[Callable] = None):
        """Depth of a video / image folder (``videoPath``), a ``browser`` (its master sequence of RGB volumes) or one
        RGB ``volume`` into a new browser and subject-hierarchy folder; returns a ``SurgicalDepthNodes``. Frames
        ``startFrame, +frameStride, ...`` (<= ``maxFrames``; 0 = all) or, with ``currentOnly``, the selected item (a
        video's: the range's first). ``detailSize``: a second, larger read (``SurgicalDepthLib.detail``; 0 = one).
        Model: ``loadModel`` (``backend="auto"``: ``modelStatus`` says why); ``fovMask``: ``slicer_run.resolve_fov``;
        ``depthMesh`` None: one frame's. Refused before decoding if over ``memoryBudget`` bytes (half the free RAM).
        ``progress(fraction, text)``: False cancels (``Cancelled``; the run's nodes are removed)."""
        progress = progress or (lambda fraction, text: True)
        self.setupPythonRequirements(askConfirmation=True)
        from SurgicalDepthLib import slicer_run as run
        from SurgicalDepthLib.slicer_helpers import Cancelled, SurgicalDepthNodes, has_calibration, resolve_intrinsics
        from SurgicalDepthLib.slicer_sequences import fill_browser, store_outputs
        src = (run.video_source(videoPath, startFrame, frameStride, maxFrames, currentOnly) if videoPath is not None
               and browser is None and volume is None else self._nodeSource(browser, volume, startFrame, frameStride,
                                                                            maxFrames, currentOnly))
        kinds = run.output_kinds(src, points=pointCloud, meshes=depthMesh, fuse=fuse)
        fusionBytes = run.check_memory(src, kinds, pointBudget, memoryBudget)  # before decoding anything
        intr = resolve_intrinsics(src.width, src.height, intrinsics, calibration, (fx, fy, cx, cy))
        if not progress(0.0, _("Loading the model")):
            raise Cancelled("cancelled by the user")
        net = self.loadModel(model, device, precision=precision, backend=backend)
        name = run.unique_run_name(f"{src.name} depth", slicer.util.getNodes())  # no same-named sequences
        nodes = SurgicalDepthNodes(frames=src.sequence, model=net)
        with self._collectNewNodes(nodes, name):
            temps = self._newSequences(nodes, name, src, kinds)
            result = run.run_frames(net, src, intr, kinds, lambda item, outputs: store_outputs(
                slicer.util, nodes, temps, src.index_value(item), src.ijk_to_ras(item), outputs), progress,
                point_budget=pointBudget, near_mm=nearMm, far_mm=farMm, voxel_mm=voxelMm, temporal=temporal,
                input_size=inputSize or None, fov_mask=fovMask, calibrated=has_calibration(intrinsics, calibration, fx),
                detail_size=detailSize or None, fusion_bytes=fusionBytes)
            nodes.frameCount = result.frames
            if result.fov_mask is not None:  # the field of view the run used (label 1), on the depth's geometry
                nodes.fov = slicer.util.addVolumeFromArray(result.fov_mask[None].astype("uint8"), src.ijk_to_ras(
                    src.items[0]), f"{name} field of view", "vtkMRMLLabelMapVolumeNode")
            if result.fused is not None:
                nodes.fused = slicer.modules.models.logic().AddModel(result.fused)
                nodes.fused.SetName(f"{name} fused surface")
            nodes.browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name)
            fill_browser(nodes.browser, [s for s in (nodes.depth, nodes.frames, nodes.points, nodes.meshes, nodes.poses)
                                         if s is not None], src.fps / src.items.step if src.fps else 10.0)
            self._showResults(nodes, result.display_range, colorByDepth)
        return nodes

    def startLive(self, volume, model="default", *, recordFrames=0, onUpdate: Callable = lambda text: None, **options):
        """Live depth of an updating RGB ``volume`` (e.g. an OpenIGTLink connector's image) until ``stopLive()``:
        ``process(volume=volume, **options)`` makes the run from the current image, then a ``live_worker.LiveWorker``
        thread infers each newest image with its model and field of view and a timer shows the results in place in the
        run's proxies; the sequences keep the first ``recordFrames`` images (1 at least); ``onUpdate(text)``: status."""
        from SurgicalDepthLib.live_worker import LiveWorker, new_image_event, worker_options
        from SurgicalDepthLib.slicer_source import volume_array
        self.stopLive(wait=True)  # and a stopped worker still finishing its image
        nodes = self.process(volume=volume, model=model, **options)
        worker = LiveWorker(nodes.model, **worker_options(  # the run's model and field of view
            options, slicer.util.arrayFromVolume(nodes.fov)[0] > 0 if nodes.fov else None, recordFrames))
        timer = qt.QTimer()  # polls the worker on the GUI thread (MRML only there), like Slicer's Endoscopy module
        timer.setInterval(30)
        imageChanged, sceneClosing = new_image_event(volume, slicer), slicer.mrmlScene.StartCloseEvent
        self._live = live = dict(worker=worker.start(), nodes=nodes, timer=timer, onUpdate=onUpdate, observed=[
            (volume, volume.AddObserver(imageChanged, lambda caller, event: worker.put(  # a copy: it changes in place
                volume_array(volume.GetImageData()).copy(), self._ijk(volume)))),
            (slicer.mrmlScene, slicer.mrmlScene.AddObserver(sceneClosing, lambda caller, event: self.stopLive()))])
        timer.connect("timeout()", lambda: self._pollLive(live))
        timer.start()
        return nodes

    def _pollLive(self, live: dict, final: bool = False) -> None:
        """Timer slot: results into the proxies in place, the first ``recordFrames`` also into the sequences (which
        resets the proxies to the browser's item: it is set to the newest); an error stops live depth. Once stopped,
        it only says when the worker has ended (``final``: stop polling anyway)."""
        if live is not self._live:
            ended = not live["worker"].running
            live["onUpdate"](live["worker"].stats().format() + (_(" (stopped)") if ended else _(" (stopping)")))
            if ended or final:
                live["timer"].stop()
                self._stopping = None
            return
        from SurgicalDepthLib.slicer_sequences import store_outputs
        try:
            results, nodes = live["worker"].results(), live["nodes"]
        except Exception as exc:
            self.stopLive()
            return slicer.util.errorDisplay(_("Live depth stopped: {error}").format(error=exc))
        for r in results:
            store_outputs(slicer.util, nodes, nodes.proxies, str(r.number) if r.record else None, r.meta, r.outputs)
        if results and r.record:
            nodes.browser.SetSelectedItemNumber(nodes.depth.GetNumberOfDataNodes() - 1)
        nodes.frameCount += len(results)
        live["onUpdate"](live["worker"].stats().format())

    def stopLive(self, wait: bool = False) -> None:
        """Stop live depth (if running): no more images are taken; the worker ends after its image in inference,
        which the GUI does not wait for (the status says "stopping", then "stopped") unless ``wait``: then that
        worker, or one stopped earlier and still finishing, is joined (10 s at most: then it ends by itself)."""
        live, self._live = self._live, None
        for observed, tag in live["observed"] if live else ():
            observed.RemoveObserver(tag)
        self._stopping = live or self._stopping
        if self._stopping is not None:
            self._stopping["worker"].stop(timeout=10.0 if wait else 0.0)
            self._pollLive(self._stopping, final=wait)

    def _nodeSource(self, browser, volume, start, stride, maxFrames, currentOnly):
        """``FrameSource`` of one RGB volume, or of the selected items of a browser's master sequence (shared)."""
        from SurgicalDepthLib.slicer_source import array_source, check_rgb_sequence, select_frames, volume_array
        if volume is not None:
            ijk = self._ijk(volume)
            return array_source(volume.GetName(), [volume_array(volume.GetImageData())], range(1), lambda i: "0",
                                lambda i: ijk)
        seq = browser.GetMasterSequenceNode() if browser is not None else None
        check_rgb_sequence(seq.GetDataNodeClassName() if seq else None)
        items = select_frames(seq.GetNumberOfDataNodes(), start, stride, maxFrames,
                              browser.GetSelectedItemNumber() if currentOnly else None)
        return array_source(seq.GetName(), [volume_array(seq.GetNthDataNode(i).GetImageData()) for i in items],
                            items, seq.GetNthIndexValue, lambda i: self._ijk(seq.GetNthDataNode(i)), sequence=seq)

    @staticmethod
    def _ijk(volumeNode):
        from SurgicalDepthLib.slicer_helpers import copy_ijk_to_ras
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return copy_ijk_to_ras(slicer.util.arrayFromVTKMatrix(matrix))

    @staticmethod
    def _newSequences(nodes, name, src, kinds) -> dict:
        """The run's sequences, indexed like the input frames, and the (scene-less) node reused per kind."""
        from SurgicalDepthLib.slicer_helpers import index_tolerance
        from SurgicalDepthLib.slicer_run import OUTPUT_LABELS, OUTPUT_NODE_CLASSES
        ref = src.sequence  # index type 0 = vtkMRMLSequenceNode::NumericIndex
        index = (ref.GetIndexName(), ref.GetIndexUnit(), ref.GetIndexType(), ref.GetNumericIndexValueTolerance()) \
            if ref else (*(("time", "s", 0) if src.fps else ("frame", "", 0)), index_tolerance(src.fps))
        for kind in kinds:
            seq = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} {OUTPUT_LABELS[kind]}")
            for setter, value in zip(("SetIndexName", "SetIndexUnit", "SetIndexType", "SetNumericIndexValueTolerance"),
                                     index):
                getattr(seq, setter)(value)
            setattr(nodes, kind, seq)
        return {kind: getattr(slicer, cls)() for kind, cls in OUTPUT_NODE_CLASSES.items()}

    @contextmanager
    def _collectNewNodes(self, nodes, name: str):
        """The run's own new nodes (``run_nodes``) go into a subject-hierarchy folder ``name``; cancels remove them."""
        from SurgicalDepthLib.slicer_helpers import file_run_nodes, run_nodes
        ids = lambda: {node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLNode")}  # noqa: E731
        before, added = ids(), lambda: run_nodes(nodes.roots(), ids() - before)  # noqa: E731
        try:
            yield
        except BaseException:
            for node in added():
                if node.GetScene() is not None:
                    slicer.mrmlScene.RemoveNode(node)
            raise
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        nodes.folder = sh.CreateFolderItem(sh.GetSceneItemID(), name)
        file_run_nodes(sh, nodes.folder, added())

    def _showResults(self, nodes, depthRange, colorByDepth: bool) -> None:
        from SurgicalDepthLib.slicer_run import OUTPUT_NODE_CLASSES, display_settings
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(nodes.browser)
        nodes.proxies = {key: nodes.browser.GetProxyNode(getattr(nodes, key)) for key in OUTPUT_NODE_CLASSES
                         if getattr(nodes, key) is not None}
        for kind, node in nodes.proxies.items():
            if kind in ("depth", "points", "meshes"):  # colours; NaN depth transparent
                node.CreateDefaultDisplayNodes()
                for setter, args in display_settings(kind, depthRange, colorByDepth, DEPTH_COLOR_NODE_ID):
                    getattr(node.GetDisplayNode(), setter)(*args)
            if kind in ("points", "meshes") and "poses" in nodes.proxies:
                node.SetAndObserveTransformNodeID(nodes.proxies["poses"].GetID())
        if not slicer.app.commandOptions().noMainWindow:
            slicer.modules.sequences.toolBar().setActiveBrowserNode(nodes.browser)
            slicer.util.setSliceViewerLayers(background=nodes.proxies["frames"], foreground=nodes.proxies["depth"],
                                             label=nodes.fov, foregroundOpacity=0.5, fit=True)
            for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
                sliceNode.SetUseLabelOutline(True)  # the field of view's border, not a fill over the tissue


class SurgicalDepthTest(ScriptedLoadableModuleTest):
    def runTest(self):  # the logic self-tests: Testing/Python/SurgicalDepthLogicTest.py (ctest runs that file too)
        from SurgicalDepthLib.slicer_helpers import logic_self_test
        logic_self_test(Path(__file__).parent, "SurgicalDepthLogicTest", self)
