"""Semi-supervised term of the Depth Anything recipe (Yang et al. 2024, "Depth Anything: Unleashing the Power of
Large-Scale Unlabeled Data", Sec. 3.2-3.3).

For a batch of unlabeled frames, whose clean view ``image`` and strong view ``image_strong`` (the same crop with
colour jitter of brightness, contrast, saturation and hue, and Gaussian blur with p = 0.5) come from
:class:`._train_data.DepthTransform`:

1. the frozen teacher T predicts pseudo-labels (disparity) on the **clean** images only;
2. the student S sees the **strong** view, CutMixed: with p = 0.5 per image, a box ``1 - M`` is pasted from the
   previous image of the batch, ``u_ab = u_a ⊙ M + u_b ⊙ (1 - M)`` (training draws at least two frames a step).
   The strong perturbations reach the student's unlabeled input and nothing else;
3. per image (then the mean over the batch)
   ``L_u = (ΣM / HW) · ρ(S(u_ab) ⊙ M, T(u_a) ⊙ M) + (Σ(1-M) / HW) · ρ(S(u_ab) ⊙ (1-M), T(u_b) ⊙ (1-M))``,
   ρ the affine-invariant loss with its median / scale normalisation computed inside each region alone
   (:func:`.losses.affine_invariant_per_image` with the region as ``valid``), over the pixels of the scope's field
   of view only when the frames carry one (``valid``: a black border and burned-in text are not tissue, and a
   pseudo-label there would be fitted like depth; the mask is CutMixed with the images). One fit over the mixed
   pseudo-label is *not* the same: the two pseudo-labels come from different images whose depth ranges are
   unrelated, so a prediction right up to its own affine map in each region scores ≈ 0 here but a large single-fit
   loss. (The stored label is the mixed one, ``T(u_a)`` outside the box and ``T(u_b)`` inside: each region's
   loss reads only its own pixels.) With a field of view, ``HW`` counts its pixels: each frame's weights sum to 1
   however much of it is border, and a frame without tissue is left out of the batch mean. A region with fewer
   than 2 pixels or a constant pseudo-label adds 0;
4. ``L_feat = 1 - mean cos(f_i, f'_i)`` over the patch tokens whose similarity is still below the tolerance margin
   ``α = 0.85`` (tokens already more similar than α are left out; 0 when none is left). ``f``: the student's
   encoder tokens; ``f'``: a frozen copy of the student's *initial* encoder (the paper's frozen pretrained DINOv2
   encoder), not the teacher's, which may be of another size. ``f'`` is computed on exactly the input the student
   sees (the CutMixed strong view), so token i of both describes the same pixels and no token near the CutMix box
   needs to be left out.

The term is ``L_u + feature_weight · L_feat``; training adds ``unlabeled_weight`` times it to the labeled loss.
Encoder tokens are those of the deepest decoder-fed block (the last block of every registry model) after the
encoder's final ``norm``, captured by a forward hook. In training the unlabeled batch is concatenated to the last
labeled micro-batch of each optimizer step, so the student (DDP-wrapped or not) runs once a step; the frames drawn,
their crops and perturbations and the CutMix boxes are seeded by ``(seed, rank, step)``: every DDP rank draws its
own batch, and a resumed run draws the same ones again.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .losses import affine_invariant_per_image

logger = logging.getLogger(__name__)

MARGIN = 0.85  # the paper's tolerance margin α of the feature alignment


@contextlib.contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``model.pretrained.norm`` during the block (one per decoder-fed block; the
    last is the deepest), tokens ``[B, 1 + N, C]``."""
    outputs: list[torch.Tensor] = []
    handle = model.pretrained.norm.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


class FrozenEncoder(nn.Module):
    """``f'``: a frozen encoder (``model.pretrained`` of a :class:`DepthModel`) giving the normalised patch tokens
    ``[B, N, C]`` of block ``layer`` for ``x`` ``[B, 3, h, w]`` (what :func:`capture_features` gives the student)."""

    def __init__(self, encoder: nn.Module, layer: int) -> None:
        super().__init__()
        self.encoder, self.layer = encoder.requires_grad_(False).eval(), int(layer)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.intermediate(x, (self.layer,))[0][0]


