"""``surgical-depth predict`` end to end on real files: images, folders, mp4 video, formats and colour outputs."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_model import textured, tiny_model, write_clip
from video_files import cut_in_half, mjpeg_avi

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
    # names that differ only in case are one file on Windows and macOS: one map would silently replace the other
    cv2.imwrite(str(tmp_path / "b" / "Frame1.png"), textured(20, 20, 1))
    cv2.imwrite(str(tmp_path / "a" / "frame1.jpg"), textured(20, 20, 2))
    with pytest.raises(CliError, match="differ only in case"):
        run_predict([str(tmp_path / "a" / "frame1.jpg"), str(tmp_path / "b" / "Frame1.png"), *common])
    clips = [tmp_path / name for name in ("Clip.avi", "clip.avi")]
    for clip in clips:
        write_clip(clip, 2)
    with pytest.raises(CliError, match="several inputs would write outputs named"):
        run_predict([*map(str, clips), *common])
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


def test_written_maps_name_their_unit(tmp_path, checkpoint):
    """The unit stored in a PNG map's text chunk, a NRRD map's and a sequence NRRD's ``depth unit`` field and a TIFF
    map's ImageDescription is what the values are: ``disparity`` for a relative model, the metric head's unit (here
    ``mm``) for a metric one. Catches: the output kind written as the unit (``"depth"`` is no unit), so a metric
    map's unit was recorded nowhere; NRRD and TIFF maps written without any unit."""
    from PIL import Image

    from SurgicalDepthLib.checkpoints import save_checkpoint

    metric = save_checkpoint(tmp_path / "metric.safetensors", tiny_model(1, head="metric"))
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), textured(40, 56, 5)[..., ::-1])
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 2)
    for model_file, unit in ((checkpoint, "disparity"), (metric, "mm")):
        out = tmp_path / unit
        assert run_predict([str(image), str(clip), "--output", str(out), "--model", str(model_file), "--input-size",
                            str(SIZE), "--format", "png", "--colormap"]) == 0
        for png_file in (out / "frame_depth.png", out / "clip" / "000001.png"):
            with Image.open(png_file) as png:
                assert json.loads(png.text["SurgicalDepth"])["unit"] == unit
        header = (out / "clip_depth.seq.nrrd").read_bytes().split(b"\n\n", 1)[0].decode()
        assert f"depth unit:={unit}" in header.splitlines()
        for fmt in ("nrrd", "tiff"):
            assert run_predict([str(image), "--output", str(out / fmt), "--model", str(model_file), "--input-size",
                                str(SIZE), "--format", fmt]) == 0
        header = (out / "nrrd" / "frame_depth.nrrd").read_bytes().split(b"\n\n", 1)[0].decode()
        assert f"depth unit:={unit}" in header.splitlines()
        with Image.open(out / "tiff" / "frame_depth.tiff") as tiff:
            assert json.loads(tiff.tag_v2[270])["unit"] == unit


def _scope_frame(h: int, w: int, seed: int) -> np.ndarray:
    """Tissue inside a centred disc on a black scope border."""
    rgb = textured(h, w, seed)
    v, u = np.mgrid[0:h, 0:w]
    rgb[(u - (w - 1) / 2) ** 2 + (v - (h - 1) / 2) ** 2 > (0.45 * min(h, w)) ** 2] = 0
    return rgb


