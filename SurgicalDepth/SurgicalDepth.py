"""Surgical Depth: monocular depth (Depth Anything V1/V2) and 3D reconstruction of surgical video in 3D Slicer.

Thin glue: all computation is in the Slicer-free ``SurgicalDepthLib``; this file moves data between MRML nodes and
numpy / vtkPolyData. torch and SurgicalDepthLib are imported inside Logic methods, after the requirements check.
"""
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Optional

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


class SurgicalDepth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Surgical Depth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Depth Estimation")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["SurgicalDepth contributors"]
        self.parent.helpText = _(
            "Monocular depth (Depth Anything V1/V2) for surgical video: depth volumes, point clouds, per-frame "
            "meshes and a fused surface, all synchronised in one sequence browser. Camera frame (x right, y down, "
            "z forward) maps to RAS as R=-x, A=-z, S=-y, so the default 3D view looks along the endoscope.<br>"
            "Python console: <code>nodes = slicer.util.getModuleLogic('SurgicalDepth').process('clip.mp4', "
            "model='default', fuse=True)</code> returns the created nodes (browser, frames, depth, points, meshes, "
            "poses sequences and the fused surface model).")
        self.parent.acknowledgementText = _("Depth Anything V1/V2 models (Yang et al., 2024); licences: README.")


@parameterNodeWrapper
class SurgicalDepthParameterNode:
    inputMode: Annotated[str, Choice(["video", "sequence", "volume"])] = "video"
    videoPath: Path
    inputBrowser: vtkMRMLSequenceBrowserNode
    inputVolume: vtkMRMLVectorVolumeNode
    maxFrames: Annotated[int, WithinRange(0, 100000)] = 0  # 0 = all frames
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
    nearMm: Annotated[float, WithinRange(0.1, 10000.0)] = 10.0
    farMm: Annotated[float, WithinRange(0.2, 100000.0)] = 150.0
    pointCloud: bool = True
    colorByDepth: bool = False
    depthMesh: bool = True
    fuse: bool = False
    voxelMm: Annotated[float, WithinRange(0.05, 50.0)] = 1.0


class SurgicalDepthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None

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

    def setParameterNode(self, inputParameterNode: Optional[SurgicalDepthParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onRun(self, allFrames: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("Depth estimation failed."), waitCursor=True):
            dialog = slicer.util.createProgressDialog(value=0, maximum=100, labelText=_("Loading the model..."))
            def progress(fraction: float, text: str) -> bool:
                dialog.labelText, dialog.value = text, int(100 * fraction)
                slicer.app.processEvents()  # repaint and let the user press Cancel
                return not dialog.wasCanceled
            try:
                nodes = self.logic.processParameterNode(self._parameterNode, allFrames, progress)
            finally:
                dialog.close()
            self.ui.statusLabel.text = _("Done: {count} frame(s).").format(count=nodes.frameCount)


class SurgicalDepthLogic(ScriptedLoadableModuleLogic):
    """Depth estimation on MRML data. ``process()`` works headless (Python console, ``--no-main-window``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._models: dict = {}

    def getParameterNode(self):
        return SurgicalDepthParameterNode(super().getParameterNode())

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Install what ``Resources/requirements.txt`` lists and is missing, after asking: torch through
        SlicerPyTorch when installed (CUDA build matching the driver), the rest with pip. Never at import."""
        from SurgicalDepthLib.slicer_helpers import missing_requirements, parse_requirements, torch_requirement
        path = Path(__file__).resolve().parent / "Resources" / "requirements.txt"
        missing = missing_requirements(parse_requirements(path.read_text()))
        if missing and (slicer.app.testingEnabled() or askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("Surgical Depth needs these Python packages:\n{packages}\nInstall them now?").format(
                    packages="\n".join(missing)))):
            raise RuntimeError(f"required Python packages are not installed: {missing}")
        torch = torch_requirement(missing)
        if torch is not None and "PyTorchUtils" in slicer.util.moduleNames():
            slicer.util.getModuleLogic("PyTorchUtils").installTorch(
                askConfirmation=False, torchVersionRequirement=torch[len("torch"):].strip())
            missing.remove(torch)
        for requirement in missing:  # one string per call: what pip_install accepts before Slicer 5.12
            slicer.util.pip_install(requirement)

    def loadModel(self, source: str = "default", device: str = "auto", askDownload: bool = True,
                  precision: str = "auto"):
        """``sd.load_model``, cached; official weights not on disk are downloaded only after the user agrees."""
        self.setupPythonRequirements(askConfirmation=True)
        import SurgicalDepthLib as sd
        key = (str(source), str(device), str(precision))
        if key not in self._models:
            if source in sd.WEIGHTS:
                self._downloadIfNeeded(source, askDownload)
            self._models[key] = sd.load_model(source, device=device, precision=precision)
        return self._models[key]

    def _downloadIfNeeded(self, name: str, ask: bool) -> None:
        from SurgicalDepthLib.slicer_helpers import format_bytes, weights_cached
        from SurgicalDepthLib.weights import download
        if weights_cached(name):
            return
        if ask and not slicer.util.confirmOkCancelDisplay(
                _("Model {name} is not on this computer. Download the official weights now?").format(name=name)):
            raise RuntimeError(f"download of model {name!r} was declined")
        dialog = slicer.util.createProgressDialog(value=0, maximum=100, labelText=name)
        def progress(done: int, total: int) -> None:
            dialog.value, dialog.labelText = int(100 * done / total) if total else 0, f"{name}: {format_bytes(done)}"
            slicer.app.processEvents()
        try:
            download(name, progress=progress)
        finally:
            dialog.close()

    def loadVideo(self, videoPath, maxFrames: int = 0, progress: Optional[Callable] = None):
        """Decode a video / image folder (``sd.open_frames``) into a sequence of RGB volumes in a new browser."""
        import SurgicalDepthLib as sd
        from SurgicalDepthLib.slicer_helpers import sequence_index_values
        name = slicer.mrmlScene.GenerateUniqueName(Path(str(videoPath)).stem or "video")
        with sd.open_frames(videoPath, stop=maxFrames or None) as reader:
            values = sequence_index_values(len(reader), reader.fps)
            seq = self._frameSequence(name, reader, values, lambda i: progress is None or progress(
                0.3 * (i + 1) / len(values), _("Decoding frames")))
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name)
        browser.AddSynchronizedSequenceNode(seq)
        browser.SetPlaybackRateFps(float(reader.fps or 10.0))
        return browser

    def _frameSequence(self, name, frames, values, progress=lambda i: True):
        """Sequence of RGB vector volumes from RGB uint8 [H, W, 3] ``frames`` at index ``values``."""
        from SurgicalDepthLib.slicer_helpers import image_ijk_to_ras
        seq, temp = self._newSequence(name + " frames"), None
        for i, rgb in enumerate(frames):
            if temp is None:  # one reused node: SetDataNodeAtValue deep-copies it
                temp = slicer.util.addVolumeFromArray(rgb[None], image_ijk_to_ras(rgb.shape[1], rgb.shape[0]),
                                                      name="temp", nodeClassName="vtkMRMLVectorVolumeNode")
            slicer.util.updateVolumeFromArray(temp, rgb[None])
            seq.SetDataNodeAtValue(temp, values[i])
            if not progress(i):
                raise RuntimeError("cancelled by the user")
        if temp is None:
            raise ValueError(f"{name}: no frame decoded")
        slicer.mrmlScene.RemoveNode(temp)
        return seq

    @staticmethod
    def _newSequence(name: str):
        return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", name)  # index: "time" in "s" by default

    @staticmethod
    def _rgb(volumeNode):
        from SurgicalDepthLib.slicer_helpers import rgb_from_volume_array
        return rgb_from_volume_array(slicer.util.arrayFromVolume(volumeNode), volumeNode.GetName())

    def processParameterNode(self, p, allFrames: bool = True, progress: Optional[Callable] = None):
        """Run on the inputs chosen in the parameter node (GUI path)."""
        from SurgicalDepthLib.slicer_helpers import model_source, path_or_none
        inputs = {"video": dict(videoPath=path_or_none(p.videoPath), maxFrames=p.maxFrames),
                  "sequence": dict(browser=p.inputBrowser), "volume": dict(volume=p.inputVolume)}[p.inputMode]
        return self.process(**inputs, model=model_source(p.modelChoice, str(p.modelPath), p.registryName),
                            device=p.device, precision=p.precision, inputSize=p.inputSize,
                            calibration=path_or_none(p.calibrationPath), fx=p.fx, fy=p.fy, cx=p.cx, cy=p.cy,
                            nearMm=p.nearMm, farMm=p.farMm, pointCloud=p.pointCloud, colorByDepth=p.colorByDepth,
                            depthMesh=p.depthMesh, fuse=p.fuse and allFrames, voxelMm=p.voxelMm, progress=progress,
                            currentOnly=not allFrames)

    def process(self, videoPath=None, model: str = "default", *, browser=None, volume=None, maxFrames: int = 0,
                currentOnly: bool = False, device: str = "auto", precision: str = "auto", inputSize: int = 0,
                intrinsics=None, calibration: Optional[str] = None, fx: float = 0.0, fy: float = 0.0,
                cx: float = 0.0, cy: float = 0.0, nearMm: float = 10.0, farMm: float = 150.0,
                pointCloud: bool = True, colorByDepth: bool = False, depthMesh: bool = True, fuse: bool = False,
                voxelMm: float = 1.0, chunkSize: int = 4, progress: Optional[Callable] = None):
        """Depth of a video file / image folder (``videoPath``), a sequence ``browser`` or one RGB ``volume``;
        returns a ``SurgicalDepthNodes`` record of the created nodes (``SurgicalDepthLib.slicer_helpers``).

        Relative (disparity) models are mapped to depth in [nearMm, farMm]; metric ones are used as they are.
        Camera: ``intrinsics`` (``sd.Intrinsics``), else the ``calibration`` file, else fx/fy/cx/cy (pixels), else
        a 70 degree field of view. ``progress(fraction, text) -> bool`` (False cancels). Frames are processed in
        chunks on the main thread with ``processEvents`` between chunks: MRML nodes may only be touched on the main
        thread, and one chunk of inference is short, so the GUI stays responsive without worker threads.
        """
        progress = progress or (lambda fraction, text: True)
        net = self.loadModel(model, device, precision=precision)
        import SurgicalDepthLib as sd
        from SurgicalDepthLib.slicer_helpers import (SurgicalDepthNodes, depth_display_range, polydata_to_ras,
                                                     predict_depth_mm, resolve_intrinsics)
        with self._removeNewNodesOnError():
            if volume is not None:  # one frame: a one-item sequence in a new browser, like a video
                browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", volume.GetName())
                frames = self._frameSequence(volume.GetName(), [self._rgb(volume)], ["0"])
                browser.AddSynchronizedSequenceNode(frames)
            elif videoPath is not None:
                browser = self.loadVideo(videoPath, maxFrames, progress)
            if browser is None:
                raise ValueError("process: give videoPath, browser or volume")
            nodes = SurgicalDepthNodes(browser=browser, frames=browser.GetMasterSequenceNode())
            count = nodes.frames.GetNumberOfDataNodes()
            picks = [min(max(0, browser.GetSelectedItemNumber()), count - 1)] if currentOnly else range(count)
            rgbs = [self._rgb(nodes.frames.GetNthDataNode(i)) for i in picks]
            values = [nodes.frames.GetNthIndexValue(i) for i in picks]
            intr = resolve_intrinsics(rgbs[0].shape[1], rgbs[0].shape[0], intrinsics, calibration, (fx, fy, cx, cy))
            depths = predict_depth_mm(net, rgbs, inputSize, nearMm, farMm, chunkSize, lambda done: progress(
                0.3 + 0.4 * done / len(rgbs), _("Estimating depth")))
            if len(depths) < len(rgbs):
                raise RuntimeError("cancelled by the user")
            poses = sd.estimate_poses(depths, intr)[0] if fuse else None
            self._fillSequences(nodes, rgbs, depths, values, intr, poses, pointCloud, depthMesh, progress)
            if fuse:  # TSDF fusion of all frames with the ICP poses
                volume = sd.TSDFVolume(voxel_size=voxelMm, truncation=4 * voxelMm)
                for rgb, depth, pose in zip(rgbs, depths, poses):
                    volume.integrate(depth, rgb, intr, pose)
                nodes.fused = slicer.modules.models.logic().AddModel(polydata_to_ras(volume.extract_mesh()))
                nodes.fused.SetName(slicer.mrmlScene.GenerateUniqueName(browser.GetName() + " fused surface"))
            self._showResults(nodes, depth_display_range(depths), colorByDepth)
        nodes.frameCount = len(depths)
        return nodes

    @contextmanager
    def _removeNewNodesOnError(self):
        """A failed or cancelled run leaves no partial nodes: remove every node added since entering."""
        before = {node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLNode")}
        try:
            yield
        except Exception:
            for node in slicer.util.getNodesByClass("vtkMRMLNode"):
                if node.GetID() not in before and node.GetScene() is not None:
                    slicer.mrmlScene.RemoveNode(node)
            raise

    def _fillSequences(self, nodes, rgbs, depths, values, intr, poses, pointCloud, depthMesh, progress) -> None:
        import SurgicalDepthLib as sd
        from SurgicalDepthLib.slicer_helpers import image_ijk_to_ras, polydata_to_ras, pose_to_ras
        base = nodes.browser.GetName()
        tempVolume = slicer.util.addVolumeFromArray(depths[0][None], image_ijk_to_ras(intr.width, intr.height),
                                                    name="temp")
        tempModel, tempPose = slicer.vtkMRMLModelNode(), slicer.vtkMRMLLinearTransformNode()
        nodes.depth = self._newSequence(base + " depth")
        nodes.points = self._newSequence(base + " points") if pointCloud else None
        nodes.meshes = self._newSequence(base + " depth mesh") if depthMesh else None
        nodes.poses = self._newSequence(base + " camera") if poses is not None else None
        for i, (rgb, depth, value) in enumerate(zip(rgbs, depths, values)):
            slicer.util.updateVolumeFromArray(tempVolume, depth[None])
            nodes.depth.SetDataNodeAtValue(tempVolume, value)
            valid = depth > 0  # predict_depth_mm writes 0 for invalid pixels
            if nodes.points is not None and valid.any():
                cloud = sd.to_polydata(sd.backproject(depth, intr, mask=valid), colors=rgb[valid])
                tempModel.SetAndObserveMesh(polydata_to_ras(cloud))
                nodes.points.SetDataNodeAtValue(tempModel, value)
            if nodes.meshes is not None and valid.any():
                tempModel.SetAndObserveMesh(polydata_to_ras(sd.depth_to_mesh(depth, intr, rgb=rgb)))
                nodes.meshes.SetDataNodeAtValue(tempModel, value)
            if poses is not None:
                slicer.util.updateTransformMatrixFromArray(tempPose, pose_to_ras(poses[i]))
                nodes.poses.SetDataNodeAtValue(tempPose, value)
            if not progress(0.7 + 0.25 * (i + 1) / len(depths), _("Building 3D models")):
                raise RuntimeError("cancelled by the user")
        slicer.mrmlScene.RemoveNode(tempVolume)
        for seq in filter(None, (nodes.depth, nodes.points, nodes.meshes, nodes.poses)):
            nodes.browser.AddSynchronizedSequenceNode(seq)

    def _showResults(self, nodes, depthRange, colorByDepth: bool) -> None:
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(nodes.browser)
        nodes.proxies = {key: nodes.browser.GetProxyNode(getattr(nodes, key)) for key in
                         ("frames", "depth", "points", "meshes", "poses") if getattr(nodes, key) is not None}
        depthProxy = nodes.proxies["depth"]
        depthProxy.CreateDefaultDisplayNodes()
        depthProxy.GetDisplayNode().SetAndObserveColorNodeID(DEPTH_COLOR_NODE_ID)
        depthProxy.GetDisplayNode().SetAutoWindowLevel(False)
        depthProxy.GetDisplayNode().SetWindowLevelMinMax(*depthRange)
        for model in filter(None, (nodes.proxies.get("points"), nodes.proxies.get("meshes"))):
            model.CreateDefaultDisplayNodes()
            d = model.GetDisplayNode()
            d.SetPointSize(3)
            if colorByDepth:  # red near -> blue far over the clip's robust depth range
                d.SetActiveScalar("Depth", vtk.vtkAssignAttribute.POINT_DATA)
                d.SetAndObserveColorNodeID(DEPTH_COLOR_NODE_ID)
                d.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
                d.SetScalarRange(*depthRange)
            else:
                d.SetActiveScalar("RGB", vtk.vtkAssignAttribute.POINT_DATA)
                d.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseDirectMapping)
            d.SetScalarVisibility(True)
            if "poses" in nodes.proxies:
                model.SetAndObserveTransformNodeID(nodes.proxies["poses"].GetID())
        if not slicer.app.commandOptions().noMainWindow:
            slicer.modules.sequences.toolBar().setActiveBrowserNode(nodes.browser)
            slicer.util.setSliceViewerLayers(background=nodes.proxies["frames"], foreground=depthProxy,
                                             foregroundOpacity=0.5, fit=True)