def cutmix_boxes(batch: int, height: int, width: int, generator: torch.Generator,
                 prob: float = 0.5) -> torch.Tensor:
    """CutMix boxes (Yun et al. 2019), the pasted region ``1 - M``: bool ``[B, H, W]``, one box per image with
    probability ``prob``, area ~ U(0.1, 0.5) of the image, the image's aspect ratio; none when ``batch < 2``."""
    box = torch.zeros(batch, height, width, dtype=torch.bool)
    for b in range(batch if batch > 1 else 0):
        if torch.rand((), generator=generator).item() >= prob:
            continue
        side = (0.1 + 0.4 * torch.rand((), generator=generator).item()) ** 0.5
        bh, bw = max(1, int(height * side)), max(1, int(width * side))
        y0 = int(torch.randint(0, height - bh + 1, (), generator=generator))
        x0 = int(torch.randint(0, width - bw + 1, (), generator=generator))
        box[b, y0:y0 + bh, x0:x0 + bw] = True
    return box


def paste_box(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, ...]`` with, inside ``box`` (broadcast to it), the values of the previous image of the batch
    (``roll(1)``: ``u_b``) and elsewhere its own (``u_a``): CutMix of one per-pixel quantity."""
    return torch.where(box, x.roll(1, 0), x)


def cutmix(images: torch.Tensor, labels: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u_ab [B, 3, h, w], mixed label [B, h, w])``: :func:`paste_box` of the images and of their labels with
    the box ``[B, h, w]``."""
    return paste_box(images, box[:, None]), paste_box(labels, box)


@dataclass
class SemiBatch:
    """A prepared unlabeled batch: the student's input (CutMixed strong view) ``[B, 3, h, w]``, the pseudo-labels
    ``[B, h, w]`` (``T(u_a)`` outside the box, ``T(u_b)`` inside), the CutMix box ``1 - M`` ``[B, h, w]`` bool,
    the frozen features ``f'`` of the student's input ``[B, N, C]`` and the pixels showing tissue ``[B, h, w]``
    bool (the CutMixed field of view; None: every pixel)."""

    student_in: torch.Tensor
    label: torch.Tensor
    box: torch.Tensor
    frozen: torch.Tensor
    valid: torch.Tensor | None = None


@torch.no_grad()
def prepare_semi_batch(teacher: nn.Module, frozen: FrozenEncoder, batch: dict[str, torch.Tensor],
                       generator: torch.Generator, cutmix_prob: float = 0.5) -> SemiBatch:
    """Steps 1-2 and ``f'`` (module docstring) for ``batch["image"]`` (clean) and ``batch["image_strong"]``,
    normalised ``[B, 3, h, w]``, and the optional field of view ``batch["valid"]`` ``[B, h, w]`` bool: pseudo-labels
    on the clean view, CutMix of the strong view, of the labels and of the field of view."""
    pseudo = teacher(batch["image"]).float()
    strong = batch["image_strong"]
    B, _, H, W = strong.shape
    box = cutmix_boxes(B, H, W, generator, cutmix_prob).to(strong.device)
    student_in, label = cutmix(strong, pseudo, box)
    valid = batch.get("valid")
    return SemiBatch(student_in, label, box, frozen(student_in).float(),
                     None if valid is None else paste_box(valid, box))


