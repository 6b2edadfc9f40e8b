"""Patches of other reflectance (``SceneConfig.albedo_patches``): brightness that is not depth, with exact depth."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthTrainingLib.photometric import LUMA
from SurgicalDepthTrainingLib.recipes import ALBEDO, clip_specs
from SurgicalDepthTrainingLib.synthetic import SceneConfig, SceneGenerator, render_clip
from SurgicalDepthTrainingLib.synthetic.textures import reflectance_patches


def test_reflectance_patches_are_soft_regions_of_other_brightness():
    """Bugs caught: strength 0 still changing the albedo; patches too few or everywhere (coverage outside 10–80 %);
    per-texel noise instead of regions (neighbours as different as the patch contrast); a darkening or brightening
    too weak to matter (no texel off by a factor 1.5); values <= 0; an unseeded draw (two scenes of one seed
    differing); and an out-of-range strength accepted."""
    shape, spacing = (500, 400), (0.3, 0.3)
    assert np.array_equal(reflectance_patches(np.random.default_rng(0), shape, spacing, 0.0), np.ones(shape + (3,)))
    gains = [reflectance_patches(np.random.default_rng(s), shape, spacing, 1.0) for s in range(6)]
    assert np.array_equal(gains[0], reflectance_patches(np.random.default_rng(0), shape, spacing, 1.0))
    for gain in gains:
        assert gain.dtype == np.float32 and gain.shape == shape + (3,) and gain.min() > 0
        log_luma = np.log(gain @ LUMA)
        changed = np.abs(log_luma) > np.log(1.15)
        assert 0.1 < changed.mean() < 0.8
        step = np.abs(np.diff(log_luma, axis=1))
        assert np.median(step[changed[:, 1:]]) < 0.05 * np.abs(log_luma[changed]).mean()
    assert max(np.abs(np.log(g @ LUMA)).max() for g in gains) > np.log(1.5)
    with pytest.raises(ValueError, match="strength"):
        reflectance_patches(np.random.default_rng(0), shape, spacing, 1.5)


@pytest.mark.parametrize("organ", ["colon", "surgical_field"])
def test_patches_change_the_pictures_not_the_depth(organ):
    """Bugs caught: drawing the patches from the scene's own generator (the geometry, the path and every clip of
    the shipped training set would change), a scene without patches that is not the scene it always was, and
    patches that never reach the rendered frames (the images equal, or only a few pixels differing)."""
    size = dict(organ=organ, seed=4, height=48, width=60, noise=0.0)
    plain, again, patched = (render_clip(n_frames=2, albedo_patches=s, **size) for s in (0.0, 0.0, 0.8))
    scenes = [SceneGenerator(SceneConfig(albedo_patches=s, **size)).scene for s in (0.0, 0.8)]
    surfaces = [s.surface.relief if organ == "colon" else s.surface.height for s in scenes]
    assert np.array_equal(*surfaces)
    for a, b, c in zip(plain, again, patched):
        assert np.array_equal(a["image"], b["image"])
        assert np.array_equal(a["depth"], c["depth"]) and np.array_equal(a["valid"], c["valid"])
        assert np.array_equal(a["pose"], c["pose"])
        luma = [f["image"].astype(np.float64) @ LUMA for f in (a, c)]
        changed = np.abs(np.log((luma[1] + 1) / (luma[0] + 1))) > np.log(1.15)
        assert changed[a["valid"]].mean() > 0.05


def test_albedo_patches_are_drawn_only_for_the_later_clips():
    """Bugs caught: drawing the strength from the shared generator (earlier clips change, the shipped stages no
    longer reproduce), patches for every clip, and strengths outside ``ALBEDO``'s range."""
    plain = clip_specs(30, seed=0, scope_light_from=8, polyps_from=16)
    patched = clip_specs(30, seed=0, scope_light_from=8, polyps_from=16, albedo_from=24)
    assert patched[:24] == plain[:24]
    lo, hi = ALBEDO["albedo_patches"]
    for a, b in zip(plain[24:], patched[24:]):
        assert {k: v for k, v in b.items() if k != "albedo_patches"} == a
        assert lo <= b["albedo_patches"] <= hi
        SceneConfig(**b)
    assert len({b["albedo_patches"] for b in patched[24:]}) == 6
    with pytest.raises(ValueError, match="albedo_patches"):
        SceneConfig(albedo_patches=-0.1)
