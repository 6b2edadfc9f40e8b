"""Surgical Depth: monocular depth (Depth Anything V1/V2) and 3D reconstruction of surgical video in 3D Slicer.

Thin glue: the computation is in the Slicer-free ``SurgicalDepthLib`` (imported lazily, after the requirements
check); this file writes each frame that ``sd.depth_stream`` yields into MRML sequences."""
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

#: Official weights offered in the GUI (must equal ``SurgicalDepthLib.WEIGHTS``; checked by the pytest suite).
REGISTRY_NAMES = ("depth-anything-v2-small", "depth-anything-v2-base", "depth-anything-v2-large",
                  "depth-anything-v1-small", "depth-anything-v1-base", "depth-anything-v1-large",
                  "depth-anything-v2-metric-hypersim-small", "depth-anything-v2-metric-vkitti-small")
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
            "Monocular depth (Depth Anything V1/V2) for surgical video: depth volumes, point clouds, per-frame "
            "meshes and a fused surface with the frames in a new sequence browser and folder per run. Camera "
            "(x right, y down, z forward) maps to RAS as R=-x, A=-z, S=-y: the 3D view looks along the endoscope."
            "<br>Python: <code>nodes = slicer.util.getModuleLogic('SurgicalDepth').process('clip.mp4', "
            "model='default', fuse=True)</code> returns the created nodes.")
        self.parent.acknowledgementText = _("Depth Anything V1/V2 models (Yang et al., 2024); licences: README.")


# Literals (SurgicalDepthLib may not be installed yet): pytest checks them against the Lib's shared defaults.
@parameterNodeWrapper
class SurgicalDepthParameterNode:
    inputMode: Annotated[str, Choice(["video", "sequence", "volume"])] = "video"
    videoPath: Path
    inputBrowser: vtkMRMLSequenceBrowserNode
    inputVolume: vtkMRMLVectorVolumeNode
    startFrame: Annotated[int, WithinRange(0, 10000000)] = 0
    frameStride: Annotated[int, WithinRange(1, 10000)] = 1
    maxFrames: Annotated[int, WithinRange(0, 10000000)] = 0  # 0 = all frames
    modelChoice: Annotated[str, Choice(["default", "file", "registry"])] = "default"
    modelPath: Path
    registryName: Annotated[str, Choice(list(REGISTRY_NAMES))] = "depth-anything-v2-small"
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    precision: Annotated[str, Choice(["auto", "fp32", "fp16", "bf16"])] = "auto"
    inputSize: Annotated[int, WithinRange(0, 2044)] = 0  # 0 = the model's own (518 for official models)
    calibrationPath: Path
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    nearMm: Annotated[float, WithinRange(0.1, 10000.0)] = 5.0
    farMm: Annotated[float, WithinRange(0.2, 100000.0)] = 120.0
    pointCloud: bool = True
    pointBudget: Annotated[int, WithinRange(0, 100000000)] = 200000  # points per frame; 0 = full resolution
    colorByDepth: bool = False
    depthMesh: bool = False
    fuse: bool = False
    voxelMm: Annotated[float, WithinRange(0.05, 50.0)] = 1.0


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
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.setParameterNode(None)  # disconnects the GUI; enter() reconnects

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
        """Run buttons work when the chosen input is set and no run is going on (one run at a time)."""
        p = self._parameterNode
        ready = p is not None and bool({"video": str(p.videoPath) not in ("", "."), "sequence": p.inputBrowser,
                                        "volume": p.inputVolume}[p.inputMode])
        self.ui.runCurrentButton.enabled = self.ui.runAllButton.enabled = ready and not self._running

    def onRun(self, allFrames: bool) -> None:
        from SurgicalDepthLib.slicer_helpers import Cancelled
        from SurgicalDepthLib.slicer_run import process_arguments  # the parameter node's choices
        if self._running:
            return
        self._running, self.ui.statusLabel.text = True, ""
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


