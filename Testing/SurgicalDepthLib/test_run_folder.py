"""Output folders that lose nothing: ``RunFolder`` directly, and ``predict`` / ``reconstruct`` through the real CLI.

| case | expected |
|---|---|
| predict DIR -o DIR next to a user's ``0001_depth.npy`` | refused, exit 2, the user's file unchanged |
| second predict into a used folder | refused unless --overwrite; with it, the first run's files are replaced |
| --overwrite | removes exactly the earlier run's files, never a user's file |
| two runs at once into one folder | the second is refused while the first holds the lock |
| a lock left by a dead process | taken over |
| a run that fails before writing | leaves no (empty) output folder behind |
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_model import textured

from SurgicalDepthLib.run_folder import LOCK_NAME, MANIFEST_NAME, OutputConflict, RunFolder, read_manifest


def test_manifest_lists_claimed_files_and_overwrite_removes_only_them(tmp_path):
    """Catches: --overwrite deleting a user's file, or leaving the earlier run's stale files beside the new."""
    folder = tmp_path / "out"
    with RunFolder(folder, "predict") as run:
        run.path("a.npy").write_text("1")
        run.path("clip/000000.npy").write_text("2")
    (folder / "user_notes.txt").write_text("mine")
    header, files = read_manifest(folder)
    assert header["command"] == "predict" and files == ["a.npy", "clip/000000.npy"]
    with pytest.raises(OutputConflict, match="--overwrite"):
        with RunFolder(folder, "predict"):
            pass
    with RunFolder(folder, "predict", overwrite=True) as run:
        assert not (folder / "a.npy").exists() and not (folder / "clip").exists()
        run.path("b.npy").write_text("3")
    assert (folder / "user_notes.txt").read_text() == "mine"
    assert read_manifest(folder)[1] == ["b.npy"]
    assert not (folder / LOCK_NAME).exists()


def test_foreign_files_and_inputs_are_never_written(tmp_path):
    """Catches: an output silently replacing a file no run wrote (ground truth beside the inputs) or an input."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "0001_depth.npy").write_text("ground truth")
    (folder / "0001.png").write_text("input")
    with RunFolder(folder, "predict", inputs=[folder / "0001.png"]) as run:
        with pytest.raises(OutputConflict, match="0001_depth.npy exists and was not written"):
            run.path("0001_depth.npy")
        with pytest.raises(OutputConflict, match="is an input"):
            run.path("0001.png")
        with pytest.raises(OutputConflict, match="outside the output folder"):
            run.path("../elsewhere.npy")
    assert (folder / "0001_depth.npy").read_text() == "ground truth"


def test_overwrite_never_deletes_an_input_of_the_new_run(tmp_path):
    """Catches: --overwrite clearing an earlier run's outputs that this run reads (a prediction folder given as
    input or as --depth, a checkpoint given as --model) and then failing on the missing input: the earlier results
    were lost. An output folder inside an input folder is still replaced."""
    folder = tmp_path / "out"
    with RunFolder(folder, "predict") as run:
        run.path("clip/000000.png").write_text("frame")
        run.path("best.safetensors").write_text("weights")
    for inputs in ([folder / "clip"], [folder / "best.safetensors"]):
        with pytest.raises(OutputConflict, match="nothing was deleted"):
            with RunFolder(folder, "predict", inputs=inputs, overwrite=True):
                pass
        assert (folder / "clip" / "000000.png").read_text() == "frame"
        assert (folder / "best.safetensors").read_text() == "weights"
    frames = tmp_path / "frames"
    with RunFolder(frames / "depth", "predict") as run:
        run.path("000000.npy").write_text("old")
    with RunFolder(frames / "depth", "predict", inputs=[frames], overwrite=True) as run:
        assert not (frames / "depth" / "000000.npy").exists()


