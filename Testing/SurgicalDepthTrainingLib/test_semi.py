"""semi: the Depth Anything semi-supervised recipe (Yang et al. 2024, Sec. 3.2-3.3): pseudo-labels on the clean
view, the student on the CutMixed strong view, per-region affine-invariant losses, feature alignment with a margin
against the student's frozen initial encoder, unlabeled image folders and videos, per-rank seeding."""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from SurgicalDepthLib.video import open_frames, write_image
from SurgicalDepthTrainingLib.training import DepthTransform
from SurgicalDepthTrainingLib.checkpointing import load_training_checkpoint
from SurgicalDepthTrainingLib.datasets import UnlabeledFrames, open_unlabeled
from SurgicalDepthTrainingLib.losses import affine_invariant_loss, ssi_loss
from SurgicalDepthTrainingLib.semi import (FrozenEncoder, SemiBatch, SemiTerm, capture_features, cutmix_affine_loss,
                                           feature_alignment_loss, semi_loss, unlabeled_draw)
from SurgicalDepthTrainingLib.training import TrainConfig, train
from tiny_model import textured, tiny_model, write_clip
from video_files import cut_in_half, mjpeg_avi

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see Testing/conftest.py

SIZE = (56, 56)
CPU = torch.device("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet: the tiny models' normalisation


class Textures(torch.utils.data.Dataset):
    """Smooth random textures; ``labeled`` adds a depth ramp (mm) that brightness follows, as in a lit scene."""

    name, root, min_depth, max_depth = "textures", "in-test", 1.0, 100.0

    def __init__(self, n: int, offset: int = 0, labeled: bool = False):
        self.n, self.offset, self.labeled = n, offset, labeled

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        image = textured(64, 64, self.offset + i)
        if not self.labeled:
            return {"image": image}
        depth = (20 + np.linspace(0, 30, 64, dtype=np.float32)[None] + image.mean(-1) / 25).astype(np.float32)
        return {"image": image, "depth": depth, "valid": np.ones((64, 64), bool)}


def config(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    values = dict(output=str(tmp_path / name), input_size=SIZE, batch_size=2, max_steps=1, seed=3, augment=False)
    return TrainConfig(**{**values, **overrides})


def frozen_copy(model) -> FrozenEncoder:
    return FrozenEncoder(copy.deepcopy(model.pretrained), model.config.intermediate_layers[-1])


# -- the per-region loss ------------------------------------------------------------------------------------------
def two_region_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo-labels of two unrelated images mixed by a box, and a prediction that is right up to one affine map
    inside the box and another outside: ``(pred, mixed label, box)``, ``[2, 16, 20]``."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    t_a = 1.0 + 0.5 * torch.sin(xx / 3) + 0.02 * yy  # T(u_a)
    t_b = 2.0 + 0.7 * torch.cos(yy / 2) + 0.03 * xx  # T(u_b)
    box = torch.zeros(2, 16, 20, dtype=torch.bool)
    box[0, 4:12, 3:11] = True
    box[1, 0:9, 10:20] = True
    label = torch.where(box, t_b, t_a)
    pred = torch.where(box, 3.0 * t_b + 5.0, 0.2 * t_a - 1.0)
    return pred, label, box


def test_cutmix_regions_are_aligned_separately():
    """Catches one affine fit over the mixed pseudo-label instead of the paper's separate inside / outside-box
    losses: a prediction right up to its own affine map in each region must cost ≈ 0 (a single fit costs a lot)."""
    pred, label, box = two_region_case()
    separate = cutmix_affine_loss(pred, label, box)
    everywhere = torch.ones_like(box)
    assert float(separate) < 1e-5
    tokens = torch.randn(2, 5, 8)  # the frozen features equal the student's: no feature loss
    value, parts = semi_loss(pred, tokens, SemiBatch(torch.zeros(2, 3, 16, 20), label, box, tokens[:, 1:]))
    assert parts["unlabeled"] < 1e-5 and parts["feature"] == 0.0 and float(value) < 1e-5
    assert float(affine_invariant_loss(pred, label, everywhere)) > 0.1
    assert float(ssi_loss(pred, label, everywhere)) > 0.1
    # each region is weighted by its share of the pixels: one region wrong by a known amount shows it
    wrong = torch.where(box, -pred, pred)  # the box's map flipped: its normalised values change sign
    share = box.flatten(1).float().mean(1)
    inside = torch.stack([affine_invariant_loss(wrong[i:i + 1], label[i:i + 1], box[i:i + 1]) for i in range(2)])
    assert float(inside.min()) > 0.5  # (outside the box: 0)
    assert float(cutmix_affine_loss(wrong, label, box)) == pytest.approx(float((share * inside).mean()), rel=1e-5)


def test_empty_and_tiny_regions_give_no_nan():
    """Catches NaN losses or gradients when an image has no CutMix box (empty region), a one-pixel box, or a
    constant pseudo-label in a region."""
    pred, label, _ = two_region_case()
    pred = pred.clone().requires_grad_(True)
    box = torch.zeros_like(label, dtype=torch.bool)
    box[1, 5, 5] = True  # image 0: no box; image 1: one pixel
    loss = cutmix_affine_loss(pred, torch.where(box, torch.full_like(label, 7.0), label), box)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(pred.grad).all())
    whole = torch.ones_like(box)
    pred = pred.detach()
    assert float(cutmix_affine_loss(pred, label, box & False)) == pytest.approx(
        float(affine_invariant_loss(pred, label, whole)), rel=1e-6)  # no box: one region, the whole image
    flat = cutmix_affine_loss(pred, torch.ones_like(label), whole & False)
    assert float(flat) == 0.0  # a constant pseudo-label carries no relative depth


# -- the feature alignment ----------------------------------------------------------------------------------------
def tokens_with_cosines(cosines: list[float], dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, frozen)`` ``[1, N, dim]`` whose token i has exactly cosine similarity ``cosines[i]``."""
    g = torch.Generator().manual_seed(0)
    frozen = torch.randn(1, len(cosines), dim, generator=g)
    other = torch.randn(1, len(cosines), dim, generator=g)
    u = F.normalize(frozen, dim=-1)
    v = F.normalize(other - (other * u).sum(-1, keepdim=True) * u, dim=-1)
    c = torch.tensor(cosines)[None, :, None]
    return 2.5 * (c * u + (1 - c ** 2).sqrt() * v), frozen


def test_margin_leaves_out_tokens_already_more_similar_than_alpha():
    """Catches the tolerance margin inverted (tokens above α = 0.85 counted instead of those below) or ignored:
    only tokens with cos < α contribute, ``L_feat = 1 - mean cos`` over them."""
    features, frozen = tokens_with_cosines([1.0, 0.99, 0.9, 0.86, 0.5, 0.2, -0.1, 0.84])
    expected = 1 - np.mean([0.5, 0.2, -0.1, 0.84])
    assert float(feature_alignment_loss(features, frozen, 0.85)) == pytest.approx(expected, abs=1e-5)
    aligned, frozen = tokens_with_cosines([1.0, 0.95, 0.9])
    assert float(feature_alignment_loss(aligned, frozen, 0.85)) == 0.0


# -- the prepared batch: who sees which view ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A SemiTerm's batch of optimizer step 4 with the views and the teacher's outputs on both, recomputed from the
    same draw; checked to be telling: 3 distinct frames, a box and an outside in every image, views that differ
    and give the teacher different outputs."""
    teacher, student = tiny_model(1), tiny_model(2).train()
    cfg = config(tmp_path_factory.mktemp("semi"), batch_size=3, cutmix_prob=1.0, seed=5, unlabeled_ratio=1.0)
    term = SemiTerm(cfg, student, teacher, frozen_copy(student), Textures(20, offset=40), SIZE, CPU)
    step = 4
    semi = term.prepare(step)
    indices, _ = unlabeled_draw(cfg.seed, 0, step, 20, 3)
    term.data.epoch = step
    items = [term.data[i] for i in indices]
    clean, strong = (torch.stack([it[k] for it in items]) for k in ("image", "image_strong"))
    with torch.no_grad():
        t_clean, t_strong = teacher(clean), teacher(strong)
    assert len(set(indices)) == 3 and bool(semi.box.flatten(1).any(1).all() & (~semi.box).flatten(1).any(1).all())
    assert float((clean - strong).abs().mean()) > 0.1
    assert float((t_clean - t_strong).abs().max()) > 0.05 * float(t_clean.max())
    return {"semi": semi, "strong": strong, "t_clean": t_clean, "term": term}


def test_teacher_labels_the_clean_view(prepared):
    """Catches the teacher fed the strong (perturbed) view instead of the clean one: outside the CutMix box the
    pseudo-label is T(u_a) of the clean frame."""
    semi, box = prepared["semi"], prepared["semi"].box
    torch.testing.assert_close(semi.label[~box], prepared["t_clean"][~box])


def test_student_sees_the_cutmixed_strong_view(prepared):
    """Catches the student fed the clean view (or no CutMix): its input is the strong view, with the previous
    frame's strong view inside the box; the frozen features are computed on that same input."""
    semi, box, strong = prepared["semi"], prepared["semi"].box, prepared["strong"]
    torch.testing.assert_close(semi.student_in, torch.where(box[:, None], strong.roll(1, 0), strong))
    torch.testing.assert_close(semi.frozen, prepared["term"].frozen(semi.student_in))


def test_pseudo_labels_are_cutmixed_like_the_input(prepared):
    """Catches CutMix applied to the student's input but not to the pseudo-labels: inside the box the label is
    the other frame's pseudo-label T(u_b)."""
    semi, box = prepared["semi"], prepared["semi"].box
    torch.testing.assert_close(semi.label[box], prepared["t_clean"].roll(1, 0)[box])
    assert not torch.allclose(semi.label[box], prepared["t_clean"][box])


def test_training_step_feeds_the_prepared_batch_to_the_student(prepared):
    """Catches the training loop giving the student anything but the prepared (strong, CutMixed) unlabeled batch
    after the labeled images."""
    from SurgicalDepthTrainingLib.training import TrainState, train_one_epoch

    term = copy.copy(prepared["term"])
    model = term.core = copy.deepcopy(term.core)  # the optimizer step changes it
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    labeled = {"image": torch.randn(2, 3, *SIZE), "depth": torch.rand(2, *SIZE) + 1,
               "valid": torch.ones(2, *SIZE, dtype=torch.bool)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    try:
        train_one_epoch(model, [labeled], optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                        TrainState(), loss="l1", output_kind="disparity", grad_accum=1, device=CPU,
                        amp_dtype=None, last_step=1, semi=term)
    finally:
        handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0][:2], labeled["image"])
    torch.testing.assert_close(seen[0][2:], term.prepare(0).student_in)  # the batch of step 0