class SurgicalDepthLogic(ScriptedLoadableModuleLogic):
    """Depth estimation on MRML data. ``process()`` works headless (Python console, ``--no-main-window``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._models: dict = {}

    def getParameterNode(self):
        return SurgicalDepthParameterNode(super().getParameterNode())

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Install the missing ``REQUIREMENTS`` (``slicer_helpers.ensure_requirements``); never at import."""
        import sys
        from SurgicalDepthLib.slicer_helpers import ensure_requirements, parse_requirements
        try:
            import PyTorchUtils  # the SlicerPyTorch extension (EXTENSION_DEPENDS): the torch build for the driver
        except ModuleNotFoundError:
            PyTorchUtils = None
        try:
            from slicer import packaging as slicerPackaging  # Slicer >= 5.12
        except ImportError:
            slicerPackaging = None
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
        dialog = slicer.util.createProgressDialog(value=0, maximum=100, labelText=text)
        dialog.setWindowModality(qt.Qt.WindowModal)  # the scene cannot change under a run

        def progress(fraction: float, text: str) -> bool:
            dialog.labelText, dialog.value = text, int(100 * fraction)
            slicer.app.processEvents()  # repaint and let the user press Cancel
            return not dialog.wasCanceled
        return dialog, progress

    def loadModel(self, source: str = "default", device: str = "auto", askDownload: bool = True,
                  precision: str = "auto"):
        """``sd.load_model``, cached; official weights not on disk are downloaded only after the user agrees."""
        self.setupPythonRequirements(askConfirmation=True)
        import SurgicalDepthLib as sd
        from SurgicalDepthLib.slicer_helpers import download_weights, weights_cached
        key = (str(source), str(device), str(precision))
        if source in sd.WEIGHTS and key not in self._models and not weights_cached(source):
            if askDownload and not slicer.util.confirmOkCancelDisplay(_(
                    "Model {name} is not on this computer. Download the official weights now? Their SHA256 digest is "
                    "recorded and checked at every later load.").format(name=source)):
                raise RuntimeError(f"download of model {source!r} was declined")
            dialog, progress = self.progressDialog(source)
            try:
                download_weights(source, progress)  # Cancel stops it and leaves no partial file
            finally:
                dialog.close()
        if key not in self._models:
            self._models[key] = sd.load_model(source, device=device, precision=precision)
        return self._models[key]

    def process(self, videoPath=None, model="default", *, browser=None, volume=None, startFrame=0, frameStride=1,
                maxFrames=0, currentOnly=False, device="auto", precision="auto", inputSize=0, intrinsics=None,
                calibration=None, fx=0.0, fy=0.0, cx=0.0, cy=0.0, nearMm=None, farMm=None, temporal=False,
                pointCloud=True, pointBudget=200000, colorByDepth=False, depthMesh=None, fuse=False, voxelMm=1.0,
                memoryBudget: Optional[int] = None, progress: Optional[Callable] = None):
        """Depth of a video / image folder (``videoPath``), a ``browser`` (its master sequence of RGB volumes) or
        one RGB ``volume`` into a new browser and subject-hierarchy folder; returns a ``SurgicalDepthNodes``.
        Frames ``startFrame, startFrame + frameStride, ...`` (<= ``maxFrames``; 0 = all), or with ``currentOnly``
        the browser's selected item (a video's: the range's first frame). Depth range and field of view default to
        the CLI's; ``pointBudget`` points per cloud (0 = all); ``depthMesh`` None = for one frame only. Refused
        before decoding when the outputs need more than ``memoryBudget`` bytes (default: half the free RAM).
        ``progress(fraction, text) -> bool``: False cancels (``Cancelled``; the run's nodes are removed)."""
        progress = progress or (lambda fraction, text: True)
        self.setupPythonRequirements(askConfirmation=True)
        from SurgicalDepthLib import slicer_run as run
        from SurgicalDepthLib.slicer_helpers import Cancelled, SurgicalDepthNodes, resolve_intrinsics
        src = (run.video_source(videoPath, startFrame, frameStride, maxFrames, currentOnly) if videoPath is not None
               and browser is None and volume is None else self._nodeSource(browser, volume, startFrame, frameStride,
                                                                            maxFrames, currentOnly))
        kinds = run.output_kinds(src, points=pointCloud, meshes=depthMesh, fuse=fuse)
        run.check_memory(src, kinds, pointBudget, memoryBudget)  # before decoding anything
        intr = resolve_intrinsics(src.width, src.height, intrinsics, calibration, (fx, fy, cx, cy))
        if not progress(0.0, _("Loading the model")):
            raise Cancelled("cancelled by the user")
        net = self.loadModel(model, device, precision=precision)
        names = [node.GetName() for node in slicer.util.getNodesByClass("vtkMRMLNode")]
        name = run.unique_run_name(f"{src.name} depth", names)  # one name per run: no same-named sequences
        nodes = SurgicalDepthNodes(frames=src.sequence)
        with self._collectNewNodes(nodes, name):
            temps = self._newSequences(nodes, name, src, kinds)
            result = run.run_frames(net, src, intr, kinds, lambda item, outputs: self._store(
                nodes, temps, src, item, outputs), progress, point_budget=pointBudget, near_mm=nearMm, far_mm=farMm,
                voxel_mm=voxelMm, temporal=temporal, input_size=inputSize or None)
            nodes.frameCount = result.frames
            if result.fused is not None:
                nodes.fused = slicer.modules.models.logic().AddModel(result.fused)
                nodes.fused.SetName(f"{name} fused surface")
            nodes.browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name)
            for seq in filter(None, (nodes.depth, nodes.frames, nodes.points, nodes.meshes, nodes.poses)):
                nodes.browser.AddSynchronizedSequenceNode(seq)  # the first added (depth) is the master
            nodes.browser.SetPlaybackRateFps(float(src.fps / src.items.step) if src.fps else 10.0)
            self._showResults(nodes, result.display_range, colorByDepth)
        return nodes

    def _nodeSource(self, browser, volume, start, stride, maxFrames, currentOnly):
        """``FrameSource`` of one RGB volume, or of the selected items of a browser's master sequence (shared)."""
        from SurgicalDepthLib.slicer_run import array_source, select_frames
        if volume is not None:
            ijk = self._ijk(volume)
            return array_source(volume.GetName(), [slicer.util.arrayFromVolume(volume)], range(1), lambda i: "0",
                                lambda i: ijk)
        seq = browser.GetMasterSequenceNode() if browser is not None else None
        if seq is None or seq.GetDataNodeClassName() != "vtkMRMLVectorVolumeNode":
            raise ValueError("process: give videoPath, volume or a browser whose master sequence holds RGB vector "
                             f"volumes (vtkMRMLVectorVolumeNode), not {seq.GetDataNodeClassName() if seq else None}")
        items = select_frames(seq.GetNumberOfDataNodes(), start, stride, maxFrames,
                              browser.GetSelectedItemNumber() if currentOnly else None)
        return array_source(seq.GetName(), [slicer.util.arrayFromVolume(seq.GetNthDataNode(i)) for i in items], items,
                            seq.GetNthIndexValue, lambda i: self._ijk(seq.GetNthDataNode(i)), sequence=seq)

    @staticmethod
    def _ijk(volumeNode):
        from SurgicalDepthLib.slicer_helpers import copy_ijk_to_ras
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return copy_ijk_to_ras(slicer.util.arrayFromVTKMatrix(matrix))

    @staticmethod
    def _newSequences(nodes, name, src, kinds) -> dict:
        """The run's sequences, indexed like the input frames, and the (scene-less) node ``_store`` reuses per kind."""
        from SurgicalDepthLib.slicer_run import OUTPUT_LABELS
        ref = src.sequence  # index type 0 = vtkMRMLSequenceNode::NumericIndex
        index = (ref.GetIndexName(), ref.GetIndexUnit(), ref.GetIndexType()) if ref else (
            ("time", "s", 0) if src.fps else ("frame", "", 0))
        for kind in kinds:
            seq = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} {OUTPUT_LABELS[kind]}")
            seq.SetIndexName(index[0])
            seq.SetIndexUnit(index[1])
            seq.SetIndexType(index[2])
            setattr(nodes, kind, seq)
        return {"frames": slicer.vtkMRMLVectorVolumeNode(), "depth": slicer.vtkMRMLScalarVolumeNode(),
                "points": slicer.vtkMRMLModelNode(), "meshes": slicer.vtkMRMLModelNode(),
                "poses": slicer.vtkMRMLLinearTransformNode()}

    @staticmethod
    def _store(nodes, temps, src, item, outputs: dict) -> None:
        """Write one frame's outputs (``slicer_run.frame_outputs``) into the sequences at the item's index value."""
        value, ijk = src.index_value(item), slicer.util.vtkMatrixFromArray(src.ijk_to_ras(item))
        for kind, data in outputs.items():
            node = temps[kind]
            if kind in ("frames", "depth"):
                slicer.util.updateVolumeFromArray(node, data)
                node.SetIJKToRASMatrix(ijk)  # the input frame's geometry: the depth overlay lies on its frame
            elif kind == "poses":
                slicer.util.updateTransformMatrixFromArray(node, data)
            else:
                node.SetAndObserveMesh(data)
            getattr(nodes, kind).SetDataNodeAtValue(node, value)

    @contextmanager
    def _collectNewNodes(self, nodes, name: str):
        """New nodes go into a subject-hierarchy folder ``name``; after an error or a cancel they are all removed."""
        before = {node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLNode")}
        added = lambda: [n for n in slicer.util.getNodesByClass("vtkMRMLNode") if n.GetID() not in before]  # noqa: E731
        try:
            yield
        except BaseException:
            for node in added():
                if node.GetScene() is not None:
                    slicer.mrmlScene.RemoveNode(node)
            raise
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        nodes.folder = sh.CreateFolderItem(sh.GetSceneItemID(), name)
        for item in filter(None, map(sh.GetItemByDataNode, added())):  # 0 = no item (display nodes, ...)
            if sh.GetItemParent(item) == sh.GetSceneItemID():
                sh.SetItemParent(item, nodes.folder)

    def _showResults(self, nodes, depthRange, colorByDepth: bool) -> None:
        from SurgicalDepthLib.slicer_helpers import DEPTH_THRESHOLD_MM
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(nodes.browser)
        nodes.proxies = {key: nodes.browser.GetProxyNode(getattr(nodes, key)) for key in
                         ("frames", "depth", "points", "meshes", "poses") if getattr(nodes, key) is not None}
        depthProxy = nodes.proxies["depth"]
        depthProxy.CreateDefaultDisplayNodes()
        d = depthProxy.GetDisplayNode()
        d.SetAndObserveColorNodeID(DEPTH_COLOR_NODE_ID)
        d.SetAutoWindowLevel(False)
        d.SetWindowLevelMinMax(*depthRange)
        d.SetAutoThreshold(False)
        d.SetThreshold(*DEPTH_THRESHOLD_MM)
        d.SetApplyThreshold(True)  # NaN (invalid) fails the threshold: transparent, not drawn as "near"
        for model in filter(None, (nodes.proxies.get("points"), nodes.proxies.get("meshes"))):
            model.CreateDefaultDisplayNodes()
            d = model.GetDisplayNode()
            d.SetPointSize(3)
            d.SetActiveScalar("Depth" if colorByDepth else "RGB", vtk.vtkAssignAttribute.POINT_DATA)
            d.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange if colorByDepth else
                                 slicer.vtkMRMLDisplayNode.UseDirectMapping)
            if colorByDepth:  # red near -> blue far over the clip's robust depth range
                d.SetAndObserveColorNodeID(DEPTH_COLOR_NODE_ID)
                d.SetScalarRange(*depthRange)
            d.SetScalarVisibility(True)
            if "poses" in nodes.proxies:
                model.SetAndObserveTransformNodeID(nodes.proxies["poses"].GetID())
        if not slicer.app.commandOptions().noMainWindow:
            slicer.modules.sequences.toolBar().setActiveBrowserNode(nodes.browser)
            slicer.util.setSliceViewerLayers(background=nodes.proxies["frames"], foreground=depthProxy,
                                             foregroundOpacity=0.5, fit=True)


