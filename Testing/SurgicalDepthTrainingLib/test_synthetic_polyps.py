"""Sessile polyps on the lumen wall: exact depth over a dome, scenes without polyps unchanged, sizes and tints."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthTrainingLib.recipes import clip_specs
from SurgicalDepthTrainingLib.synthetic import SceneConfig, SceneGenerator
from SurgicalDepthTrainingLib.synthetic.polyps import (BASE_RADIUS_MM, MAX_HEIGHT_FRACTION, Polyp, dome,
                                                       draw_polyps, polyp_tables, tint_albedo)
from SurgicalDepthTrainingLib.synthetic.trajectory import look_at


def test_dome_profile_values_and_smooth_rim():
    """Bugs caught: a profile that is not 1 at the top or 0 at the base (the height parameter would lie), a crease
    at the rim (non-zero slope where the dome meets the wall), or a dome that leaks beyond its base."""
    base = 4.0
    assert dome(np.array(0.0), base) == pytest.approx(1.0)
    assert dome(np.array(0.5 * base), base) == pytest.approx(1 - 3 * 0.25 ** 2 + 2 * 0.25 ** 3)
    assert dome(np.array([base, 1.5 * base, 10 * base]), base).tolist() == [0.0, 0.0, 0.0]
    eps = 1e-4
    assert abs(float(dome(np.array(base - eps), base)) / eps) < 1e-3       # zero slope at the rim (a crease: ~1)
    x = np.linspace(0, base, 20001)
    slope = np.abs(np.diff(dome(x, base))) / (x[1] - x[0])
    assert slope.max() * base == pytest.approx(12 * 0.6 ** 1.5 * 0.4, rel=1e-3)  # 2.23 / base at d = 0.775 base


def test_draw_polyps_count_sizes_and_height_cap():
    """Bugs caught: the count not scaling with the density or the length (Poisson mean per 100 mm), sizes outside
    the documented ranges, and domes taller than the cap (a dome across the lumen axis breaks the tube's field)."""
    rng = np.random.default_rng(0)
    counts = [len(draw_polyps(rng, 2.0, (0.0, 300.0), 12.0)) for _ in range(400)]
    assert np.mean(counts) == pytest.approx(6.0, abs=0.4)
    polyps = draw_polyps(np.random.default_rng(1), 20.0, (-50.0, 450.0), 12.0)
    assert all(-50.0 <= p.z_mm <= 450.0 and -np.pi <= p.theta <= np.pi for p in polyps)
    assert all(BASE_RADIUS_MM[0] <= p.base_mm <= BASE_RADIUS_MM[1] for p in polyps)
    assert max(p.height_mm for p in polyps) == pytest.approx(MAX_HEIGHT_FRACTION * 12.0)
    assert draw_polyps(np.random.default_rng(1), 0.0, (0.0, 500.0), 12.0) == []
    with pytest.raises(ValueError, match="polyps per 100 mm"):
        draw_polyps(rng, -1.0, (0.0, 10.0), 12.0)


def test_polyp_table_wraps_around_the_angle_seam():
    """Bug caught: the angular distance not wrapped (a polyp at θ ≈ π is cut in half where the table's columns
    wrap from π to -π)."""
    z = np.arange(0.0, 40.0, 0.25)
    p = Polyp(z_mm=20.0, theta=np.pi - 0.01, base_mm=5.0, height_mm=3.0, tint=(1.0, 1.0, 1.0))
    table = polyp_tables([p], z, 720, 20.0)
    row = table[80]
    assert row.max() == pytest.approx(3.0, abs=0.01)
    assert row[:10].min() > 2.0 and row[-10:].min() > 2.0  # both sides of the seam are on the dome


def test_tint_is_full_at_the_top_and_absent_off_the_dome():
    """Bugs caught: the tint applied everywhere or not at all, or blended with the wrong weight at the top."""
    albedo = np.full((200, 400, 3), 0.5, np.float32)
    p = Polyp(z_mm=30.0, theta=0.0, base_mm=6.0, height_mm=4.0, tint=(1.2, 0.9, 1.0))
    out = tint_albedo(albedo, [p], z0=0.0, step_z=0.3, radius_mm=20.0)
    top = out[100, 200]
    assert top.tolist() == pytest.approx([0.6, 0.45, 0.5], abs=1e-3)
    half = out[110, 200, 0]  # 3 mm from the top along z: blended with sqrt of the dome (0.84375) there
    assert half == pytest.approx(0.5 * (1 + 0.2 * np.sqrt(0.84375)), abs=1e-3)
    assert np.array_equal(out[:60], albedo[:60]) and np.array_equal(out[:, :100], albedo[:, :100])
    assert np.array_equal(albedo, np.full((200, 400, 3), 0.5, np.float32))  # input untouched


def test_scene_without_polyps_is_unchanged_and_polyps_only_raise_the_wall():
    """Bugs caught: drawing polyps from the scene's own generator (every scene of the shipped training set would
    change), polyps on a scene that asks for none, and a dome that lowers the wall or moves it off its footprint."""
    plain = SceneGenerator(SceneConfig(organ="colon", seed=3, height=40, width=48))
    again = SceneGenerator(SceneConfig(organ="colon", seed=3, height=40, width=48, polyps=0.0))
    bumpy = SceneGenerator(SceneConfig(organ="colon", seed=3, height=40, width=48, polyps=4.0))
    assert "polyps" not in plain.scene.params and np.array_equal(plain.scene.surface.relief,
                                                                  again.scene.surface.relief)
    assert np.array_equal(plain.trajectory(4), bumpy.trajectory(4))
    rise = plain.scene.surface.relief - bumpy.scene.surface.relief
    assert rise.min() >= -1e-12 and rise.max() > 1.0
    polyps = [Polyp(**p) for p in bumpy.scene.params["polyps"]]
    assert len(polyps) >= 10
    z0, dz = bumpy.scene.surface.z0, bumpy.scene.surface.dz
    footprint = polyp_tables(polyps, z0 + dz * np.arange(rise.shape[0]), rise.shape[1],
                             bumpy.scene.params["radius_mm"]) > 0
    assert np.all(rise[~footprint] == 0)
    scene = bumpy.scene
    rows, cols = scene.albedo.shape[:2]
    tinted = polyp_tables(polyps, scene.tex_origin[0] + scene.tex_step[0] * np.arange(rows), cols,
                          bumpy.scene.params["radius_mm"]) > 0
    assert np.array_equal(scene.albedo[~tinted], plain.scene.albedo[~tinted])
    assert not np.array_equal(scene.albedo[tinted], plain.scene.albedo[tinted])


def test_depth_over_a_polyp_top_is_exact():
    """Bug caught: the dome's height not reaching the surface the ray caster sees (a mismatch between the table the
    field reads and the polyp's parameters): a camera on the lumen axis looking straight at a polyp's top sees the
    wall nearer by exactly its height (scaled with the local lumen radius, like every fold)."""
    size = 33
    gens = [SceneGenerator(SceneConfig(organ="colon", seed=11, height=size, width=size, fov_deg=20.0, noise=0.0,
                                       polyps=d)) for d in (0.0, 4.0)]
    surface, params = gens[1].scene.surface, gens[1].scene.params
    p = max((Polyp(**q) for q in params["polyps"] if 50.0 < q["z_mm"] < 300.0), key=lambda q: q.base_mm)
    centre = surface.centreline(np.array([p.z_mm]))[0]
    pose = look_at(centre, np.array([np.cos(p.theta), np.sin(p.theta), 0.0]), np.array([0.0, 0.0, 1.0]))
    plain, bumpy = (g.geometry(pose)[0][size // 2, size // 2] for g in gens)
    scale = float(surface.radius(np.array([p.z_mm]))[0]) / params["radius_mm"]
    assert plain - bumpy == pytest.approx(p.height_mm * scale, abs=0.02)


def test_polyps_are_drawn_only_for_the_later_clips():
    """Bugs caught: drawing the polyp density from the shared generator (earlier clips change, the shipped stages
    no longer reproduce) or for every clip; close-ups for none or all of the polyp clips."""
    plain = clip_specs(30, seed=0, scope_light_from=8)
    with_polyps = clip_specs(30, seed=0, scope_light_from=8, polyps_from=20)
    assert with_polyps[:20] == plain[:20]
    for a, b in zip(plain[20:], with_polyps[20:]):
        assert {k: v for k, v in b.items() if k not in ("polyps", "close_up")} == a
        assert 1.5 <= b["polyps"] <= 5.0
        SceneConfig(**b)
    assert 0 < sum(b["close_up"] for b in with_polyps[20:]) < 10
    with pytest.raises(ValueError, match="polyps"):
        SceneConfig(polyps=-1.0)


def _polyp_tops(surface, polyps: list[dict]) -> np.ndarray:
    z = np.array([p["z_mm"] for p in polyps])
    out = np.stack([np.cos([p["theta"] for p in polyps]), np.sin([p["theta"] for p in polyps]), 0 * z], axis=1)
    return surface.centreline(z) + (surface.radius(z) - np.array([p["height_mm"] for p in polyps]))[:, None] * out


def test_close_up_looks_at_one_polyp_while_approaching_it():
    """Bugs caught: the close-up path looking down the lumen instead of at its polyp, moving away from it or
    outside the documented 8-45 mm approach, leaving the lumen, or aiming at different polyps in one clip."""
    gen = SceneGenerator(SceneConfig(organ="colon", seed=21, height=40, width=48, polyps=3.0, close_up=True))
    surface, polyps = gen.scene.surface, gen.scene.params["polyps"]
    poses = gen.trajectory(8)
    tops = _polyp_tops(surface, polyps)
    rays = tops[None, :, :] - poses[:, None, :3, 3]                      # [frames, polyps, 3]
    dist = np.linalg.norm(rays, axis=2)
    angle = np.degrees(np.arccos(np.clip(np.einsum("fpk,fk->fp", rays, poses[:, :3, 2]) / dist, -1, 1)))
    target = np.argmin(angle, axis=1)
    assert len(set(target.tolist())) == 1
    k = int(target[0])
    assert angle[:, k].max() < 6.0                                   # ±4° wobble on each image axis
    ahead = polyps[k]["z_mm"] - poses[:, 2, 3]
    assert np.all(np.diff(ahead) < 0) and 25.0 <= ahead[0] <= 45.0 and 8.0 <= ahead[-1] <= 18.0
    assert np.all(surface.field(poses[:, :3, 3]) < 0)                # inside the lumen


def test_close_up_without_polyps_keeps_the_lumen_path():
    """Bug caught: ``close_up`` on a scene with no polyp (or an organ without a lumen) failing or changing the
    clip, instead of the plain path down the lumen."""
    for organ in ("colon", "surgical_field"):
        plain = SceneGenerator(SceneConfig(organ=organ, seed=4, height=40, width=48))
        close = SceneGenerator(SceneConfig(organ=organ, seed=4, height=40, width=48, close_up=True))
        assert np.array_equal(plain.trajectory(5), close.trajectory(5))