def test_lock_refuses_a_second_run_and_is_taken_over_from_a_dead_one(tmp_path):
    """Catches: two runs interleaving their files in one folder; a crashed run's lock blocking the folder forever."""
    folder = tmp_path / "out"
    with RunFolder(folder, "predict"):
        with pytest.raises(OutputConflict, match="being written by another"):
            with RunFolder(folder, "reconstruct", overwrite=True):
                pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (folder / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with RunFolder(folder, "predict", overwrite=True):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times come from Linux's /proc")
def test_lock_of_a_reused_pid_is_taken_over_and_a_live_owner_still_refuses(tmp_path):
    """Catches: a run killed without cleanup (SIGKILL, power loss) whose pid a later, unrelated process got (pids
    are reused, always after a reboot) blocking its folder with "being written by another run" for as long as that
    process lives; and, the other way, a lock of the live owner being taken over because its start time is
    misread. The lock here names this test's pid (alive) with another process start time."""
    import socket

    folder = tmp_path / "out"
    folder.mkdir()
    host = socket.gethostname()
    with RunFolder(folder, "predict"):
        mine = json.loads((folder / LOCK_NAME).read_text())
        assert mine["pid"] == os.getpid() and isinstance(mine["start"], int)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": host, "start": mine["start"] - 1}))
    with RunFolder(folder, "predict", overwrite=True):
        assert json.loads((folder / LOCK_NAME).read_text())["start"] == mine["start"]
    for owner in ({"pid": os.getpid(), "host": host, "start": mine["start"]},  # this very process: alive
                  {"pid": os.getpid(), "host": host}):  # a lock written before start times were recorded
        (folder / LOCK_NAME).write_text(json.dumps(owner))
        with pytest.raises(OutputConflict, match="being written by another"):
            with RunFolder(folder, "predict", overwrite=True):
                pass


def test_failed_run_leaves_no_empty_folder(tmp_path):
    """Catches: a run that fails before writing anything leaving an empty output folder (and a manifest)."""
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with RunFolder(folder, "predict"):
            raise RuntimeError("model failed to load")
    assert not folder.exists()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", *argv], capture_output=True, text=True,
                          timeout=300)


def test_predict_cli_refuses_to_overwrite_and_mix_runs(tmp_path):
    """Through the real CLI: predict DIR -o DIR next to ground truth, a second run into a used folder, --overwrite,
    and a failing run into a new folder."""
    data = tmp_path / "data"
    data.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(data / f"000{i}.png"), textured(28, 42, i))
    np.save(data / "0001_depth.npy", np.ones((28, 42), np.float32))  # the user's ground truth
    before = (data / "0001_depth.npy").read_bytes()
    common = ["--input-size", "28", "--device", "cpu", "--fov-mask", "none"]

    result = _cli("predict", str(data), "--output", str(data), *common)
    assert result.returncode == 2 and f"--output {data} is the input folder" in result.stderr
    result = _cli("predict", str(data / "0001.png"), "--output", str(data), *common)
    assert result.returncode == 2 and "0001_depth.npy exists and was not written" in result.stderr
    assert "Traceback" not in result.stderr and (data / "0001_depth.npy").read_bytes() == before

    out = tmp_path / "out"
    assert _cli("predict", str(data), "--output", str(out), "--colormap", *common).returncode == 0
    second = _cli("predict", str(data), "--output", str(out), *common)
    assert second.returncode == 2 and "--overwrite" in second.stderr
    assert (out / "0002_color.png").exists()  # the first run's outputs are intact
    assert _cli("predict", str(data), "--output", str(out), "--overwrite", *common).returncode == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME) == ["0001_depth.npy", "0002_depth.npy"]

    failed = _cli("predict", str(data), "--output", str(tmp_path / "never"), "--model", str(tmp_path / "no.pth"),
                  *common)
    assert failed.returncode == 2 and not (tmp_path / "never").exists()

    # --overwrite with a missing input, or with the earlier run's outputs as input: refused, nothing deleted
    kept = sorted(p.name for p in out.iterdir())
    for inputs in ([str(tmp_path / "missing.png")], [str(out / "0001_depth.npy")]):
        refused = _cli("predict", *inputs, "--output", str(out), "--overwrite", *common)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert sorted(p.name for p in out.iterdir()) == kept


def test_an_unreadable_video_is_one_line(tmp_path):
    """Catches: FFmpeg's own log line ("moov atom not found") printed before the command's one-line error."""
    video = tmp_path / "notvideo.mp4"
    video.write_text("not a video")
    result = _cli("predict", str(video), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "notvideo.mp4" in result.stderr and not (tmp_path / "out").exists()


def test_a_data_set_is_never_overwritten(tmp_path):
    """Catches: predict/reconstruct --overwrite into a folder written by synth deleting the whole data set (its
    manifest lists every file)."""
    folder = tmp_path / "syn"
    with RunFolder(folder, "synth") as run:
        run.path("rgb/000000.png").write_text("frame")
    for overwrite in (False, True):
        with pytest.raises(OutputConflict, match="data set"):
            with RunFolder(folder, "predict", overwrite=overwrite):
                pass
    assert (folder / "rgb" / "000000.png").read_text() == "frame"
