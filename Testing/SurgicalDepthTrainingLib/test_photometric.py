"""The endoscope photometry augmentation (``SurgicalDepthTrainingLib.photometric``) and its use in training data."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthTrainingLib import photometric as ph
from SurgicalDepthTrainingLib.training import DepthTransform
from SurgicalDepthTrainingLib.training import TrainConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _ramp() -> np.ndarray:
    return np.repeat(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :, None], 3, axis=2)


@pytest.mark.parametrize("curve", [
    lambda x: ph.gamma_curve(x, 0.45), lambda x: ph.gamma_curve(x, 1.8), lambda x: ph.log_curve(x, 3.0),
    lambda x: ph.log_curve(x, 60.0), lambda x: ph.black_lift(x, 0.15)])
def test_tone_curves_keep_brightness_order(curve):
    """Bug caught: a tone curve that is not strictly increasing (it would swap which of two pixels is brighter,
    teaching the model a wrong near/far order instead of only removing the brightness magnitude)."""
    out = curve(_ramp())[0, :, 0]
    assert out.dtype == np.float32
    assert np.all(np.diff(out) > 0)
    assert 0.0 <= out.min() and out.max() <= 1.0 + 1e-6


def test_log_curve_lifts_the_dark_lumen():
    """Bug caught: the 'wide dynamic range' curve compressing the darks instead of lifting them (a sign or
    argument mix-up leaves the brightness-to-depth cue as steep as the renderer's)."""
    x = np.full((1, 1, 3), 0.05, np.float32)
    assert ph.log_curve(x, 30.0)[0, 0, 0] > 0.2
    assert ph.gamma_curve(x, 0.5)[0, 0, 0] == pytest.approx(0.05 ** 0.5, rel=1e-5)


def test_local_adaptation_flattens_large_scale_brightness_and_keeps_texture():
    """Bug caught: local adaptation with the wrong exponent sign (it would steepen the near-bright/far-dark
    gradient) or one that blurs away the fine texture the network should read depth from."""
    h, w = 128, 128
    gradient = np.linspace(0.9, 0.1, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    checker = 1.0 + 0.1 * np.where((np.arange(h)[:, None] // 2 + np.arange(w)[None, :] // 2) % 2 == 0, 1, -1)
    image = np.repeat((gradient * checker)[..., None], 3, axis=2).astype(np.float32)
    out = ph.local_adaptation(image, amount=0.8, sigma_fraction=0.25)
    ratio_before = image[:16].mean() / image[-16:].mean()
    ratio_after = out[:16].mean() / out[-16:].mean()
    assert ratio_before > 5.0 and ratio_after < 0.5 * ratio_before
    # along a row the gradient is constant: the checker's steps keep their sign (fine detail kept)
    step_in, step_out = np.diff(image[..., 0], axis=1), np.diff(out[..., 0], axis=1)
    edges = np.abs(step_in) > 1e-3
    assert edges.sum() > 1000 and np.all(np.sign(step_in[edges]) == np.sign(step_out[edges]))
    np.testing.assert_array_equal(ph.local_adaptation(image, 0.0, 0.25) > 0, image > 0)


def test_augment_photometry_is_seeded_bounded_and_varied():
    """Bug caught: draws from a global generator (training not reproducible on resume) or an augmentation that
    returns values outside [0, 1] or never changes the image."""
    image = np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)
    a = ph.augment_photometry(image, np.random.default_rng(7))
    b = ph.augment_photometry(image, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    changed = [not np.allclose(ph.augment_photometry(image, np.random.default_rng(s)), image, atol=1e-3)
               for s in range(20)]
    assert sum(changed) >= 15


def test_scope_mask_blanks_the_corners_and_keeps_the_centre():
    """Bug caught: a scope border larger than the frame (nothing blanked: the model never learns to ignore black
    borders) or one that swallows the centre."""
    for seed in range(40):
        inside = ph.scope_mask(90, 120, np.random.default_rng(seed))
        assert inside.dtype == bool and inside.shape == (90, 120)
        assert inside[45, 60] and inside[45, 30] and inside[20, 60]
        assert not inside[0, 0] and not inside[-1, -1] and not inside[0, -1] and not inside[-1, 0]


def test_jpeg_round_trip_is_close_but_lossy():
    """Bug caught: channels swapped in the RGB/BGR round trip (a red image coming back blue)."""
    image = np.zeros((32, 32, 3), np.float32)
    image[..., 0] = 0.8
    image[8:24, 8:24, 1] = 0.5
    out = ph.jpeg(image, 50)
    assert out[..., 0].mean() > 0.7 and out[..., 2].mean() < 0.1
    assert not np.array_equal(out, image)


def _sample() -> dict:
    rng = np.random.default_rng(3)
    return {"image": rng.integers(0, 256, (70, 90, 3), dtype=np.uint8),
            "depth": rng.uniform(5, 80, (70, 90)).astype(np.float32), "valid": np.ones((70, 90), bool)}


def test_depth_transform_photometric_changes_only_the_image_and_invalidates_the_border():
    """Bug caught: the augmentation moving the depth crop (image and depth out of register) or leaving the blacked-
    out scope border valid (the model would be trained to predict tissue depth on black)."""
    sample = _sample()
    plain = DepthTransform((56, 70), MEAN, STD, train=True, augment=True)
    look = DepthTransform((56, 70), MEAN, STD, train=True, augment=True, photometric=1.0)
    borders = 0
    for seed in range(12):
        a = plain(sample, np.random.default_rng(seed))
        b = look(sample, np.random.default_rng(seed))
        np.testing.assert_array_equal(a["depth"].numpy(), b["depth"].numpy())
        assert not bool((b["valid"] & ~a["valid"]).any())
        blank = ~b["valid"].numpy()
        if blank.any():
            borders += 1
            black = (np.asarray(b["image"]).transpose(1, 2, 0) * STD + MEAN)[blank]
            assert np.abs(black).max() < 0.25  # black before the colour jitter's brightness/contrast
    assert borders >= 2


def test_photometric_never_touches_validation_or_unaugmented_data():
    """Bug caught: the endoscope look applied to validation crops (the best checkpoint would be chosen on
    augmented frames)."""
    sample = _sample()
    for kwargs in (dict(train=False, augment=False), dict(train=True, augment=False)):
        base = DepthTransform((56, 70), MEAN, STD, **kwargs)(sample, np.random.default_rng(1))
        look = DepthTransform((56, 70), MEAN, STD, photometric=1.0, **kwargs)(sample, np.random.default_rng(1))
        for key in base:
            np.testing.assert_array_equal(base[key].numpy(), look[key].numpy())


def test_photometric_probability_is_validated():
    """Bug caught: a probability outside [0, 1] silently accepted (1.5 would mean 'always' without saying so)."""
    with pytest.raises(ValueError, match="^photometric"):
        TrainConfig(photometric=1.5)
    with pytest.raises(ValueError, match="photometric"):
        DepthTransform((14, 14), MEAN, STD, train=True, augment=True, photometric=-0.1)
