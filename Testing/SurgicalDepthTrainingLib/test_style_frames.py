"""Real frames lending labeled frames their low spatial frequencies (Fourier Domain Adaptation): the pure swap,
the frame bank, the training transform, ``TrainConfig`` and ``train --style-root``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from SurgicalDepthLib.video import write_image

from SurgicalDepthTrainingLib.photometric import amplitude_spectrum, low_frequency_swap
from SurgicalDepthTrainingLib.style_frames import StyleFrames
from SurgicalDepthTrainingLib.training import DepthTransform, TrainConfig
from tiny_model import textured

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """float32 [h, w, 3] in about [0.3, 0.7]: a few random low and mid frequencies (never clipped by a swap)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.full((h, w, 3), 0.5, np.float32)
    for _ in range(6):
        fy, fx, phase = rng.uniform(0, 6), rng.uniform(0, 6), rng.uniform(0, 2 * np.pi)
        out += rng.uniform(-0.03, 0.03, 3).astype(np.float32) * np.cos(2 * np.pi * (fy * yy / h + fx * xx / w)
                                                                         + phase)[..., None]
    return out.astype(np.float32)


@pytest.mark.parametrize("shape", [(37, 50), (40, 40)])
def test_swap_with_the_frames_own_spectrum_gives_the_frame_back(shape):
    """Bugs caught: the phase dropped or recomputed from the new amplitude, fftshift undone with fftshift instead
    of ifftshift (wrong for odd sizes: 37), the transform taken across the colour channels."""
    image = _smooth(*shape, seed=1)
    for half_width in (0, 1, 5, 60):
        np.testing.assert_allclose(low_frequency_swap(image, amplitude_spectrum(image), half_width), image,
                                   atol=2e-6)


def test_half_width_zero_swaps_the_mean_colour_alone():
    """Independent reference: with the zero frequency alone swapped, each channel's mean becomes the reference's
    and every pixel keeps its offset from the mean. Bugs caught: a window off the spectrum's centre (``w // 2``
    vs ``(w - 1) // 2`` on an odd width), height and width swapped, the window one bin too wide."""
    image = _smooth(37, 51, seed=2)
    colour = np.array([0.62, 0.35, 0.28], np.float32)
    reference = amplitude_spectrum(np.broadcast_to(colour, image.shape))
    expected = image - image.mean(axis=(0, 1)) + colour
    np.testing.assert_allclose(low_frequency_swap(image, reference, 0), expected, atol=2e-6)


def test_window_takes_the_references_amplitude_and_the_phase_stays():
    """Bugs caught: the window transposed on a non-square frame or one bin off, amplitude outside the window
    changed, the phase (the rendered geometry, which the exact depth belongs to) not kept."""
    image, other = _smooth(36, 48, seed=3), _smooth(36, 48, seed=4)
    out = low_frequency_swap(image, amplitude_spectrum(other), 3)
    assert 0.0 < out.min() and out.max() < 1.0  # nothing clipped: the spectrum below is exactly the swap's
    before, after, reference = (np.fft.fftshift(np.fft.fft2(x.astype(np.float64), axes=(0, 1)), axes=(0, 1))
                                for x in (image, out, other))
    window = np.zeros((36, 48), bool)
    window[18 - 3:18 + 4, 24 - 3:24 + 4] = True
    np.testing.assert_allclose(np.abs(after)[window], np.abs(reference)[window], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.abs(after)[~window], np.abs(before)[~window], rtol=1e-4, atol=1e-3)
    strong = np.abs(before) > 1.0
    turn = np.angle(after[strong] / before[strong])
    assert np.abs(turn).max() < 1e-3


def test_swap_refuses_a_spectrum_of_another_size():
    """Bug caught: a reference spectrum of another size broadcast or cut silently (frames of one size, spectra of
    another, would mix frequencies)."""
    with pytest.raises(ValueError, match="reference amplitude"):
        low_frequency_swap(np.zeros((8, 10, 3), np.float32), np.zeros((10, 8, 3), np.float32), 1)