def test_every_micro_batch_gets_its_own_unlabeled_batch_at_full_weight(prepared):
    """Catches the semi-supervised term joined to the last micro-batch only (one unlabeled batch per grad_accum
    labeled ones: not the ratio asked) or its weight shrinking with gradient accumulation (the term divided by
    grad_accum with the rest), and two micro-batches drawing the same frames. With grad_accum=2 each forward holds
    its labeled images then ``prepare(step, micro)``'s frames, and the step's loss is the mean over the
    micro-batches of labeled loss + unlabeled term, recomputed here with the unchanged start weights."""
    from SurgicalDepthTrainingLib._train_loop import supervised_loss
    from SurgicalDepthTrainingLib.training import TrainState, train_one_epoch

    labeled = {"image": torch.randn(2, 3, *SIZE), "depth": torch.rand(2, *SIZE) + 1,
               "valid": torch.ones(2, *SIZE, dtype=torch.bool)}
    term = copy.copy(prepared["term"])
    model = term.core = copy.deepcopy(term.core)
    start = copy.deepcopy(model)
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    state = TrainState()
    try:
        train_one_epoch(model, [labeled] * 2, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                        state, loss="l1", output_kind="disparity", grad_accum=2, device=CPU, amp_dtype=None,
                        last_step=1, semi=term)
    finally:
        handle.remove()
    assert len(seen) == 2 and not torch.equal(seen[0][2:], seen[1][2:])
    expected = []
    for micro, x in enumerate(seen):
        extra = term.prepare(0, micro)
        torch.testing.assert_close(x[2:], extra.student_in)
        with torch.no_grad(), capture_features(start) as feats:
            out = start(x)
            value = supervised_loss(out[:2], labeled, "l1", "disparity") + term.loss(out[2:], feats[-1][2:], extra)
        expected.append(float(value))
    assert state.losses[-1] == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_unlabeled_frames_come_two_per_labeled_image_by_default(tmp_path):
    """Catches the unlabeled batch drawn 1:1 with the labeled one (Depth Anything V1 mixes them 1:2:
    ``unlabeled_ratio`` 2.0 by default), the ratio ignored, and a ratio that is no positive number accepted."""
    teacher, student = tiny_model(1), tiny_model(2)
    assert TrainConfig().unlabeled_ratio == 2.0
    for ratio, frames in ((None, 6), (1.0, 3), (0.5, 2), (0.1, 2)):  # 0.1 * 3 rounds to 0: CutMix needs two
        options = {} if ratio is None else {"unlabeled_ratio": ratio}
        term = SemiTerm(config(tmp_path, batch_size=3, **options), student, teacher, frozen_copy(student),
                        Textures(8), SIZE, CPU)
        assert term.prepare(0).student_in.shape[0] == frames, ratio
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="unlabeled_ratio"):
            config(tmp_path, unlabeled_root=str(tmp_path), unlabeled_ratio=bad)


