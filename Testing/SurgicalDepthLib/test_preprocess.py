"""Official preprocessing, checked against an independent step-by-step float64 computation."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

import SurgicalDepthLib as sd
from SurgicalDepthLib.encoder import interpolate_pos_embed_official
from SurgicalDepthLib.preprocess import official_input_size, preprocess
from tiny_model import perturb_weights


@pytest.mark.parametrize("hw,expected", [((518, 518), (518, 518)), ((1080, 1920), (518, 924)),
                                        ((256, 320), (518, 644)), ((475, 475), (518, 518)),
                                        ((720, 1280), (518, 924)), ((100, 30), (1722, 518))])
def test_official_input_size(hw, expected):
    assert official_input_size(*hw) == expected
    h, w = official_input_size(*hw)
    assert h % 14 == 0 and w % 14 == 0 and min(h, w) >= 518


def _reference(rgb, input_size=518):
    # util/transform.py: scale so that both sides >= input_size (lower_bound), round to multiple of 14
    H, W = rgb.shape[:2]
    scale = max(input_size / H, input_size / W)
    nh = int(round(scale * H / 14) * 14)
    nw = int(round(scale * W / 14) * 14)
    if nh < input_size:
        nh = int(math.ceil(scale * H / 14) * 14)
    if nw < input_size:
        nw = int(math.ceil(scale * W / 14) * 14)
    img = cv2.resize(rgb.astype(np.float64) / 255.0, (nw, nh), interpolation=cv2.INTER_CUBIC)
    img = (img - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return img.transpose(2, 0, 1)


def test_preprocess_matches_step_by_step(rng):
    rgb = rng.integers(0, 256, size=(97, 171, 3), dtype=np.uint8)
    ours = preprocess(rgb)
    ref = _reference(rgb)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


def test_rgb_order_is_kept():
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = preprocess(rgb, input_size=28)
    assert x[0].mean() > 2 and x[2].mean() < -1.5


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\], got shape \(4, 4\)"):
        preprocess(np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8, got float32"):
        preprocess(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        official_input_size(10, 10, input_size=0)


@pytest.mark.parametrize("input_size", [50, 48, 500, 97])
def test_input_size_that_is_no_multiple_of_14_rounds_as_the_official_code(rng, input_size):
    """Bug caught: infer_image(rgb, input_size=50) refused ("must be a multiple of 14") where the official
    image2tensor rounds it (50 -> 56 on a square image), so a call that works with the official code fails here."""
    rgb = rng.integers(0, 256, size=(61, 90, 3), dtype=np.uint8)
    ref = _reference(rgb, input_size)
    assert preprocess(rgb, input_size=input_size).shape == ref.shape
    assert official_input_size(10, 10, input_size=50) == (56, 56)


def test_pos_embed_identity_at_pretrain_size():
    pe = torch.randn(1, 1 + 37 * 37, 8)
    assert interpolate_pos_embed_official(pe, 37, 37) is pe


def test_pos_embed_official_formula_differs_from_size_based():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 37 * 37, 8)
    out = interpolate_pos_embed_official(pe, 26, 37)
    grid = pe[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    # the official computation spelled out: scale factor (n + 0.1) / 37 on each axis, bicubic, no antialias
    ref = torch.nn.functional.interpolate(grid, scale_factor=(26.1 / 37, 37.1 / 37), mode="bicubic")
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-6)
    assert torch.equal(out[:, :1], pe[:, :1])
    size_based = torch.nn.functional.interpolate(grid, size=(26, 37), mode="bicubic", align_corners=False)
    assert not torch.allclose(ref, size_based, atol=1e-3)  # why HF/timm differ from the official model


def test_infer_image_keeps_input_size_and_matches_forward(rng):
    model = sd.load_model("random:surgical-depth-tiny", device="cpu")
    rgb = rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    out = model.infer_image(rgb, input_size=70)
    assert out.shape == (60, 90) and out.dtype == np.float32
    x = torch.from_numpy(preprocess(rgb, 70))[None]
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(model(x)[:, None], (60, 90), mode="bilinear", align_corners=True)
    assert np.allclose(out, ref[0, 0].numpy(), atol=1e-6)
    batch = model.infer_batch([rgb, rgb[::-1].copy()], input_size=70, batch_size=2)
    assert batch.shape == (2, 60, 90)
    assert np.allclose(batch[0], out, atol=1e-5)
    with pytest.raises(ValueError, match=r"frame 1 has size \(30, 90\)"):
        model.infer_batch([rgb, rgb[:30]], input_size=70)


@pytest.mark.parametrize("version, align_corners", [("v1", False), ("v2", True)])
def test_prediction_is_resized_to_the_frame_as_each_release_does_it(rng, version, align_corners):
    """V1's ``run.py`` resizes the network output to the frame with ``align_corners=False``, V2's ``infer_image``
    with ``True``. Bug caught: a V1 checkpoint upsampled the V2 way (up to ~0.15 apart with random weights), so
    ``infer_image`` of the official V1 files did not give V1's own numbers; and the ONNX backend doing otherwise."""
    model = perturb_weights(sd.load_model(f"random:depth-anything-{version}-small", device="cpu"), seed=0)
    assert model.config.version == version
    rgb = rng.integers(0, 256, size=(45, 100, 3), dtype=np.uint8)
    x = torch.from_numpy(preprocess(rgb, 42))[None]
    with torch.no_grad():
        out = model(x)[:, None]
    ref = torch.nn.functional.interpolate(out, (45, 100), mode="bilinear", align_corners=align_corners)[0, 0]
    other = torch.nn.functional.interpolate(out, (45, 100), mode="bilinear", align_corners=not align_corners)[0, 0]
    assert (ref - other).abs().max() > 1e-3 * ref.abs().max()  # the case tells the two apart
    got = model.infer_image(rgb, input_size=42)
    assert np.allclose(got, ref.numpy(), atol=1e-5 * float(ref.abs().max()))
    assert np.allclose(model.infer_batch([rgb], input_size=42)[0], got, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("hw", [(97, 171), (720, 1280), (256, 320)])
def test_device_preprocessing_matches_the_official_one(rng, hw):
    """The GPU path (torch bicubic on uint8 frames) against the official OpenCV path, run here on the CPU."""
    from SurgicalDepthLib.preprocess import preprocess_on_device

    frames = rng.integers(0, 256, size=(2, *hw, 3), dtype=np.uint8)
    ours = preprocess_on_device(torch.from_numpy(frames), 518).numpy()
    for frame, x in zip(frames, ours):
        ref = _reference(frame)
        assert x.shape == ref.shape
        # 2e-4 of [0, 1] (OpenCV's rounded kernel weights) divided by the smallest ImageNet std
        assert np.abs(x - ref).max() < 2e-4 / 0.224
    with pytest.raises(ValueError, match="uint8"):
        preprocess_on_device(torch.zeros(1, 8, 8, 3), 518)


def test_uint8_batches_give_the_same_prediction_as_host_preprocessing(rng):
    torch.manual_seed(0)  # a random init whose (ReLU) output is not constant
    model = sd.load_model("random:surgical-depth-tiny", device="cpu")
    frames = rng.integers(0, 256, size=(2, 60, 80, 3), dtype=np.uint8)
    host = model._fetch(model._launch(torch.from_numpy(np.stack([preprocess(f, 56) for f in frames])), (60, 80)))
    device = model._fetch(model._launch(torch.from_numpy(frames), (60, 80), input_size=56))
    assert np.ptp(host) > 0
    assert np.abs(device - host).max() <= 1e-3 * max(np.abs(host).max(), 1e-6)


def test_a_strip_far_from_any_frame_shape_is_refused():
    """Catches: a 4000×10 strip read at its aspect ratio (a 72800×182 network input for the default model: 67,600
    tokens, the run did not end in minutes), where the live service already refused such frames; 8:1 is read."""
    assert official_input_size(10, 80, 14) == (14, 112)
    with pytest.raises(ValueError, match=r"4000x10 pixels has sides further apart than 8:1"):
        official_input_size(10, 4000, 182)
    with pytest.raises(ValueError, match="further apart than 8:1"):
        sd.load_model("random:surgical-depth-tiny", device="cpu").infer_image(np.zeros((4000, 10, 3), np.uint8))