def _scope_frame(colour: tuple[int, int, int], h: int = 60, w: int = 80) -> np.ndarray:
    """uint8 RGB: ``colour`` inside the central 60 %, black around it (a scope border) and a white text box."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[int(0.2 * h):int(0.8 * h), int(0.2 * w):int(0.8 * w)] = colour
    frame[:6, :20] = 255
    return frame


def test_style_frames_read_the_centre_in_rgb_and_in_plain_name_order(tmp_path):
    """Independent reference: a frame whose centre is one colour has all its amplitude at zero frequency, equal to
    ``h · w · colour``. Bugs caught: the scope border or its text included (darker or lighter mean), BGR read as
    RGB, values not scaled to [0, 1]; files in another order on another machine (natural order would put b9
    before b10) or hidden files taken."""
    (tmp_path / "f").mkdir()
    write_image(tmp_path / "f" / "b9.png", _scope_frame((200, 100, 50)))
    write_image(tmp_path / "f" / "b10.png", _scope_frame((40, 160, 220)))
    write_image(tmp_path / "f" / ".hidden.png", _scope_frame((0, 0, 0)))
    bank = StyleFrames(tmp_path / "f")
    assert [p.name for p in bank.files] == ["b10.png", "b9.png"] and len(bank) == 2
    spectrum = bank.amplitude(1, 21, 30)
    assert spectrum.shape == (21, 30, 3) and spectrum.dtype == np.float32
    np.testing.assert_allclose(spectrum[10, 15], 21 * 30 * np.array([200, 100, 50]) / 255.0, rtol=1e-5)
    spectrum[10, 15] = 0
    assert spectrum.max() < 1e-3


def test_style_frames_give_a_frame_the_reference_colour_reproducibly(tmp_path):
    """Bugs caught: ``apply`` drawing from the global generator (a run would not reproduce or resume exactly),
    or not swapping at all."""
    (tmp_path / "f").mkdir()
    colours = {(200, 60, 40), (50, 90, 210)}
    for i, colour in enumerate(sorted(colours)):
        write_image(tmp_path / "f" / f"{i}.png", _scope_frame(colour))
    bank = StyleFrames(tmp_path / "f", beta=(0.0, 0.0))
    image = _smooth(28, 42, seed=5)
    np.random.seed(0)  # a draw from the global generator would differ between the two calls (deterministically)
    seen = set()
    for seed in range(8):
        a, b = bank.apply(image, np.random.default_rng(seed)), bank.apply(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        seen.add(tuple(int(v) for v in np.round(a.mean(axis=(0, 1)) * 255.0)))
    assert {tuple(c) for c in seen} == colours  # each frame's mean colour, and both frames drawn


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (2, 1)])
def test_style_frames_take_a_frame_of_one_pixel_a_side(tmp_path, size):
    """Bug caught: the central crop of a frame one pixel high or wide was empty, and the swap failed mid-run with a
    raw OpenCV assertion (a thumbnail or a strip among thousands of real frames stopped the training)."""
    write_image(tmp_path / "tiny.png", np.full((*size, 3), (90, 150, 30), np.uint8))
    spectrum = StyleFrames(tmp_path / "tiny.png").amplitude(0, 21, 30)
    np.testing.assert_allclose(spectrum[10, 15], 21 * 30 * np.array([90, 150, 30]) / 255.0, rtol=1e-5)


@pytest.mark.parametrize("case", ["missing", "empty", "beta"])
def test_style_frames_refuse_bad_input_naming_it(tmp_path, case):
    """Bug caught: a folder without images accepted (the run would fail at its first swap, minutes in) or a window
    range wider than half the spectrum or reversed accepted."""
    root = tmp_path / "frames"
    if case != "missing":
        root.mkdir()
        (root / "notes.txt").write_text("no frames")
    if case == "beta":
        write_image(root / "a.png", _scope_frame((1, 2, 3)))
        with pytest.raises(ValueError, match=r"^style_beta .*\(0.04, 0.01\)"):
            StyleFrames(root, beta=(0.04, 0.01))
        with pytest.raises(ValueError, match="^style_beta"):
            TrainConfig(style_beta=(0.1, 0.6))
        return
    with pytest.raises(FileNotFoundError, match=str(root)):
        StyleFrames(root)


def _sample() -> dict:
    rng = np.random.default_rng(3)
    return {"image": np.full((70, 90, 3), 128, np.uint8) + rng.integers(0, 20, (70, 90, 3), dtype=np.uint8),
            "depth": rng.uniform(5, 80, (70, 90)).astype(np.float32), "valid": np.ones((70, 90), bool)}


def test_depth_transform_swaps_only_augmented_training_images(tmp_path):
    """Bugs caught: the swap moving the crop (image and depth out of register), touching depth or validity, applied
    to validation crops (the best checkpoint chosen on altered frames) or not applied at probability 1."""
    (tmp_path / "f").mkdir()
    write_image(tmp_path / "f" / "red.png", _scope_frame((230, 40, 30)))
    bank = StyleFrames(tmp_path / "f")
    sample = _sample()
    plain = DepthTransform((56, 70), MEAN, STD, train=True, augment=True)
    styled = DepthTransform((56, 70), MEAN, STD, train=True, augment=True, style=bank, style_prob=1.0)
    for seed in range(4):
        a, b = plain(sample, np.random.default_rng(seed)), styled(sample, np.random.default_rng(seed))
        for key in ("depth", "valid"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        red, green = (np.asarray(b["image"]).transpose(1, 2, 0) * STD + MEAN).mean(axis=(0, 1))[:2]
        assert red > green + 0.3  # the grey frame took the red frame's colour (jitter is ±20 %)
    for kwargs in (dict(train=False, augment=False), dict(train=True, augment=False),
                   dict(train=False, augment=True)):
        base = DepthTransform((56, 70), MEAN, STD, **kwargs)(sample, np.random.default_rng(1))
        other = DepthTransform((56, 70), MEAN, STD, style=bank, style_prob=1.0, **kwargs)(
            sample, np.random.default_rng(1))
        for key in base:
            np.testing.assert_array_equal(base[key].numpy(), other[key].numpy())
    with pytest.raises(ValueError, match="style_prob"):
        DepthTransform((14, 14), MEAN, STD, train=True, augment=True, style=bank, style_prob=1.5)


def _labeled_folder(root, n: int = 4):
    """A ``folder`` data set of ``n`` textured 48 x 64 frames with a depth ramp (5-50 mm)."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        write_image(root / "rgb" / f"{i}.png", textured(48, 64, i))
        np.save(root / "depth" / f"{i}.npy", np.linspace(5.0, 50.0, 48 * 64, dtype=np.float32).reshape(48, 64))
    return root


def test_cli_style_root_reaches_the_run(tmp_path):
    """Bug caught: ``train --style-root`` (or its probability and window flags) parsed but not passed on to the run,
    or the run failing on real frames of another size than the training crop."""
    frames = tmp_path / "real"
    frames.mkdir()
    for i in range(3):
        write_image(frames / f"{i}.jpg", _scope_frame((180 + 20 * i, 90, 60), 90, 120))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "SurgicalDepthTrainingLib", "train", "--dataset", "folder", "--root",
         str(_labeled_folder(tmp_path / "data")), "--output", str(out), "--style-root", str(frames),
         "--style-prob", "0.75", "--style-beta", "0.02", "0.05", "--max-steps", "1", "--batch-size", "2",
         "--input-size", "56", "--val-fraction", "0.25", "--device", "cpu"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["style_root"], saved["style_prob"], saved["style_beta"]) == (str(frames), 0.75, [0.02, 0.05])
    assert TrainConfig.from_json((out / "train_config.json").read_text()).style_beta == (0.02, 0.05)
    assert (out / "best.safetensors").is_file()