# -- the terms reach the loss -------------------------------------------------------------------------------------
def test_feature_alignment_term_is_part_of_the_loss(prepared, tmp_path):
    """Catches the feature-alignment term dropped from the loss (or its weight ignored): SemiTerm.loss grows by
    ``unlabeled_weight · feature_weight · L_feat`` with L_feat recomputed here from the two encoders' tokens."""
    student = copy.deepcopy(prepared["term"].core)
    with torch.no_grad():  # a student that has moved away from its initial (frozen) encoder
        for p in student.pretrained.blocks[-2:].parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    semi = prepared["semi"]
    with capture_features(student) as feats:
        pred = student(semi.student_in)
    cos = F.cosine_similarity(feats[-1][:, 1:].detach(), semi.frozen, dim=-1)
    expected = float(1 - cos[cos < 0.85].mean())
    assert expected > 0.02 and bool((cos >= 0.85).any())  # tokens on both sides of the margin
    values = {}
    for fw in (0.0, 1.5):
        term = copy.copy(prepared["term"])
        term.config = config(tmp_path, feature_weight=fw, unlabeled_weight=2.0)
        values[fw] = float(term.loss(pred, feats[-1], semi).detach())
    assert values[1.5] - values[0.0] == pytest.approx(2.0 * 1.5 * expected, rel=1e-4)
    assert values[0.0] == pytest.approx(2.0 * semi_loss(pred, feats[-1], semi, feature_weight=0)[1]["unlabeled"])