def test_each_image_gets_its_own_field_of_view_at_any_batch_size(tmp_path, checkpoint):
    """Separate images are unrelated photos: a scope frame keeps its black border out of its map, a frame of tissue
    to the edges keeps every pixel, whatever ``--batch-size``. Catches: the field of view detected over a whole batch
    (per-pixel maximum) and applied to each image in it — at batch 2 the scope frame's border got depth and no mask
    (and at GPU's default batch of 4 without asking)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_scope.png"), _scope_frame(64, 80, 1)[..., ::-1])
    cv2.imwrite(str(folder / "b_full.png"), textured(64, 80, 2)[..., ::-1])
    cv2.imwrite(str(folder / "c_scope.png"), _scope_frame(64, 80, 3)[..., ::-1])
    maps = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        assert run_predict([str(folder), "--output", str(out), "--model", str(checkpoint), "--input-size", str(SIZE),
                            "--batch-size", str(batch)]) == 0
        maps[batch] = {n: load_depth(out / f"{n}_depth.npy") for n in ("a_scope", "b_full", "c_scope")}
        assert sorted(p.name for p in out.glob("*_fov.png")) == ["a_scope_fov.png", "c_scope_fov.png"]
    for name in ("a_scope", "c_scope"):
        assert 0.2 < np.isnan(maps[3][name]).mean() < 0.6 and np.isnan(maps[3][name][0, 0])
        np.testing.assert_array_equal(np.isnan(maps[1][name]), np.isnan(maps[3][name]))
    assert not np.isnan(maps[3]["b_full"]).any() and not np.isnan(maps[1]["b_full"]).any()
    for name in maps[1]:
        np.testing.assert_allclose(maps[1][name], maps[3][name], rtol=1e-4, atol=1e-5)


def test_dot_folder_as_video_is_named_after_the_folder(tmp_path, checkpoint, monkeypatch):
    """Catches: ``predict . --video`` (and ``..``) naming its outputs after ``Path('.').name`` (empty: the maps
    were refused as "/000000.npy is outside the output folder")."""
    frames = tmp_path / "clip_frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i:03d}.png"), textured(40, 56, i))
    monkeypatch.chdir(frames)
    out = tmp_path / "out"
    assert run_predict([".", "--video", "--output", str(out), "--model", str(checkpoint), "--input-size",
                        str(SIZE)]) == 0
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == ["000000.npy", "000001.npy", "predictions.json"]
    monkeypatch.chdir(frames / "..")
    assert run_predict(["clip_frames/../clip_frames/*.png", "--video", "--output", str(tmp_path / "g"), "--model",
                        str(checkpoint), "--input-size", str(SIZE)]) == 0
    assert (tmp_path / "g" / "clip_frames" / "predictions.json").is_file()


def test_a_cut_video_is_predicted_to_its_real_end(tmp_path, checkpoint):
    """A video cut in half (a recording stopped by a crash, a file still being written): ``predict`` maps every
    frame that decodes, writes ``predictions.json``, warns naming the file, and its progress ends at
    the real count. Catches: the run failing at the cut (exit 2) after predicting half of the frames, the writer
    thread's queue dropped at the end, and a progress stage left at 12/24 (the Slicer panel waits for its end)."""
    whole = tmp_path / "whole.avi"
    mjpeg_avi(whole, [textured(48, 64, i) for i in range(24)], fps=20.0)
    cut = cut_in_half(whole, tmp_path / "cut.avi")
    decoded = sum(1 for _ in open_frames(cut))
    assert 3 <= decoded < 24
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", "predict", str(cut), "--output", str(out),
                           "--model", str(checkpoint), "--input-size", str(SIZE), "--batch-size", "4",
                           "--progress", "jsonl"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(cut) in done.stderr and "announced 24 frames" in done.stderr
    written = sorted(p.name for p in (out / "cut").glob("*.npy"))
    assert written == [f"{i:06d}.npy" for i in range(decoded)]
    assert (out / "cut" / "predictions.json").is_file()
    progress = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] == decoded


def test_colour_video_of_a_4096_pixel_wide_input(tmp_path, checkpoint):
    """The side-by-side colour video of a DCI-4K-wide input is 8192 px wide, more than mp4v encodes. Catches:
    ``--colormap`` failing on every input ≥ 4096 px wide ("OpenCV cannot write mp4v video"), after the model
    loaded — the panel is scaled to 8190 px, aspect kept."""
    from SurgicalDepthLib.cli.predict import side_by_side_size

    assert side_by_side_size(48, 64) == (128, 48)
    assert side_by_side_size(2160, 4096) == (8190, 2160)
    clip = tmp_path / "wide.mp4"
    write_clip(clip, 2, h=512, w=4096)
    out = tmp_path / "out"
    assert run_predict([str(clip), "--output", str(out), "--model", str(checkpoint), "--input-size", "14",
                        "--colormap"]) == 0
    video = cv2.VideoCapture(str(out / "wide_depth.mp4"))
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (8190, 512)
    assert video.read()[0] and video.read()[0]
    video.release()


