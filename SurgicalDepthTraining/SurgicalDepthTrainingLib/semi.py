"""Semi-supervised term of the Depth Anything recipe (Yang et al. 2024, "Depth Anything", Sec. 3.2-3.3).

For a batch of unlabeled frames:

1. a frozen teacher predicts pseudo-labels (disparity) on the clean images, and its encoder gives the frozen
   features ``f'`` (the teacher is a frozen copy of the pretrained model, so ``f'`` are the pretrained
   DINOv2 features the paper aligns to);
2. the student sees strong perturbations: colour distortion / blur (done by the data transform,
   ``image_strong``) and CutMix (a random box pasted from another image of the batch; the pseudo-label is mixed
   the same way, which equals the paper's separate inside/outside-box losses up to their weighting);
3. loss = ``ssi_loss(student, pseudo-label)`` + ``feature_weight`` · feature alignment, where the alignment is
   ``mean(1 - cos(f, f'))`` over the patch tokens whose similarity is still below the tolerance margin
   ``α = 0.85`` (paper: pixels already more similar than α are not considered).

Encoder features are the normalised tokens of the last decoder-fed block, captured by a forward hook on the
encoder's final ``norm``; in training the unlabeled batch is concatenated to the labeled one, so the student
(DDP-wrapped or not) runs once per step.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import ssi_loss


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


def cutmix(student_in: torch.Tensor, label: torch.Tensor, generator: torch.Generator,
           prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) of ``[B, 3, h, w]`` images and ``[B, h, w]`` labels with the batch rolled by
    one; box area ~ U(0.1, 0.5) of the image, applied with probability ``prob``. Returns ``(images, labels,
    box mask [B, h, w] bool)``."""
    B, _, H, W = student_in.shape
    box = torch.zeros(B, H, W, dtype=torch.bool)
    if B < 2 or torch.rand((), generator=generator).item() >= prob:
        return student_in, label, box.to(label.device)
    area = 0.1 + 0.4 * torch.rand((), generator=generator).item()
    bh, bw = max(1, int(H * area ** 0.5)), max(1, int(W * area ** 0.5))
    y0 = int(torch.randint(0, H - bh + 1, (), generator=generator))
    x0 = int(torch.randint(0, W - bw + 1, (), generator=generator))
    box[:, y0:y0 + bh, x0:x0 + bw] = True
    box = box.to(label.device)
    images = torch.where(box[:, None], student_in.roll(1, 0), student_in)
    labels = torch.where(box, label.roll(1, 0), label)
    return images, labels, box


@dataclass
class SemiBatch:
    """A prepared unlabeled batch: the student's input (strong view, CutMixed) ``[B, 3, h, w]``, the mixed
    pseudo-label ``[B, h, w]``, the frozen features ``[B, N, C]`` and the tokens touching the box ``[B, N]``."""

    student_in: torch.Tensor
    label: torch.Tensor
    frozen: torch.Tensor
    in_box: torch.Tensor


@torch.no_grad()
def prepare_semi_batch(teacher: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator,
                       cutmix_prob: float = 0.5) -> SemiBatch:
    """Teacher pseudo-labels and frozen features on ``batch["image"]`` (clean), CutMix of
    ``batch["image_strong"]`` and of the pseudo-labels (steps 1-2 of the module docstring)."""
    with capture_features(teacher) as t_feats:
        pseudo = teacher(batch["image"]).float()
    mixed, label, box = cutmix(batch["image_strong"], pseudo, generator, cutmix_prob)
    in_box = F.max_pool2d(box[:, None].float(), teacher.config.patch_size).flatten(1) > 0
    return SemiBatch(mixed, label, t_feats[-1][:, 1:].float(), in_box)


def semi_loss(pred: torch.Tensor, features: torch.Tensor, semi: SemiBatch, *, feature_weight: float = 1.0,
              margin: float = 0.85) -> tuple[torch.Tensor, dict[str, float]]:
    """Step 3: ``ssi_loss(pred, pseudo-label) + feature_weight · alignment`` for the student's output
    ``pred [B, h, w]`` and encoder tokens ``features [B, 1 + N, C]`` on ``semi.student_in``."""
    unlabeled = ssi_loss(pred.float(), semi.label, torch.ones_like(semi.label, dtype=torch.bool))
    # The strong view keeps the geometry (colour/blur only), so the student's tokens outside the CutMix box
    # correspond to the teacher's clean-view tokens; tokens touching the box are left out.
    cos = F.cosine_similarity(features[:, 1:].float(), semi.frozen, dim=-1)
    keep = (cos < margin) & ~semi.in_box
    feature = (1 - cos)[keep].mean() if bool(keep.any()) else cos.new_zeros(())
    loss = unlabeled + feature_weight * feature
    return loss, {"unlabeled": float(unlabeled.detach()), "feature": float(feature.detach())}


def semi_supervised_loss(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor],
                         generator: torch.Generator, *, feature_weight: float = 1.0, margin: float = 0.85,
                         cutmix_prob: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """The whole term on one unlabeled batch (``image``, ``image_strong`` normalised ``[B, 3, h, w]``) for an
    unwrapped student ``DepthModel``; returns ``(loss, {"unlabeled", "feature"})``. (Training concatenates the
    unlabeled batch with the labeled one instead, so the student — possibly DDP-wrapped — runs once a step.)"""
    semi = prepare_semi_batch(teacher, batch, generator, cutmix_prob)
    with capture_features(student) as s_feats:
        pred = student(semi.student_in)
    return semi_loss(pred, s_feats[-1], semi, feature_weight=feature_weight, margin=margin)


def build_teacher(source: str | None, start_model: nn.Module, device: torch.device) -> nn.Module:
    """Frozen teacher: ``load_model(source)`` if given, else a copy of the start model (its encoder = the frozen
    pretrained features Depth Anything aligns to)."""
    from SurgicalDepthLib.loading import load_model

    teacher = load_model(source, device=device, precision="fp32") if source else copy.deepcopy(start_model)
    return teacher.requires_grad_(False).eval()


class SemiTerm:
    """The semi-supervised term used by :func:`.training.train`: ``prepare(step)`` draws the unlabeled batch
    and the CutMix box from a generator seeded by ``(config.seed, step)`` (so resumed runs repeat them);
    ``loss(pred, features, semi)`` is the weighted :func:`semi_loss`."""

    def __init__(self, config: Any, core: nn.Module, teacher: nn.Module, unlabeled_data: Any,
                 size: tuple[int, int], device: torch.device) -> None:
        from ._train_data import DepthTransform, TransformedDataset

        transform = DepthTransform(size, core.config.mean, core.config.std, train=True, augment=False, strong=True)
        self.data = TransformedDataset(unlabeled_data, transform, config.seed + 1)
        self.config, self.core, self.teacher, self.device = config, core, teacher, device

    def prepare(self, step: int) -> SemiBatch:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        idx = torch.randint(0, len(self.data), (self.config.batch_size,), generator=g).tolist()
        items = [self.data[i] for i in idx]
        batch = {k: torch.stack([it[k] for it in items]).to(self.device) for k in ("image", "image_strong")}
        return prepare_semi_batch(self.teacher, batch, g, self.config.cutmix_prob)

    def loss(self, pred: torch.Tensor, features: torch.Tensor, semi: SemiBatch) -> torch.Tensor:
        value, _ = semi_loss(pred, features, semi, feature_weight=self.config.feature_weight)
        return self.config.unlabeled_weight * value
