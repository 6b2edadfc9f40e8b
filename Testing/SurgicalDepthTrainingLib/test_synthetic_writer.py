"""``write_synthetic`` on-disk layout (real files read back with OpenCV/json) and the ``synth`` command."""
from __future__ import annotations

import argparse
import json
import os
import stat

import cv2
import numpy as np
import pytest

from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthTrainingLib.commands import synth
from SurgicalDepthTrainingLib.synthetic import SceneConfig, render_clip, write_synthetic
from SurgicalDepthTrainingLib.synthetic.writer import encode_depth


def _read_layout(root):
    meta = json.loads((root / "meta.json").read_text())
    intr = json.loads((root / "intrinsics.json").read_text())
    lines = (root / "poses.txt").read_text().splitlines()
    assert lines[0].startswith("#")
    poses = {int(l.split()[0]): np.array([float(x) for x in l.split()[1:]]).reshape(4, 4) for l in lines[1:]}
    return meta, intr, poses


def test_round_trip(tmp_path):
    """Also catches: depth PNGs without save_depth's scale chunk, which sd.load_depth refuses ("no
    'SurgicalDepth' text chunk"), so the project's own synthetic depth could not be read by its own API."""
    from SurgicalDepthLib import load_depth

    cfg = SceneConfig(organ="colon", height=40, width=48, seed=1, fisheye=True, fov_deg=140.0)
    frames = render_clip(**{k: v for k, v in cfg.to_dict().items() if k not in ("organ", "seed")},
                         organ="colon", seed=1, n_frames=3)
    root = write_synthetic(frames, tmp_path / "seq", {"organ": "colon", "seed": 1, "generator": cfg.to_dict()})
    meta, intr, poses = _read_layout(root)
    assert meta["format"] == "surgical-depth-synthetic" and meta["version"] == 1 and meta["frames"] == 3
    assert meta["depth_scale_mm"] == 0.01 and meta["organ"] == "colon" and meta["seed"] == 1
    assert SceneConfig.from_dict(meta["generator"]) == cfg
    assert Intrinsics.from_dict(intr) == frames[0]["intrinsics"]
    assert intr["distortion"]["model"] == "fisheye"
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(poses[i], f["pose"])  # repr() round-trips float64 exactly
        rgb = cv2.cvtColor(cv2.imread(str(root / "rgb" / f"{i:06d}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(rgb, f["image"])
        raw = cv2.imread(str(root / "depth" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == f["depth"].shape
        np.testing.assert_array_equal(raw > 0, f["valid"])
        assert np.abs(raw[f["valid"]] * 0.01 - f["depth"][f["valid"]].astype(np.float64)).max() <= 0.005 + 1e-6
        np.testing.assert_allclose(load_depth(root / "depth" / f"{i:06d}.png"), raw * 0.01, rtol=1e-6)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_encode_depth_range_and_invalid():
    depth = np.array([[0.004, 1.0, 655.35, 700.0]], np.float32)
    valid = np.array([[True, False, True, True]])
    np.testing.assert_array_equal(encode_depth(depth, valid), [[0, 0, 65535, 0]])


def test_interrupted_write_leaves_nothing(tmp_path):
    frames = render_clip("colon", n_frames=2, height=24, width=32)

    def broken():
        yield frames[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic(broken(), tmp_path / "seq", {"organ": "colon", "seed": 0, "generator": {}})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="meta must contain 'generator'"):
        write_synthetic(frames, tmp_path / "x", {"organ": "colon", "seed": 0})
    bad = dict(frames[1], image=frames[1]["image"].astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_synthetic([frames[0], bad], tmp_path / "y", {"organ": "colon", "seed": 0, "generator": {}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_written_folder_mode_follows_the_umask(tmp_path, umask):
    """Catches a data set made private (a ``mkdtemp``-style 0o700 folder) or a writer that sets the umask itself:
    the sequence folder gets ``0o777 & ~umask`` and its files ``0o666 & ~umask``, as ``mkdir``/``open`` give."""
    frames = render_clip("colon", n_frames=1, height=24, width=32)
    previous = os.umask(umask)
    try:
        root = write_synthetic(frames, tmp_path / "seq", {"organ": "colon", "seed": 0, "generator": {}})
        assert os.umask(umask) == umask, "write_synthetic changed the process umask"
    finally:
        os.umask(previous)
    assert stat.S_IMODE(root.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((root / "rgb").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((root / "meta.json").stat().st_mode) == 0o666 & ~umask


def _parser():
    parser = argparse.ArgumentParser(prog="surgical-depth")
    synth.register(parser.add_subparsers(dest="command"))
    return parser


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "clip"
    args = _parser().parse_args(["synth", "--output", str(out), "--frames", "2", "--seed", "4",
                                 "--organ", "stomach", "--size", "32x40"])
    assert args.func(args) == 0
    assert str(out) in capsys.readouterr().out
    meta, intr, poses = _read_layout(out)
    assert meta["organ"] == "stomach" and meta["seed"] == 4 and len(poses) == 2
    assert (intr["height"], intr["width"]) == (32, 40) and intr["distortion"] is None
    assert len(list((out / "rgb").glob("*.png"))) == 2 and len(list((out / "depth").glob("*.png"))) == 2
    with pytest.raises(FileExistsError, match="already exists"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["synth", "--output", str(out), "--size", "32by40"])


def test_synth_command_with_polyps_and_a_close_up(tmp_path):
    """Bugs caught: --polyps / --close-up / --albedo-patches parsed but not passed to the scene (the clip has no
    polyp, looks down the lumen, or has the plain albedo), or not recorded in the clip's metadata (the clip could
    not be re-rendered from it)."""
    from SurgicalDepthTrainingLib.synthetic import SceneGenerator

    out = tmp_path / "clip"
    args = _parser().parse_args(["synth", "--output", str(out), "--frames", "2", "--seed", "21", "--size", "40x48",
                                 "--polyps", "3", "--close-up", "--albedo-patches", "0.7"])
    assert args.func(args) == 0
    meta, _, poses = _read_layout(out)
    assert meta["generator"]["polyps"] == 3.0 and meta["generator"]["close_up"] is True
    assert meta["generator"]["albedo_patches"] == 0.7
    expected = SceneGenerator(SceneConfig.from_dict(meta["generator"])).trajectory(2)
    plain = SceneGenerator(SceneConfig(organ="colon", seed=21, height=40, width=48, polyps=3.0)).trajectory(2)
    written = np.stack([poses[k] for k in sorted(poses)])
    assert np.allclose(written, expected, atol=1e-5)
    assert not np.allclose(expected, plain)
