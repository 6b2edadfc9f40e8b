"""``DepthModel``: Depth Anything (V1/V2, relative or metric) = DINOv2 encoder + DPT decoder; :class:`FrameInference`:
its numpy-frame inference API, shared with the deployment backends (:mod:`SurgicalDepthLib.backends`)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .background import prefetch
from .configs import ModelConfig
from .detail import check_detail_size, merge_detail
from .dpt import DPTHead
from .encoder import DinoV2Encoder
from .preprocess import check_rgb, official_input_size, preprocess, preprocess_on_device


def resize_prediction(pred: torch.Tensor, out_hw: tuple[int, int], version: str) -> torch.Tensor:
    """Network output ``[n, h, w]`` → float32 ``[n, H, W]`` at the frame size, bilinear, as each release's own
    code does it: ``align_corners=True`` for ``version`` ``"v2"`` (Depth-Anything-V2's ``infer_image``, relative
    and metric), ``False`` for ``"v1"`` (Depth-Anything's ``run.py``; V1 has no ``infer_image``)."""
    return F.interpolate(pred[:, None].float(), size=out_hw, mode="bilinear", align_corners=version == "v2")[:, 0]


def _frame_groups(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """``frames`` in lists of ``size`` (the last may be shorter), all of the first frame's size; when the source
    raises, the frames read before are yielded first, then the error is raised."""
    group: list[np.ndarray] = []
    first: tuple[int, ...] | None = None
    try:
        for i, rgb in enumerate(frames):
            check_rgb(rgb, f"frame {i}")
            first = first or rgb.shape[:2]
            if rgb.shape[:2] != first:
                raise ValueError(f"frame {i} has size {rgb.shape[:2]}, expected {first} like the first frame")
            group.append(rgb)
            if len(group) == size:
                yield group
                group = []
    except Exception:
        if group:
            yield group
        raise
    if group:
        yield group


class FrameInference:
    """The inference API on RGB uint8 frames (``infer_image``, ``infer_batch``, ``iter_batches``) of
    :class:`DepthModel` and of the deployment backends, written once.

    A subclass has ``config`` (:class:`ModelConfig`), ``device`` (``torch.device``) and ``precision``, and
    implements :meth:`_launch`: a preprocessed host batch (or, when :attr:`_preprocess_on_device`, raw uint8
    frames) → predictions at the frame size, as a tensor that :meth:`_fetch` turns into numpy.
    """

    config: ModelConfig
    precision: str
    source: str

    @property
    def output_kind(self) -> str:
        """``"disparity"`` (relative models: larger = nearer, affine-invariant) or ``"depth"`` (metric)."""
        return self.config.output_kind

    @property
    def depth_unit(self) -> str:
        """``"relative"`` for disparity models, else the metric head's unit (``"m"`` or ``"mm"``)."""
        return "relative" if self.config.head == "relative" else self.config.metric_unit

    @property
    def default_batch_size(self) -> int:
        """Frames per forward pass when none is given: 4 on a GPU (fills it); 1 on CPU, where the cores are busy
        with one frame already and batches of 4 measured ~8 % slower per frame (DA-S at 518×924, 2-core EPYC)."""
        return 1 if self.device.type == "cpu" else 4

    @property
    def _preprocess_on_device(self) -> bool:
        """Whether batches are raw uint8 frames preprocessed by :meth:`_launch` (CUDA) instead of host arrays."""
        return False

    def _launch(self, batch: torch.Tensor, out_hw: tuple[int, int], input_size: int | None = None) -> torch.Tensor:
        """Host batch (normalised ``[n, 3, h, w]`` float32, or raw uint8 ``[n, H, W, 3]``) → float32 ``[n, H, W]``
        predictions at the frame size ``out_hw``."""
        raise NotImplementedError

    @staticmethod
    def _fetch(pred: torch.Tensor) -> np.ndarray:
        return pred.cpu().numpy().astype(np.float32, copy=False)

    def _predict(self, batch: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        return self._fetch(self._launch(torch.from_numpy(batch), out_hw))

    def infer_image(self, rgb: np.ndarray, input_size: int | None = None,
                    detail_size: int | None = None) -> np.ndarray:
        """One RGB uint8 ``[H, W, 3]`` frame → float32 ``[H, W]`` (disparity or depth, see ``output_kind``).

        Any memory layout is taken (views, negative strides, read-only arrays); other dtypes, grey or RGBA arrays
        are a TypeError/ValueError naming them (convert first: :func:`~SurgicalDepthLib.video.read_image` does it
        for files). The array is read as it is stored: a photo loaded with Pillow keeps its stored pixel grid,
        while ``read_image``, ``open_frames`` and ``predict`` apply the EXIF orientation as viewers show it
        (``PIL.ImageOps.exif_transpose`` gives the same array).

        ``input_size``: lower bound of both network input sides (×14); default ``config.input_size`` (518 for
        the official models). ``detail_size``: also read the frame at this larger size and keep that read's
        detail on this one's layout (:func:`~SurgicalDepthLib.detail.merge_detail`; None: one read)."""
        check_rgb(rgb)
        input_size = self.config.input_size if input_size is None else input_size
        sizes = (input_size,) if detail_size is None else (input_size, check_detail_size(detail_size, input_size))
        reads = [self._predict(preprocess(rgb, size, self.config.mean, self.config.std, self.config.patch_size)[None],
                               rgb.shape[:2])[0] for size in sizes]
        return reads[0] if detail_size is None else merge_detail(*reads)

    def _input_batches(self, frames: Iterable[np.ndarray], input_size: int,
                       batch_size: int) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        """Check, preprocess and stack frames (:func:`_frame_groups`): ``([n, 3, h, w] float32 tensor, (H, W))``
        per batch, or on CUDA the raw ``[n, H, W, 3]`` uint8 frames in pinned memory (preprocessed on the device:
        no host float conversion and resize of large frames). When the frame source fails, the frames read before
        the failure are still yielded, then the error is raised."""
        raw = self._preprocess_on_device  # uint8 frames go to the device as they are
        for group in _frame_groups(frames, batch_size):
            batch = torch.from_numpy(np.stack(group if raw else [preprocess(
                rgb, input_size, self.config.mean, self.config.std, self.config.patch_size) for rgb in group]))
            yield (batch.pin_memory() if raw else batch), group[0].shape[:2]

    def iter_batches(self, frames: Iterable[np.ndarray], input_size: int | None = None,
                     batch_size: int | None = None, prefetch_batches: int = 2,
                     detail_size: int | None = None) -> Iterator[np.ndarray]:
        """Stream predictions ``[n, H, W]`` for successive groups of equally sized frames (constant memory).

        Decoding (``frames`` is iterated in a background thread) and preprocessing run up to
        ``prefetch_batches`` batches ahead of inference (0: everything in the calling thread); on a GPU the next
        batch is queued before the previous result is copied back. If ``frames`` raises, the predictions of the
        frames read before are yielded first. ``batch_size``: frames per forward pass, default
        :attr:`default_batch_size`. ``detail_size``: as in :meth:`infer_image` (each batch read twice)."""
        input_size = self.config.input_size if input_size is None else input_size
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {prefetch_batches}")
        if detail_size is not None:
            yield from self._iter_detailed(frames, input_size, check_detail_size(detail_size, input_size), batch_size,
                                           prefetch_batches)
            return
        batches = self._input_batches(frames, input_size, batch_size)
        if prefetch_batches:
            batches = prefetch(batches, prefetch_batches, "DepthModel.preprocess")
        overlap = self.device.type != "cpu"  # CPU inference is synchronous: nothing to overlap
        in_flight: torch.Tensor | None = None
        try:
            while True:
                try:
                    batch, size = next(batches)
                except StopIteration:
                    break
                except Exception:
                    if in_flight is not None:
                        yield self._fetch(in_flight)
                    raise
                pred = self._launch(batch, size, input_size)
                if not overlap:
                    yield self._fetch(pred)
                    continue
                if in_flight is not None:
                    yield self._fetch(in_flight)
                in_flight = pred
            if in_flight is not None:
                yield self._fetch(in_flight)
        finally:
            batches.close()  # stops the prefetch thread when the consumer stops early

    def _iter_detailed(self, frames: Iterable[np.ndarray], input_size: int, detail_size: int, batch_size: int,
                       prefetch_batches: int) -> Iterator[np.ndarray]:
        """:meth:`iter_batches` with ``detail_size``: each group of ``batch_size`` frames read at both sizes and
        merged. Frames are decoded ahead in a background thread; a group cut short by a failing source is
        predicted before the error is raised."""
        groups = _frame_groups(frames, batch_size)
        if prefetch_batches:
            groups = prefetch(groups, prefetch_batches, "DepthModel.frames")
        try:
            for group in groups:
                coarse, fine = (np.concatenate(list(self.iter_batches(group, size, batch_size, 0)), axis=0)
                                for size in (input_size, detail_size))
                yield merge_detail(coarse, fine)
        finally:
            groups.close()

    def infer_batch(self, frames: Sequence[np.ndarray] | np.ndarray, input_size: int | None = None,
                    batch_size: int | None = None, detail_size: int | None = None) -> np.ndarray:
        """RGB uint8 frames (a sequence of ``[H, W, 3]`` or an ``[N, H, W, 3]`` array) → float32 ``[N, H, W]``."""
        if isinstance(frames, np.ndarray) and frames.ndim != 4:  # else one [H, W, 3] image reads as H frames
            raise ValueError(f"frames must be an [N, H, W, 3] array or a sequence of [H, W, 3] frames, got an array "
                             f"of shape {frames.shape} (one image: infer_image)")
        if len(frames) == 0:
            raise ValueError("frames is empty")
        return np.concatenate(list(self.iter_batches(frames, input_size, batch_size, detail_size=detail_size)),
                              axis=0)

    def input_size_for(self, height: int, width: int, input_size: int | None = None) -> tuple[int, int]:
        return official_input_size(height, width, self.config.input_size if input_size is None else input_size,
                                   self.config.patch_size)


class DepthModel(FrameInference, nn.Module):
    """Depth Anything. State-dict keys are the official ones: ``pretrained.*`` (encoder), ``depth_head.*``.

    ``forward`` is the computation of the official ``DepthAnythingV2.forward`` (and of V1, whose decoder reads the
    last four blocks). ``precision`` (``fp32|fp16|bf16``) is used by ``infer_*`` through autocast; the device is
    wherever the parameters are (chosen once by :func:`~SurgicalDepthLib.loading.load_model`).
    """

    def __init__(self, config: ModelConfig, precision: str = "fp32"):
        super().__init__()
        self.config = config
        self.pretrained = DinoV2Encoder(config)
        self.depth_head = DPTHead(config.spec.embed_dim, config.features, config.out_channels, head=config.head,
                                  patch_size=config.patch_size)
        self.precision = precision
        self.source = "random init"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _preprocess_on_device(self) -> bool:
        return self.device.type == "cuda"  # MPS keeps the host path: its bicubic support varies by release

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: ``x`` normalised ``[B, 3, h, w]``, h and w multiples of ``config.patch_size`` (14). Returns
        ``[B, h, w]``."""
        B, C, H, W = x.shape
        if C != 3:
            raise ValueError(f"expected [B, 3, H, W] input, got shape {tuple(x.shape)}")
        p = self.config.patch_size
        features = self.pretrained.intermediate(x, self.config.intermediate_layers)
        out = self.depth_head(features, H // p, W // p)
        if self.config.head == "metric":
            out = out * self.config.max_depth
        else:
            out = F.relu(out)
        return out.squeeze(1)

    # -- inference on numpy frames -------------------------------------------------------------------------------
    def _autocast(self):
        dev = self.device.type
        if self.precision == "fp32" or dev not in ("cuda", "mps", "cpu"):
            return torch.autocast(device_type="cpu", enabled=False)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=dev, dtype=dtype)

    @torch.inference_mode()
    def _launch(self, batch: torch.Tensor, out_hw: tuple[int, int], input_size: int | None = None) -> torch.Tensor:
        """Host batch → float32 ``[n, H, W]`` on the device; asynchronous on GPUs. ``batch``: normalised
        ``[n, 3, h, w]``, or raw uint8 ``[n, H, W, 3]`` frames (then ``input_size`` is needed) preprocessed on
        the device."""
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = preprocess_on_device(x, input_size, self.config.mean, self.config.std, self.config.patch_size)
        with self._autocast():
            pred = self(x)
        return resize_prediction(pred, out_hw, self.config.version)