class SurgicalDepthTest(ScriptedLoadableModuleTest):
    """Self-test on one synthetic RGB volume; Testing/Python/SurgicalDepthLogicTest.py (ctest) adds the scenarios
    (current frame of a browser, clip with stride, cancel). Skipped with a message when packages are missing in
    testing mode (extension build machines install nothing)."""

    def setUp(self):
        from SurgicalDepthLib.slicer_helpers import MissingRequirements
        slicer.mrmlScene.Clear()
        try:
            SurgicalDepthLogic().setupPythonRequirements(askConfirmation=True)
        except MissingRequirements as exc:
            self.skipTest(f"Surgical Depth self-test skipped: {exc}")

    def test_volume(self):
        """One RGB volume: depth with the volume's geometry, NaN (never 0) depth not drawn, cloud <= budget."""
        import numpy as np
        import SurgicalDepthTrainingLib as sdt
        image = sdt.render_clip("stomach", n_frames=1, seed=1, height=56, width=70)[0]["image"]
        volume = slicer.util.addVolumeFromArray(image[None], np.diag([0.5, 0.5, 2.0, 1.0]), "frame",
                                                "vtkMRMLVectorVolumeNode")
        logic = SurgicalDepthLogic()
        nodes = logic.process(volume=volume, inputSize=70, pointBudget=500)
        depth = slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(0))
        self.assertTrue(depth.shape == (1, 56, 70) and not (depth == 0).any())
        self.assertTrue(np.allclose(logic._ijk(nodes.depth.GetNthDataNode(0)), logic._ijk(volume)))
        self.assertTrue(nodes.proxies["depth"].GetDisplayNode().GetApplyThreshold())
        self.assertLessEqual(nodes.proxies["points"].GetPolyData().GetNumberOfPoints(), 500)
        self.assertIsNotNone(nodes.meshes)  # one frame: its depth mesh by default
