"""``surgical-depth predict`` end to end on real files: images, folders, mp4 video, formats and colour outputs."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_model import textured, tiny_model, write_clip

from SurgicalDepthLib.cli import CliError, predict
from SurgicalDepthLib.depth_io import load_depth, load_depth_sequence_nrrd
from SurgicalDepthLib.model import DepthModel
from SurgicalDepthLib.run_folder import MANIFEST_NAME
from SurgicalDepthLib.video import open_frames

SIZE = 70  # network input side (multiple of 14): keeps the tiny model fast on CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from SurgicalDepthLib.checkpoints import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", tiny_model())


@pytest.fixture(scope="module")
def model(checkpoint) -> DepthModel:
    from SurgicalDepthLib.loading import load_model

    return load_model(checkpoint, device="cpu")


def run_predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    predict.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", *argv])
    return args.func(args)


def test_images_and_folder(tmp_path, checkpoint, model, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = {"b2": textured(40, 56, 1), "b10": textured(40, 56, 2), "c": textured(30, 30, 3)}
    for name, rgb in images.items():
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    single = tmp_path / "single.jpg"
    cv2.imwrite(str(single), cv2.cvtColor(textured(33, 47, 4), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = tmp_path / "out"
    assert run_predict([str(folder), str(single), "--output", str(out), "--model", str(checkpoint),
                        "--input-size", str(SIZE), "--colormap", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(checkpoint) in printed and str(out) in printed
    for name, rgb in images.items():
        depth = load_depth(out / f"{name}_depth.npy")
        # same numbers as the Python API on the same frame
        np.testing.assert_allclose(depth, model.infer_image(rgb, SIZE), rtol=1e-5, atol=1e-5)
        color = cv2.imread(str(out / f"{name}_color.png"))
        assert color.shape == rgb.shape
    assert load_depth(out / "single_depth.npy").shape == (33, 47)
    assert len([p for p in out.iterdir() if p.name != MANIFEST_NAME]) == 8


def test_video_with_colormap_temporal_and_stride(tmp_path, checkpoint, model):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 7)
    decoded = list(open_frames(clip))
    out = tmp_path / "out"
    assert run_predict([str(clip), "--output", str(out), "--model", str(checkpoint), "--input-size", str(SIZE),
                        "--format", "png", "--colormap", "--temporal", "--stride", "2", "--batch-size", "3"]) == 0
    frames_dir = out / "clip"
    names = sorted(p.name for p in frames_dir.iterdir())
    assert names == ["000000.png", "000000_color.png", "000002.png", "000002_color.png", "000004.png",
                     "000004_color.png", "000006.png", "000006_color.png", "predictions.json"]
    maps = [load_depth(frames_dir / f"{i:06d}.png") for i in (0, 2, 4, 6)]
    assert all(m.shape == (48, 64) for m in maps)
    # first frame: the aligner's identity transform, so the PNG holds the raw prediction (up to the PNG step)
    raw0 = model.infer_image(decoded[0], SIZE)
    assert np.abs(maps[0] - raw0).max() <= raw0.max() / 65535 + 1e-5
    # Slicer sequence: same maps, times in seconds at the source fps
    seq, times = load_depth_sequence_nrrd(out / "clip_depth.seq.nrrd")
    assert seq.shape == (4, 48, 64)
    np.testing.assert_allclose(times, [0, 0.1, 0.2, 0.3])
    for m, s in zip(maps, seq):
        assert np.abs(m - s).max() <= s.max() / 65535 + 1e-5
    # side-by-side video: input | depth colours, half the frame rate
    video = open_frames(out / "clip_depth.mp4")
    assert video.frame_count == 4 and video.size == (48, 128) and video.fps == pytest.approx(10.0)
    first = next(iter(video))
    assert np.abs(first[:, :64].astype(int) - decoded[0].astype(int)).mean() < 12
    assert not any(p.name.startswith(".") for p in out.rglob("*") if p.name != MANIFEST_NAME)  # no temporaries


def test_max_frames_and_video_folder(tmp_path, checkpoint):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"f{i}.png"), textured(28, 42, i))
    out = tmp_path / "out"
    assert run_predict([str(folder), "--video", "--max-frames", "3", "--output", str(out), "--model",
                        str(checkpoint), "--input-size", str(SIZE), "--format", "tiff"]) == 0
    assert sorted(p.name for p in (out / "seq").iterdir()) == ["000000.tiff", "000001.tiff", "000002.tiff",
                                                                 "predictions.json"]


def test_errors(tmp_path, capsys, checkpoint):
    common = ["--output", str(tmp_path / "out"), "--model", str(checkpoint), "--input-size", str(SIZE)]
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        run_predict([str(tmp_path / "nothere.mp4"), *common])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported suffix"):
        run_predict([str(tmp_path / "notes.txt"), *common])
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "same.png"), textured(20, 20, 0))
    with pytest.raises(CliError, match="both write same_depth"):
        run_predict([str(tmp_path / "a"), str(tmp_path / "b"), *common])
    with pytest.raises(SystemExit):  # argparse rejects it before anything runs
        run_predict([str(tmp_path / "a"), "--output", str(tmp_path / "o"), "--input-size", "100"])
    assert "must be a positive multiple of 14, got 100" in capsys.readouterr().err


def test_registered_in_main_cli(tmp_path, checkpoint):
    from SurgicalDepthLib import cli

    cv2.imwrite(str(tmp_path / "x.png"), textured(20, 30, 0))
    assert cli.main(["predict", str(tmp_path / "x.png"), "--output", str(tmp_path / "o"), "--model",
                     str(checkpoint), "--input-size", str(SIZE)]) == 0
    assert (tmp_path / "o" / "x_depth.npy").is_file()
    assert cli.main(["predict", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o")]) == 2


def test_intrinsics_correct_maps_to_the_lens_and_a_misfit_writes_nothing(tmp_path, capsys):
    """Catches: --intrinsics ignored by predict (a calibrated wide-angle scope's maps left uncorrected) or applied to
    another frame size without rescaling; a calibration of another aspect ratio found only after maps were written."""
    import dataclasses
    import json

    import SurgicalDepthLib as sd
    from SurgicalDepthLib.checkpoints import save_checkpoint
    from SurgicalDepthLib.cli import main

    lensed = tiny_model(6)
    lensed.config = dataclasses.replace(lensed.config, reference_fov_deg=100.0)
    ckpt = save_checkpoint(tmp_path / "lensed.safetensors", lensed)
    rgb = textured(40, 56, 7)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    calib = tmp_path / "scope.json"  # calibrated at twice the frame size: rescaled to it
    calib.write_text(json.dumps(sd.Intrinsics.from_fov(112, 80, 150.0).to_dict()))
    out = tmp_path / "out"
    assert run_predict([str(image), "--output", str(out), "--model", str(ckpt), "--input-size", str(SIZE),
                        "--intrinsics", str(calib), "--fov-mask", "none"]) == 0
    model = sd.load_model(ckpt, device="cpu")
    expected = next(sd.depth_stream(model, [rgb], input_size=SIZE, fov_mask=None,
                                    intrinsics=sd.Intrinsics.from_fov(56, 40, 150.0))).prediction
    np.testing.assert_allclose(load_depth(out / "frame_depth.npy"), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, model.infer_image(rgb, SIZE), rtol=1e-2)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 3)  # its frames are not 7:5
    capsys.readouterr()
    rc = main(["predict", str(clip), "--output", str(tmp_path / "bad"), "--model", str(ckpt), "--device", "cpu",
               "--intrinsics", str(calib)])
    err = capsys.readouterr().err
    assert rc == 2 and "aspect ratio" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