def last_loss(folder: Path) -> float:
    with (folder / "log.csv").open() as f:
        return float(list(csv.DictReader(f))[-1]["loss"])


def test_unlabeled_weight_scales_the_term_in_a_real_training_step(tmp_path):
    """Catches the semi-supervised term multiplied by 0 (unlabeled_weight ignored, the term not added to the total
    loss, or train() not passing it to the loop): the first step's loss grows linearly with unlabeled_weight and
    its update changes."""
    data = dict(train_data=Textures(4, labeled=True), val_data=Textures(1, offset=9, labeled=True),
                unlabeled_data=Textures(6, offset=20))
    for w in (0.0, 1.0, 2.0):
        train(config(tmp_path, f"w{w}", unlabeled_weight=w), **data)
    loss = {w: last_loss(tmp_path / f"w{w}") for w in (0.0, 1.0, 2.0)}
    assert loss[1.0] - loss[0.0] > 0.05
    assert loss[2.0] - loss[0.0] == pytest.approx(2 * (loss[1.0] - loss[0.0]), rel=1e-3)
    a, b = (load_training_checkpoint(tmp_path / f"w{w}" / "last.pt")["model"] for w in (0.0, 1.0))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-7


def test_vits_teacher_with_a_vitt_student_trains(tmp_path):
    """Catches the frozen features taken from the teacher's encoder: a ViT-S teacher (384 wide) with a ViT-Ti
    student (192 wide) must train; the frozen encoder is a copy of the student's initial one."""
    cfg = config(tmp_path, max_steps=2, teacher="random:depth-anything-v2-small", model="random:surgical-depth-tiny")
    best = train(cfg, train_data=Textures(4, labeled=True), val_data=Textures(1, offset=9, labeled=True),
                 unlabeled_data=Textures(3, offset=20))
    assert best.is_file() and math.isfinite(last_loss(tmp_path / "run"))


