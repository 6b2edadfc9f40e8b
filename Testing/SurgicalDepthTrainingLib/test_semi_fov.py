"""semi on real frames: the scope's black border and burned-in text are not tissue, so unlabeled frames carry their
field of view (``valid``) through the training transform and CutMix, and the pseudo-label loss reads only it."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from SurgicalDepthLib.video import write_image
from SurgicalDepthTrainingLib.datasets import UnlabeledFrames
from SurgicalDepthTrainingLib.semi import FrozenEncoder, SemiTerm, cutmix_affine_loss, prepare_semi_batch
from SurgicalDepthTrainingLib.training import DepthTransform, TrainConfig
from tiny_model import textured, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see Testing/conftest.py

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scope_frame(h: int, w: int, seed: int, *, text: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame inside a black disc-shaped scope border, with white overlay text on the border (as on
    real colonoscopy frames): ``(rgb uint8 [h, w, 3], disc bool [h, w])``."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 <= (0.45 * min(h, w)) ** 2
    rgb = np.where(disc[..., None], np.maximum(textured(h, w, seed), 40), 0).astype(np.uint8)
    if text:
        cv2.putText(rgb, "12:04", (1, h - 4), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1)
    return rgb, disc


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_unlabeled_frames_carry_the_scope_field_of_view(tmp_path):
    """Catches unlabeled frames whose black border and overlay text count as tissue (no ``valid``), a video's
    field of view taken from another video, and a ``valid`` invented for frames without a border."""
    bordered, disc = scope_frame(96, 128, 0)
    write_image(tmp_path / "a.png", bordered)
    write_image(tmp_path / "b.png", textured(96, 128, 1) // 2 + 60)  # no border: every pixel is tissue
    clip = [scope_frame(64, 80, k, text=False)[0] for k in range(4)]
    writer = cv2.VideoWriter(str(tmp_path / "c.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (80, 64))
    for rgb in clip:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    data = UnlabeledFrames(tmp_path)
    assert len(data) == 6
    a = data[0]
    assert iou(a["valid"], disc) > 0.9 and not a["valid"][-6:, :40].any()  # the text corner is outside
    assert "valid" not in data[1]
    video_disc = scope_frame(64, 80, 0)[1]
    for k in (2, 5):
        assert data[k]["valid"].shape == (64, 80) and iou(data[k]["valid"], video_disc) > 0.9


def test_an_image_field_of_view_found_once_is_its_own(tmp_path):
    """Catches the kept field of view of an image (found on its first read, then reused) given to another image,
    packed or unpacked to another shape or order, a border-free image getting one, or the cache not used."""
    from SurgicalDepthLib.fov import detect_fov_mask

    frames = [scope_frame(96, 128, 0)[0], textured(90, 120, 1) // 2 + 60, scope_frame(75, 101, 2)[0]]
    for k, rgb in enumerate(frames):
        write_image(tmp_path / f"{k}.png", rgb)
    data = UnlabeledFrames(tmp_path)
    for k in (0, 1, 2, 2, 0, 1, 0):  # (a reused mask read in another order than found)
        expected = detect_fov_mask([frames[k]])
        sample = data[k]
        assert (expected is None) == ("valid" not in sample), k
        if expected is not None:
            assert sample["valid"].dtype == bool and np.array_equal(sample["valid"], expected), k
    assert len(data._image_fov) == 3 and data._image_fov[tmp_path / "1.png"] is None


def test_transform_crops_and_flips_the_field_of_view_with_the_image():
    """Catches an unlabeled sample's field of view dropped by the training transform, or cropped / flipped apart
    from its image: the transformed border pixels are exactly the ones marked outside."""
    rgb, disc = scope_frame(56, 84, 3, text=False)  # the crop's height: crops without resampling, exact
    fov = disc.copy()
    fov[30:, :40] = False  # a blanked overlay box on one side: flips and crops show
    transform = DepthTransform((56, 70), MEAN, STD, train=True, augment=True, strong=True)
    for seed in range(8):
        out = transform({"image": rgb, "valid": fov}, np.random.default_rng(seed))
        assert "depth" not in out and out["valid"].dtype == torch.bool and out["valid"].shape == (56, 70)
        white = np.repeat(np.where(fov[..., None], 255, 0).astype(np.uint8), 3, axis=2)
        raw = transform({"image": white}, np.random.default_rng(seed))["image"]  # the same crop and flip
        seen = raw[0] > raw.min() + 1e-3  # (colour jitter keeps black black)
        assert torch.equal(seen, out["valid"])
    # a sample with neither depth nor validity keeps giving the image alone
    assert set(transform({"image": rgb}, np.random.default_rng(0))) == {"image", "image_strong"}


def test_pseudo_labels_outside_the_field_of_view_cost_nothing():
    """Catches the pseudo-label loss fitted over the black border: a prediction right up to an affine map inside
    the field of view (and anything outside) costs ≈ 0 with the mask, not without."""
    g = torch.Generator().manual_seed(0)
    label = torch.rand(2, 16, 20, generator=g) + 0.5
    valid = torch.zeros(2, 16, 20, dtype=torch.bool)
    valid[:, 2:14, 3:17] = True
    box = torch.zeros_like(valid)
    box[1, :8, :10] = True  # image 1 has a CutMix box (its own affine map), image 0 none
    right = torch.where(box, 0.5 * label - 1.0, 2.0 * label + 0.3)
    pred = torch.where(valid, right, 50 * torch.rand(2, 16, 20, generator=g))
    assert float(cutmix_affine_loss(pred, label, box, valid)) < 1e-5
    assert float(cutmix_affine_loss(pred, label, box)) > 0.1


def test_field_of_view_is_cutmixed_with_the_frames(tmp_path):
    """Catches a field of view left un-mixed by CutMix (the box then reads the other frame's pixels with this
    frame's border), and a SemiTerm that drops ``valid`` or gives frames without a border an empty mask."""
    teacher, student = tiny_model(1), tiny_model(2)
    frozen = FrozenEncoder(copy.deepcopy(student.pretrained), student.config.intermediate_layers[-1])
    valid = torch.ones(3, 28, 28, dtype=torch.bool)
    valid[0, :, :10] = False
    valid[2, 20:] = False
    batch = {"image": torch.randn(3, 3, 28, 28), "image_strong": torch.randn(3, 3, 28, 28), "valid": valid}
    semi = prepare_semi_batch(teacher, frozen, batch, torch.Generator().manual_seed(1), cutmix_prob=1.0)
    box = semi.box
    assert bool(box.any()) and torch.equal(semi.valid, torch.where(box, valid.roll(1, 0), valid))

    frames = [scope_frame(40, 40, k)[0] for k in range(2)] + [textured(40, 40, 9)]

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            rgb = frames[i]
            return {"image": rgb, **({"valid": rgb.max(-1) > 0} if i < 2 else {})}

    cfg = TrainConfig(output=str(tmp_path / "o"), input_size=(28, 28), batch_size=6, seed=2, cutmix_prob=0.0,
                      unlabeled_ratio=1.0)
    term = SemiTerm(cfg, student, teacher, frozen, Frames(), (28, 28), torch.device("cpu"))
    prepared = term.prepare(0)
    assert prepared.valid is not None and prepared.valid.shape == (6, 28, 28)
    inside = prepared.valid.flatten(1).float().mean(1)
    assert bool(((inside > 0.4) & (inside < 0.9)).any()) and bool((inside == 1.0).any())  # both kinds drawn


def test_a_scope_border_does_not_shrink_a_frames_pseudo_label_loss():
    """Catches each region weighted by its share of *all* the pixels (border included) instead of the frame's
    tissue: a frame showing tissue on half its width scored half the loss of the same tissue without a border, so
    real (bordered) frames counted for less and a frame without any tissue diluted the batch mean."""
    g = torch.Generator().manual_seed(0)
    label = torch.rand(2, 24, 32, generator=g) + 0.5
    pred = torch.rand(2, 24, 32, generator=g) + 0.5  # wrong everywhere
    box = torch.zeros(2, 24, 32, dtype=torch.bool)
    box[1, 4:16, 10:22] = True  # image 1: CutMixed
    fov = torch.zeros_like(box)
    fov[:, :, 8:24] = True
    tissue = (slice(None), slice(None), slice(8, 24))
    alone = float(cutmix_affine_loss(pred[tissue], label[tissue], box[tissue]))  # the tissue, cropped
    assert float(cutmix_affine_loss(pred, label, box, fov)) == pytest.approx(alone, rel=1e-5)
    one = (slice(0, 1),)
    no_tissue = torch.cat([torch.ones_like(fov[one]), torch.zeros_like(fov[one])])
    assert float(cutmix_affine_loss(pred[[0, 0]], label[[0, 0]], box[[0, 0]], no_tissue)) == pytest.approx(
        float(cutmix_affine_loss(pred[one], label[one], box[one])), rel=1e-5)


def test_a_labeled_data_set_as_unlabeled_frames_uses_its_field_of_view_not_its_depth_mask(tmp_path):
    """Catches a labeled data set given as unlabeled frames (``unlabeled_dataset="scared"``, ``train(unlabeled_data=
    ...)``) whose ground-truth mask became the pseudo-label loss's field of view: with sparse stereo depth (80 % of
    pixels without ground truth) the loss read 20 % of the tissue. Its field of view is the scope's, found from the
    image (the black border still left out)."""
    teacher, student = tiny_model(1), tiny_model(2)
    frozen = FrozenEncoder(copy.deepcopy(student.pretrained), student.config.intermediate_layers[-1])
    rgb, disc = scope_frame(56, 56, 4, text=False)
    plain = textured(56, 56, 5)

    class SparseDepth(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            depth = np.full((56, 56), 50.0, np.float32)
            depth[np.random.default_rng(i).random((56, 56)) < 0.8] = 0.0  # no ground truth there
            return {"image": rgb if i == 0 else plain, "depth": depth, "valid": depth > 0}

    cfg = TrainConfig(output=str(tmp_path / "o"), input_size=(56, 56), batch_size=2, seed=0, cutmix_prob=0.0)
    term = SemiTerm(cfg, student, teacher, frozen, SparseDepth(), (56, 56), torch.device("cpu"))
    bordered, border_free = term.data[0], term.data[1]  # the crop is the whole frame: masks compare pixelwise
    assert "depth" not in bordered and iou(bordered["valid"].numpy(), disc) > 0.9
    assert set(border_free) == {"image", "image_strong"}  # every pixel is tissue
    masks = [term.prepare(step).valid for step in range(4)]  # (the bordered frame drawn at least once)
    assert any(m is not None for m in masks) and all(float(m.float().mean()) > 0.6 for m in masks if m is not None)