def cutmix_affine_loss(pred: torch.Tensor, label: torch.Tensor, box: torch.Tensor,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """``L_u`` (step 3): per image, each region (outside / inside ``box``, within ``valid`` when given) aligned on
    its own and weighted by its share of the image's tissue pixels (``valid``; every pixel without it), so the
    weights sum to 1 as the paper's ``ΣM / HW`` do and a frame's black border does not shrink its loss; mean over
    the images with a usable region (0 when none has one). ``pred``, ``label`` float ``[B, h, w]``, ``box``,
    ``valid`` bool ``[B, h, w]``."""
    seen = torch.ones_like(box) if valid is None else valid.bool()
    tissue = seen.flatten(1).sum(1).clamp_min(1).float()
    total = pred.new_zeros(pred.shape[0])
    used = torch.zeros_like(tissue, dtype=torch.bool)
    for region in (~box & seen, box & seen):
        loss, ok = affine_invariant_per_image(pred, label, region)
        total = total + region.flatten(1).sum(1).float() / tissue * loss
        used = used | ok
    return total[used].mean() if bool(used.any()) else pred.new_zeros(())


def feature_alignment_loss(features: torch.Tensor, frozen: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """``L_feat`` (step 4) of the student's patch tokens ``features`` and the frozen ones ``frozen`` ``[B, N, C]``:
    ``1 - mean cos`` over the tokens with ``cos < margin`` (the others are left out; 0 when none is left)."""
    cos = F.cosine_similarity(features.float(), frozen.float(), dim=-1)
    keep = cos < margin
    return 1 - cos[keep].mean() if bool(keep.any()) else cos.new_zeros(())


def semi_loss(pred: torch.Tensor, features: torch.Tensor, semi: SemiBatch, *, feature_weight: float = 1.0,
              margin: float = MARGIN) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_u + feature_weight · L_feat`` for the student's output ``pred [B, h, w]`` and encoder tokens
    ``features [B, 1 + N, C]`` (class token first) on ``semi.student_in``; returns ``(loss, {"unlabeled",
    "feature"})``."""
    unlabeled = cutmix_affine_loss(pred.float(), semi.label, semi.box, semi.valid)
    feature = feature_alignment_loss(features[:, 1:], semi.frozen, margin)
    loss = unlabeled + feature_weight * feature
    return loss, {"unlabeled": float(unlabeled.detach()), "feature": float(feature.detach())}


def semi_supervised_loss(student: nn.Module, teacher: nn.Module, frozen: FrozenEncoder,
                         batch: dict[str, torch.Tensor], generator: torch.Generator, *, feature_weight: float = 1.0,
                         margin: float = MARGIN, cutmix_prob: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """The whole term on one unlabeled batch (``image``, ``image_strong`` normalised ``[B, 3, h, w]``) for an
    unwrapped student ``DepthModel``; returns ``(loss, {"unlabeled", "feature"})``. (Training concatenates the
    unlabeled batch with the labeled one instead, so the student — possibly DDP-wrapped — runs once a step.)"""
    semi = prepare_semi_batch(teacher, frozen, batch, generator, cutmix_prob)
    with capture_features(student) as s_feats:
        pred = student(semi.student_in)
    return semi_loss(pred, s_feats[-1], semi, feature_weight=feature_weight, margin=margin)


def build_teacher(source: str | None, start_model: nn.Module, device: torch.device) -> nn.Module:
    """Frozen teacher: ``load_model(source)`` if given (any size), else a copy of the start model.

    Raises:
        ValueError: the teacher's output kind or input normalisation differs from the student's.
    """
    from SurgicalDepthLib.loading import load_model

    teacher = load_model(source, device=device, precision="fp32") if source else copy.deepcopy(start_model)
    # pseudo-labels must be in the student's output space, and the clean view is normalised for the student
    for what, have, want in (("output kind", teacher.output_kind, start_model.output_kind),
                             ("input mean", tuple(teacher.config.mean), tuple(start_model.config.mean)),
                             ("input std", tuple(teacher.config.std), tuple(start_model.config.std))):
        if have != want:
            raise ValueError(f"teacher {source!r}: its {what} is {have!r} but the student's is {want!r}")
    return teacher.requires_grad_(False).eval()


class DetailReadTeacher(nn.Module):
    """A frozen teacher that reads every clean view twice, as ``infer_image(..., detail_size=)`` reads a frame:
    at the view's own size and enlarged (bicubic) to :func:`~SurgicalDepthLib.preprocess.official_input_size` for
    ``detail_size``, the second read scaled back (bilinear) and merged into the first by
    :func:`~SurgicalDepthLib.detail.merge_detail` (the layout of the first read, the small structures of the
    second). Its pseudo-labels carry the detail read's polyps and fold edges, so the student learns to see them in
    one read (self-distillation of the detail read)."""

    def __init__(self, teacher: nn.Module, detail_size: int) -> None:
        super().__init__()
        self.teacher, self.detail_size = teacher, detail_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, 3, h, w]`` → float32 pseudo-labels ``[B, h, w]``."""
        from SurgicalDepthLib.detail import merge_detail
        from SurgicalDepthLib.model import resize_prediction
        from SurgicalDepthLib.preprocess import official_input_size

        h, w = images.shape[-2:]
        coarse = self.teacher(images).float()
        size = official_input_size(h, w, self.detail_size, self.teacher.config.patch_size)
        fine = resize_prediction(self.teacher(F.interpolate(images, size=size, mode="bicubic", align_corners=False)),
                                 (h, w), self.teacher.config.version)
        merged = merge_detail(coarse.cpu().numpy(), fine.cpu().numpy())
        return torch.from_numpy(merged).to(images.device)


def unlabeled_draw(seed: int, rank: int, step: int, n: int, batch_size: int,
                   micro: int = 0) -> tuple[list[int], torch.Generator]:
    """The unlabeled frames (indices into ``range(n)``) and the CutMix generator of micro-batch ``micro`` of
    optimizer step ``step`` on DDP rank ``rank``, seeded by ``(seed, rank, step[, micro])``: ranks and micro-batches
    draw different batches, a resumed run the same ones."""
    rng = np.random.default_rng([seed, rank, step] + ([micro] if micro else []))
    indices = rng.integers(0, n, batch_size).tolist()
    return indices, torch.Generator().manual_seed(int(rng.integers(2 ** 62)))


class UnlabeledView(torch.utils.data.Dataset):
    """The samples of ``data`` as unlabeled frames: ``image`` and the field of view ``valid`` (bool ``[H, W]``,
    True = tissue; absent: every pixel). A sample without ``depth`` (:class:`.datasets.UnlabeledFrames`) passes
    as it is. A labeled sample's ``valid`` says where its ground truth is — sparse for stereo data sets, cut at a
    range limit for others — not where tissue is, so it leaves with the depth and the field of view is found
    from the image (:class:`.datasets.frames.ImageFovMasks`: once per index, then kept bit-packed)."""

    def __init__(self, data: Any) -> None:
        from .datasets.frames import ImageFovMasks

        self.data = data
        self._fov = ImageFovMasks()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.data[i]
        if sample.get("depth") is None:
            return sample
        image = np.asarray(sample["image"])
        fov = self._fov.mask(i, image)
        return {"image": image} if fov is None else {"image": image, "valid": fov}


class SemiTerm:
    """The semi-supervised term used by :func:`.training.train`: ``prepare(step)`` draws this rank's unlabeled
    batch and CutMix boxes (:func:`unlabeled_draw`) and runs the teacher and the frozen encoder;
    ``loss(pred, features, semi)`` is ``unlabeled_weight`` · :func:`semi_loss`."""

    def __init__(self, config: Any, core: nn.Module, teacher: nn.Module, frozen: FrozenEncoder, unlabeled_data: Any,
                 size: tuple[int, int], device: torch.device, rank: int = 0) -> None:
        from ._train_data import DepthTransform, TransformedDataset

        transform = DepthTransform(size, core.config.mean, core.config.std, train=True, augment=False, strong=True)
        self.data = TransformedDataset(UnlabeledView(unlabeled_data), transform, config.seed + 1)
        self.config, self.core, self.teacher, self.frozen = config, core, teacher, frozen
        self.device, self.rank = device, rank

    def frames_per_micro_batch(self) -> int:
        """Unlabeled frames drawn for each labeled micro-batch: ``unlabeled_ratio · batch_size`` (Depth Anything
        V1: 1:2), at least 1, and at least 2 while CutMix is on (it pastes from another frame of the batch: with one
        frame it would never CutMix)."""
        drawn = max(1, round(self.config.unlabeled_ratio * self.config.batch_size))
        return max(drawn, 2 if self.config.cutmix_prob > 0 else 1)

    def prepare(self, step: int, micro: int = 0) -> SemiBatch:
        """This rank's unlabeled batch for micro-batch ``micro`` of optimizer step ``step``, its CutMix boxes,
        pseudo-labels and frozen features."""
        indices, generator = unlabeled_draw(self.config.seed, self.rank, step, len(self.data),
                                            self.frames_per_micro_batch(), micro)
        # each draw its own crop, jitter and blur: default_rng([seed + 1, step, index]) on rank 0's first
        # micro-batch, [seed + 1, step, rank, micro, index] on the others (a frame drawn twice is seen two ways)
        self.data.epoch = step if (self.rank, micro) == (0, 0) else (step, self.rank, micro)
        items = [self.data[i] for i in indices]
        batch = {k: torch.stack([it[k] for it in items]).to(self.device) for k in ("image", "image_strong")}
        if any("valid" in it for it in items):  # frames without a scope border: every pixel is tissue
            batch["valid"] = torch.stack([it.get("valid", torch.ones(it["image"].shape[1:], dtype=torch.bool))
                                          for it in items]).to(self.device)
        return prepare_semi_batch(self.teacher, self.frozen, batch, generator, self.config.cutmix_prob)

    def loss(self, pred: torch.Tensor, features: torch.Tensor, semi: SemiBatch) -> torch.Tensor:
        value, _ = semi_loss(pred, features, semi, feature_weight=self.config.feature_weight)
        return self.config.unlabeled_weight * value


def build_semi_term(config: Any, model: nn.Module, unlabeled_data: Any, size: tuple[int, int],
                    device: torch.device, rank: int = 0) -> SemiTerm | None:
    """The :class:`SemiTerm` of a ``TrainConfig`` (None while ``unlabeled_dataset`` and ``unlabeled_data`` are
    None). Call it with the start weights: the teacher and the frozen encoder are copies of them."""
    if config.unlabeled_dataset is None and unlabeled_data is None:
        return None
    if rank == 0:  # once per run, not once per process
        _warn_random_targets(config)
    teacher = build_teacher(config.teacher, model, device)
    # the default teacher is a copy of the start model: its encoder is the student's initial one already
    encoder = teacher.pretrained if not config.teacher else copy.deepcopy(model.pretrained)
    frozen = FrozenEncoder(encoder, model.config.intermediate_layers[-1])
    if config.teacher_detail_size is not None:
        teacher = DetailReadTeacher(teacher, config.teacher_detail_size)
    if unlabeled_data is None:
        from .datasets import open_unlabeled

        unlabeled_data = open_unlabeled(config.unlabeled_dataset, config.unlabeled_root or config.root)
    if len(unlabeled_data) == 0:
        raise ValueError("unlabeled_data is empty: semi-supervised training needs at least one frame")
    logger.info("semi-supervised: %d unlabeled frames (%s), teacher %s%s", len(unlabeled_data),
                getattr(unlabeled_data, "root", "given"), config.teacher or "= the start model",
                "" if config.teacher_detail_size is None else f" with a detail read at {config.teacher_detail_size}")
    return SemiTerm(config, model, teacher, frozen, unlabeled_data, size, device, rank)


def _warn_random_targets(config: Any) -> None:
    """Warn when the term's targets come from untrained (``random:``) weights: the pseudo-labels from the teacher
    (``teacher``, else the start model), the feature-alignment targets from the frozen start encoder (Depth
    Anything aligns to a *pretrained* DINOv2)."""
    if config.unlabeled_weight == 0:
        return
    untrained = {"pseudo-labels": config.teacher or config.model}
    if config.feature_weight > 0:
        untrained["feature-alignment targets"] = config.model
    untrained = {what: source for what, source in untrained.items() if str(source).startswith("random:")}
    if untrained:
        logger.warning("semi-supervised: the %s come from untrained weights (%s) and teach noise; give trained "
                       "weights (--model, --teacher) or --feature-weight 0", " and the ".join(untrained),
                       ", ".join(sorted(set(untrained.values()))))


def unlabeled_dataset_of(config: Any) -> str | None:
    """The unlabeled dataset name of a ``TrainConfig``: ``"frames"`` when only ``unlabeled_root`` is given (a
    folder of frames or a video is enough); checks the semi-supervised fields (messages start with the field)."""
    from .datasets import UNLABELED_FRAMES

    for name in ("unlabeled_weight", "feature_weight"):
        if not (math.isfinite(getattr(config, name)) and getattr(config, name) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {getattr(config, name)}")
    if not (math.isfinite(config.unlabeled_ratio) and config.unlabeled_ratio > 0):
        raise ValueError(f"unlabeled_ratio must be a finite number > 0, got {config.unlabeled_ratio}")
    if not 0 <= config.cutmix_prob <= 1:
        raise ValueError(f"cutmix_prob must be a probability in [0, 1], got {config.cutmix_prob}")
    name = config.unlabeled_dataset or (UNLABELED_FRAMES if config.unlabeled_root else None)
    if name is not None and name.lower() == UNLABELED_FRAMES and not config.unlabeled_root:
        raise ValueError(f"unlabeled_root must be given (a folder of frames or a video) when unlabeled_dataset is "
                         f"{UNLABELED_FRAMES!r}")
    if config.teacher_detail_size is not None:
        from SurgicalDepthLib.detail import check_detail_size

        if name is None:
            raise ValueError(f"teacher_detail_size must be used with unlabeled frames (a folder of "
                             f"frames, a video or a data set), got {config.teacher_detail_size!r} without them")
        check_detail_size(config.teacher_detail_size, min(config.effective_input_size), "teacher_detail_size")
    return name