def test_model_hints_from_the_command_line(tmp_path, model):
    """An official-layout file without its official name needs the version, which only ``sd.load_model(version=)``
    could give. Catches: the CLI with no way to pass it (the error told users to "pass version=" to a function they
    were not calling); ``--model-version`` not reaching the loader."""
    from SurgicalDepthLib.checkpoints import CheckpointError, save_official

    weights = save_official(tmp_path / "weights.pth", model)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), textured(40, 56, 6)[..., ::-1])
    common = [str(image), "--model", str(weights), "--input-size", str(SIZE)]
    with pytest.raises(CheckpointError, match="--model-version in the CLI"):
        run_predict([*common, "--output", str(tmp_path / "none")])
    assert run_predict([*common, "--output", str(tmp_path / "v2"), "--model-version", "v2"]) == 0
    np.testing.assert_allclose(load_depth(tmp_path / "v2" / "frame_depth.npy"),
                               model.infer_image(textured(40, 56, 6), SIZE), rtol=1e-5, atol=1e-5)
    assert run_predict([*common, "--output", str(tmp_path / "v1"), "--model-version", "v1"]) == 0  # other blocks
    assert not np.allclose(load_depth(tmp_path / "v1" / "frame_depth.npy"),
                           load_depth(tmp_path / "v2" / "frame_depth.npy"))


def test_an_image_given_twice_is_predicted_once(tmp_path, checkpoint, monkeypatch, capsys):
    """Catches: ``predict a.png ./a.png`` (or a folder and one of its images by name) predicting and writing the
    same map twice and reporting two maps."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(folder / f"{name}.png"), textured(40, 56, 7)[..., ::-1])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert run_predict(["imgs/a.png", "./imgs/a.png", "imgs", "--output", str(out), "--model", str(checkpoint),
                        "--input-size", str(SIZE)]) == 0
    assert sorted(p.name for p in out.glob("*.npy")) == ["a_depth.npy", "b_depth.npy"]
    assert "wrote 2 disparity maps" in capsys.readouterr().out


def _cli(*args) -> subprocess.CompletedProcess:
    """The real ``surgical-depth`` program in a fresh process (its own logging and OpenCV set-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENCV_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_fov_mask_files_are_claimed_before_any_map_is_written(tmp_path, checkpoint):
    """A user's file named like a field-of-view mask output (``name_fov.png`` beside an image's map,
    ``clip/fov_mask.png`` in a sequence's folder) stops the run before anything is written. Catches: the mask files
    left out of the outputs claimed before inference, so the conflict was found after the maps (and the run's
    manifest) had been written beside the user's file."""
    image = tmp_path / "scope.png"
    cv2.imwrite(str(image), _scope_frame(64, 80, 1)[..., ::-1])
    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i:03d}.png"), _scope_frame(64, 80, i)[..., ::-1])
    for source, user_file in (([image], "scope_fov.png"), ([frames, "--video"], "clip/fov_mask.png")):
        out = tmp_path / f"out_{user_file.replace('/', '_')}"
        (out / user_file).parent.mkdir(parents=True)
        (out / user_file).write_bytes(b"the user's own file")
        done = _cli("predict", *source, "--output", out, "--model", checkpoint, "--input-size", SIZE, "--device",
                    "cpu", "--progress", "none")
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
            "nothing was overwritten: choose another output folder"), done.stderr[-2000:]
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [user_file]
        assert (out / user_file).read_bytes() == b"the user's own file"


def test_a_corrupt_image_fails_with_one_line_and_no_opencv_log(tmp_path, checkpoint):
    """Catches: OpenCV's own log lines ("[ WARN:0@7.49] global grfmt_png.cpp:855 read_chunk ...", "[ERROR:0@7.49]
    ... readHeader") printed on stderr before the command's one-line error about a corrupt PNG."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes())
    done = _cli("predict", bad, "--output", tmp_path / "out", "--model", checkpoint, "--input-size", SIZE,
                "--device", "cpu", "--progress", "none")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"surgical-depth predict: error: cannot decode image {bad}: not a "
                                                "readable .png file"], done.stderr[-2000:]


def test_a_fov_mask_file_of_another_size_names_the_flag_the_file_and_the_input(tmp_path, checkpoint):
    """Catches: ``--fov-mask FILE`` that does not fit an input failing with "fov_mask has shape (320, 320), expected
    (475, 475) like the frames", naming neither the flag, the file nor the input; and a video of another size found
    only after the images' maps were written (its size is known before inference: nothing is written)."""
    from SurgicalDepthLib.fov import write_fov_mask

    mask = tmp_path / "scope_mask.png"
    write_fov_mask(mask, np.ones((40, 56), bool))
    fits, other = tmp_path / "fits.png", tmp_path / "other.png"
    cv2.imwrite(str(fits), textured(40, 56, 1)[..., ::-1])
    cv2.imwrite(str(other), textured(48, 64, 2)[..., ::-1])
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 2)  # 64x48
    common = ["--model", checkpoint, "--input-size", SIZE, "--device", "cpu", "--fov-mask", mask,
              "--progress", "none"]
    done = _cli("predict", fits, other, "--output", tmp_path / "images", *common)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len([line for line in lines if "error:" in line]) == 1, done.stderr[-2000:]
    assert f"--fov-mask {mask} is 56x40 pixels but input {other} is 64x48" in lines[-1]
    done = _cli("predict", fits, clip, "--output", tmp_path / "video", *common)
    assert done.returncode == 2 and f"--fov-mask {mask} is 56x40 pixels but input {clip} is 64x48" in done.stderr
    assert not (tmp_path / "video").exists()


