"""Pose text files: exact float64 round trip, optional indices, errors naming file and line."""
from __future__ import annotations

import numpy as np
import pytest

from SurgicalDepthLib.pose_io import format_pose_file, read_pose_file


def test_round_trip_is_exact(tmp_path, rng):
    poses = [np.vstack([rng.normal(size=(3, 4)), [0, 0, 0, 1]]) for _ in range(3)]
    path = tmp_path / "poses.txt"
    path.write_text(format_pose_file(poses, indices=[4, 5, 9]))
    back = read_pose_file(path)
    assert [i for i, _ in back] == [4, 5, 9]
    for (_, m), p in zip(back, poses):
        assert np.array_equal(m, p)


def test_lines_without_index_and_errors(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\n" + " ".join(["1"] * 16) + "  # trailing\n")
    [(index, m)] = read_pose_file(path)
    assert index is None and m.shape == (4, 4)
    path.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"p\.txt:1: expected 16 numbers"):
        read_pose_file(path)
    path.write_text("0 " + " ".join(["x"] * 16) + "\n")
    with pytest.raises(ValueError, match=r"p\.txt:1: expected numbers"):
        read_pose_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pose_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="must be 4x4"):
        format_pose_file([np.eye(3)])