class SurgicalDepthTest(ScriptedLoadableModuleTest):
    """Runs the real logic on a synthetic clip rendered by SurgicalDepthTrainingLib (exact intrinsics)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_video_folder, self.test_single_volume):
            self.setUp()
            test()

    def test_video_folder(self):
        import cv2
        import SurgicalDepthTrainingLib as sdt
        clip = sdt.render_clip("colon", n_frames=4, seed=3, height=56, width=70)
        folder = Path(slicer.util.tempDirectory("SurgicalDepthTest"))
        for i, frame in enumerate(clip):
            cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(frame["image"], cv2.COLOR_RGB2BGR))
        nodes = SurgicalDepthLogic().process(str(folder), inputSize=70, intrinsics=clip[0]["intrinsics"], nearMm=5,
                                             farMm=80, fuse=True)
        for seq in (nodes.frames, nodes.depth, nodes.points, nodes.meshes, nodes.poses):
            self.assertEqual(seq.GetNumberOfDataNodes(), 4)
        depth = slicer.util.arrayFromVolume(nodes.depth.GetNthDataNode(0))
        self.assertEqual(depth.shape, (1, 56, 70))
        self.assertTrue(5 - 1e-3 <= depth.min() and depth.max() <= 80 + 1e-3)  # relative model: [near, far]
        self.assertEqual(nodes.points.GetNthDataNode(0).GetPolyData().GetNumberOfPoints(), (depth > 0).sum())
        self.assertGreater(nodes.fused.GetPolyData().GetNumberOfPoints(), 0)

    def test_single_volume(self):
        import SurgicalDepthTrainingLib as sdt
        image = sdt.render_clip("stomach", n_frames=1, seed=1, height=56, width=70)[0]["image"]
        volume = slicer.util.addVolumeFromArray(image[None], name="frame", nodeClassName="vtkMRMLVectorVolumeNode")
        nodes = SurgicalDepthLogic().process(volume=volume, inputSize=70, depthMesh=False)
        self.assertEqual(nodes.depth.GetNumberOfDataNodes(), 1)
        self.assertIsNone(nodes.meshes)
        self.assertEqual(nodes.proxies["points"].GetPolyData().GetNumberOfPoints(), 56 * 70)