def _moving_scope_clip(folder: Path, n: int = 60, moved_from: int = 28) -> None:
    """``n`` PNG frames of a scope image (tissue in a disc on black) that moves 16 px right at frame ``moved_from``
    (a laparoscope turned in its camera coupler)."""
    folder.mkdir()
    for i in range(n):
        rgb = _scope_frame(64, 80, i % 3)
        if i >= moved_from:
            rgb = np.roll(rgb, 16, axis=1)
        cv2.imwrite(str(folder / f"{i:03d}.png"), rgb[..., ::-1])


def test_a_moving_field_of_view_writes_each_mask_it_used(tmp_path, checkpoint):
    """The maps follow a field of view that moves mid-clip; the mask files must describe what was used.
    Catches: ``fov_mask.png`` written once (the first mask) while later maps had another field of view, and no
    record of which frames used which mask."""
    from SurgicalDepthLib.fov import read_fov_mask

    _moving_scope_clip(tmp_path / "moving")
    out = tmp_path / "out"
    assert run_predict([str(tmp_path / "moving"), "--video", "--output", str(out), "--model", str(checkpoint),
                        "--input-size", str(SIZE), "--batch-size", "4"]) == 0
    records = json.loads((out / "moving" / "predictions.json").read_text())["fov_masks"]
    assert len(records) == 2 and records[0] == {"from_frame": 0, "file": "fov_mask.png"}
    changed = records[1]["from_frame"]
    assert 28 < changed < 60 and records[1]["file"] == f"fov_mask_{changed:06d}.png"
    assert sorted(p.name for p in (out / "moving").glob("fov_mask*.png")) == ["fov_mask.png", records[1]["file"]]
    first, later = (read_fov_mask(out / "moving" / r["file"]) for r in records)
    assert not np.array_equal(first, later)
    for index, mask in ((0, first), (changed - 1, first), (changed, later), (59, later)):
        np.testing.assert_array_equal(np.isfinite(load_depth(out / "moving" / f"{index:06d}.npy")), mask)


def test_odd_sized_frames_keep_every_row_in_the_side_by_side_video(tmp_path, checkpoint):
    """A 163x201 (width x height) clip: mp4v needs even sides. Catches: the side-by-side video written 326x201,
    which the encoder cropped to 200 rows (the frames' last row lost); it is padded to 202 rows instead."""
    from SurgicalDepthLib.cli.predict import side_by_side_size
    from SurgicalDepthLib.video import read_image

    assert side_by_side_size(201, 163) == (326, 202)
    folder = tmp_path / "odd"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i:03d}.png"), textured(201, 163, i)[..., ::-1])
    out = tmp_path / "out"
    assert run_predict([str(folder), "--video", "--output", str(out), "--model", str(checkpoint), "--input-size",
                        str(SIZE), "--colormap", "--fov-mask", "none"]) == 0
    video = cv2.VideoCapture(str(out / "odd_depth.mp4"))
    ok, bgr = video.read()
    video.release()
    assert ok and bgr.shape == (202, 326, 3)
    # luminance: mp4v keeps it per pixel (colour is shared by 2x2 pixels, so the last row's blends with the pad's)
    panel = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(int)
    color, source = (cv2.cvtColor(read_image(p), cv2.COLOR_RGB2GRAY).astype(int)
                     for p in (out / "odd" / "000000_color.png", folder / "000.png"))
    assert np.abs(panel[:201, 163:] - color).mean() < 4 and np.abs(panel[:201, :163] - source).mean() < 4
    assert np.abs(panel[200, 163:] - color[200]).mean() < 5  # the last row is there
    assert np.abs(panel[200, :163] - source[200]).mean() < 6
    assert panel[201].mean() < 20  # the padding row is black (up to the codec's ringing)


