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


def test_read_poses_by_source_frame_index(tmp_path):
    """Catches: poses matched to frames by line position when the file has an index column (reconstruct --stride
    fused frame 2 with the pose of line 1), repeated indices accepted silently, a non-rigid last row accepted."""
    import numpy as np
    import pytest

    from SurgicalDepthLib.pose_io import format_pose_file, read_poses

    poses = [np.eye(4) for _ in range(3)]
    for i, p in enumerate(poses):
        p[0, 3] = 10.0 * i
    path = tmp_path / "poses.txt"
    path.write_text(format_pose_file(poses, [0, 2, 4]))
    read = read_poses(path)
    assert sorted(read) == [0, 2, 4] and read[4][0, 3] == 20.0
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(" ".join(repr(float(v)) for v in p.ravel()) for p in poses) + "\n")
    assert sorted(read_poses(plain)) == [0, 1, 2]
    with pytest.raises(ValueError, match="needs a frame index"):
        read_poses(plain, require_index=True)
    path.write_text(format_pose_file(poses[:2], [3, 3]))
    with pytest.raises(ValueError, match="two poses for frame 3"):
        read_poses(path)
    bad = poses[0].copy()
    bad[3, 3] = 2.0
    path.write_text(format_pose_file([bad], [0]))
    with pytest.raises(ValueError, match="last matrix row"):
        read_poses(path)


def test_binary_file_names_the_file(tmp_path):
    """Catches: a binary ``--poses`` file (an image given by mistake) failing with "'utf-8' codec can't decode
    byte ..." that does not name the file."""
    from SurgicalDepthLib.pose_io import read_poses

    path = tmp_path / "poses.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    for read in (read_pose_file, read_poses):
        with pytest.raises(ValueError, match=r"^poses file .*poses\.png is not a text file \(byte 0: "):
            read(path)


def test_rounded_rotations_are_snapped_and_scaled_ones_refused(tmp_path):
    """Catches: a pose file written with 4 decimals (R^T R off by ~1e-4) refused by the fusion's 1e-5 rigidity
    check only after frames were written, and a scaled rotation found only there, with neither the file nor the
    frame named; a rotation exact to float precision changed by the snapping."""
    from scipy.spatial.transform import Rotation

    from SurgicalDepthLib.geometry import check_rigid
    from SurgicalDepthLib.pose_io import read_poses

    exact = [np.eye(4) for _ in range(3)]
    for i, pose in enumerate(exact):
        pose[:3, :3] = Rotation.from_rotvec([0.3 * i, -0.2, 0.1 * i]).as_matrix()
        pose[:3, 3] = [5.0 * i, 1.0, -2.0]
    path = tmp_path / "rounded.txt"
    lines = [f"{i} " + " ".join(f"{v:.4f}" for v in pose.ravel()) for i, pose in enumerate(exact)]
    path.write_text("\n".join(lines) + "\n")
    rounded = read_poses(path)
    for i, pose in enumerate(exact):
        check_rigid(rounded[i])  # the fusion's own check (1e-5) passes
        assert np.abs(rounded[i] - pose).max() < 2e-4
    path.write_text(format_pose_file(exact, [0, 1, 2]))
    assert all(np.array_equal(read_poses(path)[i], exact[i]) for i in range(3))  # bit for bit
    scaled = exact[1].copy()
    scaled[:3, :3] *= 2.0
    path.write_text(format_pose_file([exact[0], scaled], [0, 1]))
    with pytest.raises(ValueError, match=r"rounded\.txt:3: pose of frame 1 is not a rigid transform"):
        read_poses(path)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_pose_file_written_by_windows_tools(tmp_path, encoding):
    """Catches a ``--poses`` file refused because a Windows editor saved it with a byte-order mark (Notepad's
    UTF-8, PowerShell 5's UTF-16) and CRLF line ends: it reads as the plain file does."""
    from SurgicalDepthLib.pose_io import read_poses

    poses = [np.eye(4), np.eye(4)]
    poses[1][:3, 3] = [1.5, -2.0, 3.25]
    path = tmp_path / "poses.txt"
    path.write_bytes(format_pose_file(poses, [0, 5]).replace("\n", "\r\n").encode(encoding))
    got = read_poses(path)
    assert sorted(got) == [0, 5] and np.allclose(got[5], poses[1]) and np.allclose(got[0], poses[0])


def _posed(i: int) -> np.ndarray:
    """A rigid camera-to-world pose with a non-zero translation."""
    from scipy.spatial.transform import Rotation

    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec([0.2 * i, 0.1, -0.3]).as_matrix()
    pose[:3, 3] = [1.5 + i, -2.0, 30.0 + 2 * i]
    return pose


def test_pose_errors_name_the_line_and_shifted_columns_are_refused(tmp_path):
    """Catches: a pose error naming only the frame (not the line to fix), and one value missing from an indexed
    line read as a pose without index (the index taken as m00, the frame numbered by position) and reported as
    "last matrix row must be 0 0 0 1, got [30.0, 0.0, 0.0, 0.0]" instead of naming the line's short columns, and a
    timestamp in the index column reported as "expected numbers" (it is one: it is no integer frame index)."""
    from SurgicalDepthLib.pose_io import read_poses

    path = tmp_path / "poses.txt"
    lines = format_pose_file([_posed(0), _posed(1), _posed(2)], [7, 8, 9]).splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0]  # frame 8 lost its last number
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"poses\.txt:3: 16 numbers, but line 2 has 17: every line needs the same"):
        read_poses(path)
    nan = _posed(1)
    nan[1, 1] = np.nan
    path.write_text(format_pose_file([_posed(0), nan], [0, 1]))
    with pytest.raises(ValueError, match=r"poses\.txt:3: pose of frame 1 has values that are not finite"):
        read_poses(path)
    path.write_text("1305031102.175304 " + " ".join(repr(float(v)) for v in _posed(0).ravel()) + "\n")
    with pytest.raises(ValueError, match=r"poses\.txt:1: the first of 17 numbers must be an integer frame index, "
                                         r"got '1305031102\.175304'"):
        read_poses(path)


def test_column_major_pose_file_of_c3vd_is_read(tmp_path):
    """Catches: C3VD's ``pose.txt`` (16 comma-separated numbers per line, column-major: the translation last) given
    to ``reconstruct --poses`` refused with "last matrix row must be 0 0 0 1, got [tx, ty, tz, 1.0]"; a line with
    zero translation (both orders read as a matrix) must follow the file's order, not be transposed alone."""
    from SurgicalDepthLib.pose_io import read_poses

    poses = [_posed(0), _posed(1), _posed(2)]
    poses[1][:3, 3] = 0.0  # reads both ways
    path = tmp_path / "pose.txt"
    path.write_text("\n".join(",".join(repr(float(v)) for v in p.T.ravel()) for p in poses) + "\n")
    got = read_poses(path)
    assert sorted(got) == [0, 1, 2]
    for i, pose in enumerate(poses):
        assert np.array_equal(got[i], pose)
    path.write_text(format_pose_file(poses))  # the same poses row-major: read as they are
    assert all(np.array_equal(read_poses(path)[i], poses[i]) for i in range(3))
    mixed = [" ".join(repr(float(v)) for v in p.ravel()) for p in poses]
    mixed[2] = " ".join(repr(float(v)) for v in poses[2].T.ravel())
    path.write_text("\n".join(mixed) + "\n")
    with pytest.raises(ValueError, match=r"pose\.txt:3: pose of frame 2: last matrix row must be 0 0 0 1"):
        read_poses(path)
