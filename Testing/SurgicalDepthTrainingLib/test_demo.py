"""The offline demo end to end (reduced size), through the CLI, with every output re-read from disk."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import SurgicalDepthLib as sd
from SurgicalDepthLib.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    """Also catches: a second demo into the same folder silently replacing the first (no run manifest, no
    --overwrite), and --overwrite not replacing it."""
    from SurgicalDepthLib.run_folder import read_manifest

    out = tmp_path / "demo"
    command = ["demo", "--output", str(out), "--frames", "4", "--size", "96", "128", "--input-size", "112",
               "--device", "cpu"]
    code = main(command)
    assert code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "AbsRel" in printed and str(out / "summary.png") in printed

    report = json.loads((out / "metrics.json").read_text())
    assert report["frames"] == 4 and len(report["per_frame"]) == 4
    assert set(report["metrics"]) == {"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}
    assert 0 <= report["metrics"]["a1"] <= 1 and report["metrics"]["abs_rel"] >= 0
    assert report["model"].endswith(".safetensors") or report["model"].startswith("random:")

    cap = cv2.VideoCapture(str(out / "depth_video.mp4"))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (96, 256, 3)  # input | depth side by side
        n += 1
    assert n == 4

    cloud = sd.export.load_mesh(out / "frame000_points.ply")
    assert cloud.GetNumberOfPoints() > 1000
    mesh = sd.export.load_mesh(out / "fused_mesh.ply")
    assert mesh.GetNumberOfPolys() > 100

    summary = cv2.imread(str(out / "summary.png"))
    assert summary.shape[0] == 96 and summary.shape[1] >= 4 * 128
    assert [p.name for p in out.glob(".*")] == [".surgical-depth-run"]  # no temporary files left
    header, listed = read_manifest(out)
    assert header["command"] == "demo" and sorted(listed) == sorted(p.name for p in out.iterdir()
                                                                  if not p.name.startswith("."))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(command) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*command, "--overwrite"]) == 0
    assert (out / "metrics.json").stat().st_mtime_ns > before["metrics.json"]


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "x"), "--frames", "1"]) == 2
    assert "--frames must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag, expected", [(["--seed", "-1"], "--seed must be >= 0, got -1"),
                                            (["--size", "0", "0"], "--size H must be an int >= 8, got 0"),
                                            (["--size", "64", "3"], "--size W must be an int >= 8, got 3")])
def test_demo_errors_name_the_flag_before_rendering(flag, expected, tmp_path, capsys):
    """Catches: ``demo --seed -1`` failing with numpy's "expected non-negative integer" and ``--size 0 0`` with
    "SceneConfig.height ...", neither naming the flag, after the progress bar had started."""
    assert main(["demo", "--output", str(tmp_path / "x"), "--model", "random:surgical-depth-tiny", *flag]) == 2
    assert capsys.readouterr().err.strip() == f"surgical-depth demo: error: {expected}"
    assert not (tmp_path / "x").exists()