def test_folders_and_globs_of_videos_predict_each_video(tmp_path, checkpoint):
    """A folder or glob holding clips (and images): each clip is a sequence of its own, each image an image. Catches:
    the videos a folder holds or a glob matches silently skipped (only the images predicted, or "matches no image
    files" for a folder of clips), and --max-frames refused as "no video input" for a folder of clips."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "a.mp4", 3)
    write_clip(clips / "b.avi", 2)
    cv2.imwrite(str(clips / "still.png"), textured(28, 42, 5))
    common = ["--model", str(checkpoint), "--input-size", str(SIZE)]
    out = tmp_path / "folder"
    assert run_predict([str(clips), "--max-frames", "2", "--output", str(out), *common]) == 0
    assert sorted(p.name for p in (out / "a").glob("*.npy")) == ["000000.npy", "000001.npy"]
    assert sorted(p.name for p in (out / "b").glob("*.npy")) == ["000000.npy", "000001.npy"]
    assert (out / "still_depth.npy").is_file()
    out = tmp_path / "glob"
    assert run_predict([str(clips / "*.mp4"), "--output", str(out), *common]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a"]
    assert len(list((out / "a").glob("*.npy"))) == 3


def test_a_fixed_colour_range_comes_from_the_first_frame_with_depth(tmp_path, checkpoint):
    """Catches the fixed colour range of a temporal (or metric) video taken from its first frame even when that frame
    has no depth (a black frame before the scope shows anything): the "no range" it gave was kept, and every later
    frame was coloured with its own range, so the colours flickered as if --temporal were off."""
    from SurgicalDepthLib.colormap import colorize, robust_range
    from SurgicalDepthLib.video import read_image

    folder = tmp_path / "intro"
    folder.mkdir()
    frames = [np.zeros((40, 56, 3), np.uint8), textured(40, 56, 1), textured(40, 56, 2)[::-1].copy()]
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rgb[..., ::-1])
    out = tmp_path / "out"
    assert run_predict([str(folder), "--video", "--temporal", "--output", str(out), "--model", str(checkpoint),
                        "--input-size", str(SIZE), "--colormap"]) == 0
    maps = [load_depth(out / "intro" / f"{i:06d}.npy") for i in range(3)]
    assert not np.isfinite(maps[0]).any() and np.isfinite(maps[1]).all()
    first = robust_range(maps[1], "disparity")
    assert first != robust_range(maps[2], "disparity")  # else the test could not tell the ranges apart
    for i in (1, 2):
        np.testing.assert_array_equal(read_image(out / "intro" / f"{i:06d}_color.png"),
                                      colorize(maps[i], "disparity", *first))


def test_a_black_image_gets_no_depth_under_the_auto_field_of_view(tmp_path, checkpoint, model):
    """Catches the black-frame rule missing for separate images: ``predict`` gives each image its own field of view
    (an array, not "auto", for ``depth_stream``), so a black image (a frame grabbed before the scope was on) was
    written with the network's depth while the same frame in a video, in Slicer or live got none. Under
    ``--fov-mask auto`` its map is all NaN (0 in PNG, black colour map); with ``--fov-mask none`` it is predicted;
    the image beside it is predicted as usual."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    tissue = textured(40, 56, 1)
    cv2.imwrite(str(folder / "black.png"), np.zeros((40, 56, 3), np.uint8))
    cv2.imwrite(str(folder / "tissue.png"), tissue[..., ::-1])
    for fov, fmt in (("auto", "npy"), ("auto", "png"), ("none", "npy")):
        out = tmp_path / f"out_{fov}_{fmt}"
        done = _cli("predict", folder, "--output", out, "--model", checkpoint, "--input-size", SIZE, "--device",
                    "cpu", "--format", fmt, "--colormap", "--fov-mask", fov, "--progress", "none")
        assert done.returncode == 0, done.stderr[-2000:]
        black = load_depth(out / f"black_depth.{fmt}")
        np.testing.assert_allclose(load_depth(out / f"tissue_depth.{fmt}"), model.infer_image(tissue, SIZE),
                                   rtol=1e-5 if fmt == "npy" else 1e-4, atol=1e-5 if fmt == "npy" else 1e-4)
        if fov == "none":
            assert np.isfinite(black).all() and np.ptp(black) > 0
            continue
        assert (np.isnan(black).all() if fmt == "npy" else (black == 0).all()), fmt
        assert not cv2.imread(str(out / "black_color.png")).any()