def test_semi_supervised_run_resumes_exactly(tmp_path):
    """Catches unlabeled draws (frames, perturbations, CutMix boxes) that a resumed run does not repeat."""
    data = dict(train_data=Textures(4, labeled=True), val_data=Textures(1, offset=9, labeled=True),
                unlabeled_data=Textures(6, offset=20))
    train(config(tmp_path, "straight", max_steps=3), **data)
    train(config(tmp_path, "resumed", max_steps=3), stop_after_steps=1, **data)
    train(config(tmp_path, "resumed", max_steps=3), resume=True, **data)
    a, b = (load_training_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- the strong view and the draws --------------------------------------------------------------------------------
def hue_degrees(normalised: torch.Tensor) -> float:
    """Mean hue (degrees) of a uniform-colour view ``[3, h, w]`` normalised with ImageNet mean/std."""
    rgb = (normalised * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).permute(1, 2, 0)
    rgb = rgb.numpy().astype(np.float32)
    return float(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 0].mean())


def test_strong_view_jitters_hue_and_sometimes_blurs_and_clean_view_stays_clean():
    """Catches a strong view without hue jitter (brightness / contrast / saturation keep a colour's hue, so a
    hue-only change is what this detects), blur never or always applied, and perturbations leaking into the
    teacher's clean view."""
    transform = DepthTransform((28, 28), MEAN, STD, train=True, augment=False, strong=True)
    uniform = np.zeros((28, 28, 3), np.uint8) + np.array([120, 70, 50], np.uint8)
    shifts = []
    for seed in range(12):
        out = transform({"image": uniform}, np.random.default_rng(seed))
        torch.testing.assert_close(out["image"], transform._normalise(uniform.astype(np.float32) / 255))
        shifts.append(abs((hue_degrees(out["image_strong"]) - hue_degrees(out["image"]) + 180) % 360 - 180))
    assert max(shifts) > 20 and sum(s > 3 for s in shifts) >= 8, shifts
    checker = (((np.indices((28, 28)) // 4).sum(0) % 2)[..., None] * np.array([150, 60, 40]) + 40).astype(np.uint8)
    blurred = []
    for seed in range(16):
        strong = transform({"image": checker}, np.random.default_rng(seed))["image_strong"]
        colours = np.unique(strong.numpy().round(4).reshape(3, -1), axis=1).shape[1]
        blurred.append(colours > 2)  # colour jitter maps each colour to one colour; blur mixes them
    assert 3 <= sum(blurred) <= 13, blurred


def test_ranks_draw_different_unlabeled_batches_and_repeat_them():
    """Catches DDP ranks drawing the same unlabeled frames (seeded by (seed, step) only) and draws that a resumed
    run would not repeat."""
    draws = {(rank, step): unlabeled_draw(7, rank, step, 10_000, 8) for rank in (0, 1) for step in (0, 1)}
    assert draws[0, 0][0] != draws[1, 0][0] and draws[0, 0][0] != draws[0, 1][0]
    again, generator = unlabeled_draw(7, 1, 0, 10_000, 8)
    assert again == draws[1, 0][0] and torch.equal(torch.rand(3, generator=generator),
                                                   torch.rand(3, generator=draws[1, 0][1]))
    assert not torch.equal(torch.rand(3, generator=draws[0, 0][1]), torch.rand(3, generator=draws[1, 1][1]))


def test_semi_term_uses_its_rank(prepared):
    """Catches a SemiTerm that ignores its DDP rank when drawing."""
    term = prepared["term"]
    other = copy.copy(term)
    other.rank = 1
    assert not torch.equal(term.prepare(2).student_in, other.prepare(2).student_in)
    assert torch.equal(term.prepare(2).student_in, term.prepare(2).student_in)


# -- unlabeled frames: image folders and videos -------------------------------------------------------------------
def frames_folder(root: Path) -> Path:
    """4 images at three depths (and one in a hidden folder), a text file and a 5-frame video."""
    for rel, seed in (("10.png", 0), ("2.png", 1), ("a/b/0001.png", 2), ("a/frame.jpg", 3), (".cache/x.png", 4)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, textured(30, 40, seed))
    (root / "notes.txt").write_text("not a frame")
    write_clip(root / "a" / "clip.mp4", 5)
    return root


def test_unlabeled_frames_lists_images_at_any_depth_and_video_frames(tmp_path):
    """Catches unlabeled data that needs depth files, misses nested images or video frames, or reads a video frame
    other than the one asked for."""
    data = UnlabeledFrames(frames_folder(tmp_path / "u"))
    names = [p.relative_to(tmp_path / "u").as_posix() for p in data.files]
    assert names == ["2.png", "10.png", "a/b/0001.png", "a/clip.mp4", "a/frame.jpg"] and len(data) == 9
    assert set(data[0]) == {"image", "name"} and data[0]["image"].dtype == np.uint8
    video = list(open_frames(tmp_path / "u" / "a" / "clip.mp4"))
    for k in (4, 1, 3):  # random order
        assert np.array_equal(data[3 + k]["image"], video[k]) and data[3 + k]["name"].endswith(f"clip.mp4#{k}")
    assert len(UnlabeledFrames(tmp_path / "u" / "a" / "clip.mp4")) == 5
    assert len(open_unlabeled("frames", tmp_path / "u" / "a" / "b")) == 1
    with pytest.raises(ValueError, match="'frames'.*synthetic"):
        open_unlabeled("nope", tmp_path)
    assert TrainConfig(unlabeled_root=str(tmp_path)).unlabeled_dataset == "frames"
    with pytest.raises(ValueError, match="^unlabeled_root"):
        TrainConfig(unlabeled_dataset="frames")
    with pytest.raises(ValueError, match="^cutmix_prob"):
        TrainConfig(cutmix_prob=1.5)


def test_unlabeled_frames_root_file_kinds(tmp_path):
    """Catches a root file classified apart from ``sd.frame_source_kind``: one image (suffix in any case) is one
    frame, a file of another kind is refused naming its suffix, a missing root is FileNotFoundError."""
    write_image(tmp_path / "one.PNG", textured(30, 40, 0))
    data = UnlabeledFrames(tmp_path / "one.PNG")
    assert data.files == [tmp_path / "one.PNG"] and len(data) == 1 and data[0]["image"].shape == (30, 40, 3)
    (tmp_path / "notes.txt").write_text("not a frame")
    with pytest.raises(ValueError, match=r"^unlabeled frames: .*notes\.txt has an unsupported suffix '\.txt'"):
        UnlabeledFrames(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        UnlabeledFrames(tmp_path / "missing")


def labeled_folder(root: Path, n: int = 4) -> Path:
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i, sample in enumerate(Textures(n, labeled=True)):  # (iteration ends at Textures' IndexError)
        write_image(root / "rgb" / f"{i}.png", sample["image"])
        np.save(root / "depth" / f"{i}.npy", sample["depth"])
    return root


@pytest.mark.parametrize("source", ["folder", "video"])
def test_cli_unlabeled_root_alone_is_enough(tmp_path, source):
    """Catches ``train --unlabeled-root PATH`` failing (or being ignored) for a folder of frames or a video file
    without --unlabeled-dataset, and the semi-supervised weights' flags parsed but not passed on to the run."""
    unlabeled = frames_folder(tmp_path / "u") if source == "folder" else tmp_path / "clip.mp4"
    if source == "video":
        write_clip(unlabeled, 6)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "SurgicalDepthTrainingLib", "train", "--dataset", "folder", "--root",
         str(labeled_folder(tmp_path / "data")), "--output", str(out), "--unlabeled-root", str(unlabeled),
         "--max-steps", "1", "--batch-size", "2", "--input-size", "56", "--val-fraction", "0.25", "--device", "cpu",
         "--unlabeled-weight", "0.25", "--feature-weight", "0.5", "--cutmix-prob", "0.75"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["unlabeled_dataset"], saved["unlabeled_root"]) == ("frames", str(unlabeled))
    assert (saved["unlabeled_weight"], saved["feature_weight"], saved["cutmix_prob"]) == (0.25, 0.5, 0.75)
    assert f"{9 if source == 'folder' else 6} unlabeled frames" in done.stderr
    assert (out / "best.safetensors").is_file()


@pytest.mark.parametrize("content", ["empty", "text", "missing"])
def test_cli_unlabeled_root_without_frames_is_a_one_line_error(tmp_path, capsys, content):
    """Catches a traceback, a half-written run folder or a message that does not name the path when
    --unlabeled-root holds no frames."""
    from SurgicalDepthLib.cli import main

    unlabeled = tmp_path / "nothing_here"
    if content != "missing":
        unlabeled.mkdir()
    if content == "text":
        (unlabeled / "readme.txt").write_text("no frames")
    rc = main(["train", "--dataset", "folder", "--root", str(labeled_folder(tmp_path / "data")), "--output",
               str(tmp_path / "o"), "--unlabeled-root", str(unlabeled), "--max-steps", "1", "--batch-size", "2",
               "--input-size", "28", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len([line for line in err if "error" in line]) == 1, err
    assert str(unlabeled) in err[-1] and not (tmp_path / "o").exists()


def test_batch_size_one_still_cutmixes(tmp_path):
    """Catches CutMix silently off in a ``batch_size=1`` run (one unlabeled frame a step has no other frame to
    paste from): the term draws two frames while CutMix is on, and one when it is off."""
    teacher, student = tiny_model(1), tiny_model(2)
    on = SemiTerm(config(tmp_path, batch_size=1, cutmix_prob=1.0, unlabeled_ratio=1.0), student, teacher,
                  frozen_copy(student), Textures(8), SIZE, CPU)
    semi = on.prepare(0)
    assert semi.student_in.shape[0] == 2 and bool(semi.box.flatten(1).any(1).all())
    off = copy.copy(on)
    off.config = config(tmp_path, batch_size=1, cutmix_prob=0.0, unlabeled_ratio=1.0)
    assert off.prepare(0).student_in.shape[0] == 1


def test_unlabeled_frames_of_a_cut_video_end_at_its_real_end(tmp_path, caplog):
    """Catches a truncated video (a recording cut short, a file still being written) counted at its container's
    frame count: a training run drawing one of the missing frames failed mid-run with "frame N could not be
    decoded". The frames counted are those that decode, and every one of them reads."""
    whole = tmp_path / "whole.avi"
    mjpeg_avi(whole, [textured(48, 64, i) for i in range(20)], fps=20.0)
    (tmp_path / "clips").mkdir()
    cut = cut_in_half(whole, tmp_path / "clips" / "cut.avi")
    decoded = sum(1 for _ in open_frames(cut))
    assert 3 <= decoded < 20
    frames = UnlabeledFrames(tmp_path / "clips")
    assert len(frames) == decoded and "announces 20 frames" in caplog.text
    assert frames[decoded - 1]["image"].shape == (48, 64, 3)
    assert len(UnlabeledFrames(whole)) == 20