def test_a_rerun_whose_glob_reaches_an_earlier_output_folder_reads_no_outputs(tmp_path, checkpoint):
    """``predict "data/*/*.png" --output data/depth --colormap``, then the same glob into ``data/depth2``: the second
    run must predict the two frames, not the first run's colour maps and masks. Catches the glob matching
    ``data/depth/x1_color.png``, so the rerun wrote ``x1_color_depth.npy`` (and a --video rerun took the colour
    maps as frames of the clip)."""
    frames = tmp_path / "data" / "clip"
    frames.mkdir(parents=True)
    for i in (1, 2):
        cv2.imwrite(str(frames / f"x{i}.png"), textured(40, 56, i)[..., ::-1])
    pattern = str(tmp_path / "data" / "*" / "*.png")
    common = ["--model", checkpoint, "--input-size", SIZE, "--device", "cpu", "--colormap", "--progress", "none"]
    for out in ("depth", "depth2"):
        done = _cli("predict", pattern, "--output", tmp_path / "data" / out, *common)
        assert done.returncode == 0, done.stderr[-2000:]
        written = sorted(p.name for p in (tmp_path / "data" / out).iterdir() if p.name != MANIFEST_NAME)
        assert [n for n in written if n.endswith("_depth.npy")] == ["x1_depth.npy", "x2_depth.npy"], written
        assert all(n.startswith(("x1_", "x2_")) and n.count("_") == 1 for n in written), written
    done = _cli("predict", pattern, "--video", "--output", tmp_path / "data" / "seq", *common)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "data" / "seq" / "data").glob("*.npy")) == ["000000.npy", "000001.npy"]


def test_a_strip_among_a_folders_images_is_named_in_the_error(tmp_path, checkpoint):
    """Catches the error for an image whose sides are more than 8:1 apart naming only its size ("an image of
    4000x1 pixels ...") when it is one of a folder's images; and a strip-shaped video failing only once its
    frames reached the network. Exit code 2, one line naming the file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), textured(40, 56, 1)[..., ::-1])
    cv2.imwrite(str(folder / "b_strip.png"), textured(2, 400, 2)[..., ::-1])
    done = _cli("predict", folder, "--output", tmp_path / "out", "--model", checkpoint, "--input-size", SIZE,
                "--device", "cpu", "--progress", "none")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "b_strip.png: an image of 400x2 pixels has sides further apart than 8:1" in lines[0]
    write_clip(tmp_path / "strip.mp4", 2, 16, 160)
    done = _cli("predict", tmp_path / "strip.mp4", "--output", tmp_path / "out2", "--model", checkpoint,
                "--input-size", SIZE, "--device", "cpu", "--progress", "none")
    assert done.returncode == 2 and "model:" not in done.stdout  # refused before the model is loaded
    assert "strip.mp4: an image of 160x16 pixels" in done.stderr and not (tmp_path / "out2").exists()


def test_exif_rotated_jpeg_maps_follow_the_image_a_viewer_shows(tmp_path, checkpoint, model):
    """The contract (a check, not a fix): a JPEG whose EXIF orientation is 6 (stored landscape, shown rotated 90°
    clockwise, as phones and some scope cameras save) gets a map and a colour map of the shown (portrait) shape,
    equal to the model's map of the image Pillow's ``exif_transpose`` gives. Catches a reader that ignores the tag
    or applies it to the map but not to the colour map."""
    from PIL import Image, ImageOps

    stored = textured(40, 56, 3)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg")).convert("RGB"))
    assert shown.shape == (56, 40, 3)
    out = tmp_path / "out"
    assert run_predict([str(tmp_path / "photo.jpg"), "--output", str(out), "--model", str(checkpoint),
                        "--input-size", str(SIZE), "--colormap", "--fov-mask", "none"]) == 0
    expected = model.infer_image(np.ascontiguousarray(shown), SIZE)
    np.testing.assert_allclose(load_depth(out / "photo_depth.npy"), expected, rtol=1e-5, atol=1e-5)
    assert cv2.imread(str(out / "photo_color.png")).shape == (56, 40, 3)
