"""Each public dataset loader against tiny files written here in that dataset's published layout and encoding."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import SurgicalDepthTrainingLib as sdt
from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthTrainingLib.datasets import DatasetError


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _tif(path: Path, array: np.ndarray) -> Path:
    """Write a TIFF with channels in the given (stored) order. OpenCV is the writer (independent of the
    loaders' SimpleITK reader); it treats 3/4-channel arrays as BGR(A) and stores them reversed, so reverse first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1]) if array.shape[-1] == 3 else \
            np.ascontiguousarray(array[..., [2, 1, 0, 3]])
    assert cv2.imwrite(str(path), array)
    return path


def _bgr(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ C3VD
def _c3vd_seq(seq: Path, n: int = 2, padded: bool = True) -> None:
    lines = []
    for i in range(n):
        stem = f"{i:04d}" if padded else str(i)
        _png(seq / f"{stem}_color.png", _bgr(4, 6, i))
        raw = np.array([[0, 1, 32768, 65534, 65535, 1000 * (i + 1)]] * 4, np.uint16)
        _tif(seq / f"{stem}_depth.tiff", raw)
        pose = np.eye(4)
        pose[:3, 3] = [10.0 * i, -2.0, 3.0]
        lines.append(",".join(repr(float(v)) for v in pose.ravel(order="F")))  # column-major, as documented
    (seq / "pose.txt").write_text("\n".join(lines) + "\n")


def test_c3vd_tiff_encoding_and_pose(tmp_path):
    _c3vd_seq(tmp_path / "cecum_t1_a")
    _c3vd_seq(tmp_path / "trans_t2_b", n=1, padded=False)
    ds = sdt.open_dataset("c3vd", tmp_path)
    assert len(ds) == 3 and ds.max_depth == 100.0
    s = ds[0]
    assert s["depth"][0, 2] == pytest.approx(50.0008, abs=1e-4)       # 32768 / 65535 * 100
    assert s["depth"][0, 1] == pytest.approx(100 / 65535, rel=1e-6)
    assert s["depth"][0, 3] == pytest.approx(65534 / 65535 * 100, rel=1e-6)
    np.testing.assert_array_equal(s["valid"][0], [False, True, True, True, False, True])  # 0 and 65535 invalid
    assert s["depth"][0, 4] == 0 and s["intrinsics"] is None
    expected = np.eye(4)
    expected[:3, 3] = [10.0, -2.0, 3.0]
    np.testing.assert_array_equal(ds[1]["pose"], expected)
    assert ds[2]["name"].endswith("0_color.png")
    assert len(sdt.open_dataset("c3vd", tmp_path, split="cecum")) == 2
    assert len(sdt.open_dataset("c3vd", tmp_path / "trans_t2_b")) == 1


def test_c3vd_frames_get_the_scopes_camera(tmp_path):
    """Frames of C3VD's aspect ratio (1350×1080) get the scope's fisheye rescaled to their size; other shapes
    none; ``intrinsics=`` (e.g. the data set's OCamCalib file) replaces it. Bugs caught: the camera of the full
    frames applied to resized ones (wrong focal length), a camera guessed for frames cropped to another shape."""
    from SurgicalDepthTrainingLib.datasets.c3vd import C3VD_CAMERA

    seq = tmp_path / "sigmoid_t1_a"
    _png(seq / "0000_color.png", _bgr(8, 10))
    _tif(seq / "0000_depth.tiff", np.full((8, 10), 20000, np.uint16))
    intr = sdt.open_dataset("c3vd", tmp_path)[0]["intrinsics"]
    assert intr == C3VD_CAMERA.scaled(10, 8) and intr.distortion["model"] == "fisheye"
    assert intr.fx == pytest.approx(767.3861511125845 / 135) and intr.cx == pytest.approx((679.054265997005 + 0.5)
                                                                                         / 135 - 0.5)
    own = Intrinsics(9.0, 9.0, 4.5, 3.5, 10, 8)
    assert sdt.open_dataset("c3vd", tmp_path, intrinsics=own)[0]["intrinsics"] == own


def test_c3vd_row_major_pose_and_bad_pose(tmp_path):
    from SurgicalDepthTrainingLib.datasets.c3vd import parse_c3vd_pose_line

    m = np.eye(4)
    m[:3, 3] = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(parse_c3vd_pose_line(m.ravel(), "x"), m)
    np.testing.assert_array_equal(parse_c3vd_pose_line(m.ravel(order="F"), "x"), m)
    with pytest.raises(DatasetError, match="pose.txt line 2: not a homogeneous 4x4"):
        parse_c3vd_pose_line(np.arange(16.0), "pose.txt line 2")


def test_c3vd_8bit_and_unreadable_tiff_refused(tmp_path):
    _c3vd_seq(tmp_path / "s", n=2)
    _tif(tmp_path / "s" / "0000_depth.tiff", np.full((4, 6), 7, np.uint8))
    (tmp_path / "s" / "0001_depth.tiff").write_bytes(b"II*\x00 truncated")
    ds = sdt.open_dataset("c3vd", tmp_path)
    with pytest.raises(DatasetError, match=r"0000_depth\.tiff: C3VD depth must be a 16-bit .* 8-bit uint8"):
        ds[0]
    with pytest.raises(DatasetError, match=r"0001_depth\.tiff: unreadable TIFF file"):
        ds[1]


# ------------------------------------------------------------------------------------------------ SERV-CT
def test_servct_png_div_256(tmp_path):
    exp = tmp_path / "SERV-CT" / "Experiment_1"
    _png(exp / "Left_rectified" / "001.png", _bgr(4, 5))
    raw = np.array([[0, 256, 2560, 2561, 65535]] * 4, np.uint16)
    depth_png = _png(exp / "Reference_CT" / "DepthL" / "001.png", raw)
    _png(exp / "Reference_RGB" / "DepthL" / "001.png", raw // 2)
    p1 = [[400.0, 0, 2.0, 0], [0, 400.0, 1.5, 0], [0, 0, 1, 0]]
    (exp / "Rectified_calibration").mkdir()
    (exp / "Rectified_calibration" / "001.json").write_text(json.dumps({"P1": {"data": sum(p1, [])}}))
    ds = sdt.open_dataset("servct", tmp_path / "SERV-CT")
    s = ds[0]
    np.testing.assert_allclose(s["depth"][0], [0, 1.0, 10.0, 2561 / 256, 65535 / 256], rtol=1e-6)
    assert s["valid"][0].tolist() == [False, True, True, True, True]
    assert s["intrinsics"] == Intrinsics(400.0, 400.0, 2.0, 1.5, 5, 4)
    # the default cv2.imread flags would have kept only the high byte: 2561 -> 10, i.e. 0.039 mm instead of 10 mm
    careless = cv2.imread(str(depth_png))[..., 0].astype(np.float32) / 256
    assert careless.dtype == np.float32 and careless[0, 3] == pytest.approx(10 / 256)
    assert s["depth"][0, 3] == pytest.approx(2561 / 256)
    assert sdt.open_dataset("servct", tmp_path, reference="RGB")[0]["depth"][0, 2] == pytest.approx(5.0)
    assert len(sdt.open_dataset("servct", tmp_path, split="1")) == 1
    with pytest.raises(FileNotFoundError, match="no RGB/depth pairs"):
        sdt.open_dataset("servct", tmp_path, split="Experiment_2")


def test_servct_rgb_without_depth(tmp_path):
    exp = tmp_path / "Experiment_2"
    _png(exp / "Left_rectified" / "001.png", _bgr(4, 5))
    _png(exp / "Left_rectified" / "002.png", _bgr(4, 5))
    _png(exp / "Reference_CT" / "DepthL" / "001.png", np.full((4, 5), 2560, np.uint16))
    with pytest.raises(DatasetError, match=r"002\.png: RGB image has no depth file .*DepthL[/\\]002\.png"):
        sdt.open_dataset("servct", tmp_path)
    assert sdt.open_dataset("servct", tmp_path, skip_bad=True).skipped == 1


def test_servct_toolkit_folder_names_and_rgb_reference_of_one_experiment(tmp_path):
    """Catches: ``reference="RGB"`` refusing the authors' toolkit layout (``Ground_truth_RGB/DepthL``, beside
    ``Ground_truth_CT``), and on the data set's root failing on the experiment that has no RGB reference."""
    for n, rgb_reference in ((1, False), (2, True)):
        exp = tmp_path / f"Experiment_{n}"
        _png(exp / "Left_rectified" / "001.png", _bgr(4, 5))
        _png(exp / "Ground_truth_CT" / "DepthL" / "001.png", np.full((4, 5), 2560, np.uint16))
        if rgb_reference:
            _png(exp / "Ground_truth_RGB" / "DepthL" / "001.png", np.full((4, 5), 22656, np.uint16))
    assert len(sdt.open_dataset("servct", tmp_path)) == 2  # CT: both experiments
    rgb = sdt.open_dataset("servct", tmp_path, reference="RGB")
    assert len(rgb) == 1 and rgb[0]["depth"][0, 0] == pytest.approx(88.5)
    assert len(sdt.open_dataset("servct", tmp_path, reference="RGB", split="2")) == 1
    with pytest.raises(DatasetError, match=r"Experiment_1.*RGB image has no depth file"):  # asked for by name
        sdt.open_dataset("servct", tmp_path, reference="RGB", split="1")


# ------------------------------------------------------------------------------------------------ Hamlyn
def test_hamlyn_mm_png_and_intrinsics(tmp_path):
    seq = tmp_path / "rectified01"
    for i in range(2):
        _png(seq / "image01" / f"{i:010d}.jpg", _bgr(4, 6, i))
        _png(seq / "depth01" / f"{i:010d}.png", np.array([[0, 1, 150, 300, 4095, 65535]] * 4, np.uint16))
    _png(seq / "image02" / "0000000000.jpg", _bgr(4, 6))
    _png(seq / "depth02" / "0000000000.png", np.full((4, 6), 42, np.uint16))
    (seq / "intrinsics.txt").write_text("383.2 0 3.1 0\n0 384.5 2.2 0\n0 0 1 0\n")
    ds = sdt.open_dataset("hamlyn", tmp_path)
    assert len(ds) == 2 and ds.max_depth == 150.0
    s = ds[0]
    np.testing.assert_array_equal(s["depth"][0], [0, 1, 150, 300, 4095, 65535])
    assert s["intrinsics"] == Intrinsics(383.2, 384.5, 3.1, 2.2, 6, 4)
    assert sdt.open_dataset("hamlyn", tmp_path, side="right")[0]["depth"][0, 0] == 42
    assert len(sdt.open_dataset("hamlyn", tmp_path, split="01")) == 2
    with pytest.raises(ValueError, match="side must be 'left' or 'right'"):
        sdt.open_dataset("hamlyn", tmp_path, side="up")


def test_hamlyn_color_depth_layout(tmp_path):
    _png(tmp_path / "seq" / "color" / "frame000000.jpg", _bgr(3, 3))
    _png(tmp_path / "seq" / "depth" / "frame000000.png", np.full((3, 3), 77, np.uint16))
    assert sdt.open_dataset("hamlyn", tmp_path / "seq")[0]["depth"][1, 1] == 77


# ------------------------------------------------------------------------------------------------ SCARED
def _scared_keyframe(kf: Path, z: np.ndarray) -> None:
    h, w = z.shape
    _png(kf / "Left_Image.png", _bgr(h, w))
    xyz = np.zeros((h, w, 3), np.float32)
    xyz[..., 0], xyz[..., 1], xyz[..., 2] = 1.5, -2.5, z
    _tif(kf / "left_depth_map.tiff", xyz)
    fs = cv2.FileStorage(str(kf / "endoscope_calibration.yaml"), cv2.FILE_STORAGE_WRITE)
    fs.write("M1", np.array([[1035.3, 0, 639.5], [0, 1035.1, 511.5], [0, 0, 1]]))  # the 1280 x 1024 frames
    fs.write("D1", np.array([[-0.0005, 0.0035, 0, 0, 0]]))
    fs.release()


def test_scared_xyz_tiff_z_channel(tmp_path):
    z = np.array([[0, 40.5, 80.25, np.nan, 149.0]] * 4, np.float32)  # 5 x 4: the recorded frames' aspect ratio
    _scared_keyframe(tmp_path / "dataset_1" / "keyframe_1", z)
    _scared_keyframe(tmp_path / "dataset_2" / "keyframe_3", z + 1)
    ds = sdt.open_dataset("scared", tmp_path)
    assert len(ds) == 2 and ds.max_depth == 150.0
    s = ds[0]
    np.testing.assert_array_equal(s["depth"][0], [0, 40.5, 80.25, 0, 149.0])
    assert s["valid"][0].tolist() == [False, True, True, False, True]
    intr = s["intrinsics"]  # M1 of the 1280 x 1024 frames, rescaled to these 5 x 4 keyframes
    assert intr.size == (5, 4)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((1035.3 / 256, 1035.1 / 256, 2.0, 1.5))
    assert intr.distortion == {"model": "opencv", "coeffs": [-0.0005, 0.0035, 0.0, 0.0, 0.0]}
    assert [Path(ds[i]["name"]).parent.name for i in range(2)] == ["keyframe_1", "keyframe_3"]
    assert len(sdt.open_dataset("scared", tmp_path, split="dataset_2/keyframe_3")) == 1
    assert len(sdt.open_dataset("scared", tmp_path, split=["1"])) == 1
    assert len(sdt.open_dataset("scared", tmp_path / "dataset_2" / "keyframe_3")) == 1


def test_scared_calibration_under_a_non_ascii_path(tmp_path, monkeypatch):
    """Catches the calibration opened by ``cv2.FileStorage(path)``, which on Windows cannot open a path with a
    non-ASCII character: a SCARED copy under ``C:\\Users\\Jürgen`` failed with "expected a 3x3 matrix 'M1',
    got nothing". FileStorage is made to fail on such paths as there; the file is parsed from its text. A file that
    is not YAML names the file."""
    _scared_keyframe(tmp_path / "Jürgen" / "dataset_1" / "keyframe_1", np.full((1024, 1280), 50, np.float32))
    windows = cv2.FileStorage

    def file_storage(source, flags, *args):
        opened = windows(source, flags, *args)
        if not flags & cv2.FILE_STORAGE_MEMORY and not str(source).isascii():
            opened.release()
            return windows()  # not opened, as on Windows
        return opened

    monkeypatch.setattr(cv2, "FileStorage", file_storage)
    intr = sdt.open_dataset("scared", tmp_path / "Jürgen")[0]["intrinsics"]
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (1035.3, 1035.1, 639.5, 511.5)
    (tmp_path / "Jürgen" / "dataset_1" / "keyframe_1" / "endoscope_calibration.yaml").write_text("M1: [1, 2\n")
    with pytest.raises(DatasetError, match="endoscope_calibration.yaml: not valid OpenCV YAML"):
        sdt.open_dataset("scared", tmp_path / "Jürgen")[0]


def test_scared_wrong_shape_and_missing_depth(tmp_path):
    kf = tmp_path / "dataset_1" / "keyframe_1"
    _scared_keyframe(kf, np.full((4, 6), 50, np.float32))
    _tif(kf / "left_depth_map.tiff", np.zeros((4, 6, 4), np.float32))
    with pytest.raises(DatasetError, match=r"left_depth_map\.tiff: SCARED depth map has shape \(4, 6, 4\)"):
        sdt.open_dataset("scared", tmp_path)[0]
    (kf / "left_depth_map.tiff").unlink()
    with pytest.raises(DatasetError, match=r"Left_Image\.png: RGB image has no depth file"):
        sdt.open_dataset("scared", tmp_path)


# ------------------------------------------------------------------------------------------------ SimCol3D
def _simcol_seq(scene: Path, ident: str, n: int = 2) -> None:
    seq = scene / f"Frames_{ident}"
    for i in range(n):
        rgba = np.zeros((3, 4, 4), np.uint16)
        rgba[..., :3] = _bgr(3, 4, i).astype(np.uint16) << 8
        rgba[..., 3] = 65280
        _png(seq / f"FrameBuffer_{i:04d}.png", rgba)
        _png(seq / f"Depth_{i:04d}.png", np.array([[0, 256, 32640, 65280]] * 3, np.uint16))
    np.savetxt(scene / f"SavedPosition_{ident}.txt", [[1.0 * i, 2.0, 3.0] for i in range(n)])
    np.savetxt(scene / f"SavedRotationQuaternion_{ident}.txt", [[0.0, 0.0, np.sin(0.25), np.cos(0.25)]] * n)


def test_simcol3d_encoding_pose_and_splits(tmp_path):
    from scipy.spatial.transform import Rotation

    _simcol_seq(tmp_path / "SyntheticColon_I", "S1")
    _simcol_seq(tmp_path / "SyntheticColon_I", "S5")
    _simcol_seq(tmp_path / "SyntheticColon_III", "O1", n=1)
    ds = sdt.open_dataset("simcol3d", tmp_path)
    assert len(ds) == 5
    s = ds[1]
    np.testing.assert_allclose(s["depth"][0], [0, 256 / 65280 * 200, 100.0, 200.0], rtol=1e-6)
    assert s["valid"][0].tolist() == [False, True, True, True]
    np.testing.assert_array_equal(s["image"], cv2.cvtColor(_bgr(3, 4, 1), cv2.COLOR_BGR2RGB))
    assert s["intrinsics"] == Intrinsics(227.60416, 227.60416, 237.5, 237.5, 475, 475).scaled(4, 3)
    # organisers' conversion: TM @ [R | t] @ TM, TM = diag(1, -1, 1, 1); t in cm -> mm
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat([0, 0, np.sin(0.25), np.cos(0.25)]).as_matrix()
    pose[:3, 3] = [10.0, 20.0, 30.0]
    tm = np.diag([1.0, -1, 1, 1])
    np.testing.assert_allclose(s["pose"], tm @ pose @ tm, atol=1e-12)
    test = sdt.open_dataset("simcol3d", tmp_path, split="test")  # no misc/: published test trajectories
    assert sorted({Path(test[i]["name"]).parent.name for i in range(len(test))}) == ["Frames_O1", "Frames_S5"]
    assert len(sdt.open_dataset("simcol3d", tmp_path, split="train")) == 2
    (tmp_path / "misc").mkdir()
    (tmp_path / "misc" / "test_file.txt").write_text("SyntheticColon_I/Frames_S1\n")
    assert len(sdt.open_dataset("simcol3d", tmp_path, split="test")) == 2
    assert len(sdt.open_dataset("simcol3d", tmp_path, split="S5,O1")) == 3
    assert len(sdt.open_dataset("simcol3d", tmp_path, split="SyntheticColon_III")) == 1


def test_simcol3d_8bit_depth_refused(tmp_path):
    _simcol_seq(tmp_path / "SyntheticColon_II", "B1", n=1)
    _png(tmp_path / "SyntheticColon_II" / "Frames_B1" / "Depth_0000.png", np.full((3, 4), 9, np.uint8))
    with pytest.raises(DatasetError, match=r"Depth_0000\.png: SimCol3D depth must be a single-channel 16-bit"):
        sdt.open_dataset("simcol3d", tmp_path)[0]


# ------------------------------------------------------------------------------------------------ ColonDepth
def test_colondepth_8_and_16_bit(tmp_path):
    _png(tmp_path / "T1_L1_1_resized" / "FrameBuffer_0000.png", _bgr(2, 3))
    _png(tmp_path / "T1_L1_1_resized" / "Depth_0000.png", np.array([[0, 51, 255]] * 2, np.uint8))
    _png(tmp_path / "T2_L1_1_resized" / "FrameBuffer_0000.png", _bgr(2, 3))
    _png(tmp_path / "T2_L1_1_resized" / "Depth_0000.png", np.array([[0, 32640, 65280]] * 2, np.uint16))
    ds = sdt.open_dataset("colondepth", tmp_path)
    np.testing.assert_allclose(ds[0]["depth"][0], [0, 40.0, 200.0], rtol=1e-6)
    np.testing.assert_allclose(ds[1]["depth"][0], [0, 100.0, 200.0], rtol=1e-6)
    assert len(sdt.open_dataset("colondepth", tmp_path, split="T2")) == 1
    # copies of the set name the folders C_T1_L1_1_resized: split "T1" must still find them (and not T2's)
    _png(tmp_path / "C_T1_L2_3_resized" / "FrameBuffer_0000.png", _bgr(2, 3))
    _png(tmp_path / "C_T1_L2_3_resized" / "Depth_0000.png", np.array([[0, 51, 255]] * 2, np.uint8))
    assert len(sdt.open_dataset("colondepth", tmp_path, split="T1")) == 2
    assert len(sdt.open_dataset("colondepth", tmp_path, split="C_T1")) == 1
    assert sdt.open_dataset("colondepth", tmp_path, full_scale_mm=100)[0]["depth"][0, 2] == pytest.approx(100)


# ------------------------------------------------------------------------------------------------ EndoSLAM
def _endoslam_organ(folder: Path, n: int = 2, nested: bool = False) -> None:
    frames = folder / "Frames" / ("Frames" if nested else "")
    for i in range(n):
        _png(frames / f"image_{i:04d}.png", _bgr(4, 4, i))
        d = np.full((4, 4, 4), 10 + i, np.uint8)
        d[0, 0] = 0
        _png(folder / "Pixelwise Depths" / f"aov_image_{i:04d}.png", d)


def test_endoslam_unitycam_layout_organs(tmp_path):
    unity = tmp_path / "UnityCam"
    _endoslam_organ(unity / "Stomach")
    _endoslam_organ(unity / "Small Intestine", n=1, nested=True)
    _endoslam_organ(unity / "Colon", n=3)
    (unity / "Calibration").mkdir()
    (unity / "Calibration" / "cam.txt").write_text("156.0418,0,178.5604,0,155.7529,181.8043,0,0,1")
    ds = sdt.open_dataset("endoslam", tmp_path)
    assert len(ds) == 6 and ds.depth_unit == "relative"
    st = sdt.open_dataset("endoslam", tmp_path, split="stomach")
    assert len(st) == 2
    s = st[1]
    assert s["disparity"][1, 1] == 11 and s["depth"][1, 1] == pytest.approx(1 / 11)
    assert not s["valid"][0, 0] and s["depth"][0, 0] == 0 and s["disparity"][0, 0] == 0
    assert s["intrinsics"] == Intrinsics(156.0418, 155.7529, 178.5604, 181.8043, 320, 320).scaled(4, 4)
    assert len(sdt.open_dataset("endoslam", tmp_path, organ="small_intestine")) == 1
    assert len(sdt.open_dataset("endoslam", tmp_path, split="SmallIntestine,colon")) == 4
    assert len(sdt.open_dataset("endoslam", unity / "Colon")) == 3
    with pytest.raises(ValueError, match="unknown organ split 'liver'"):
        sdt.open_dataset("endoslam", tmp_path, split="liver")


def test_endoslam_16bit_refused(tmp_path):
    _endoslam_organ(tmp_path / "Stomach", n=1)
    _png(tmp_path / "Stomach" / "Pixelwise Depths" / "aov_image_0000.png", np.full((4, 4), 9, np.uint16))
    with pytest.raises(DatasetError, match=r"aov_image_0000\.png: EndoSLAM depth must be an 8-bit PNG"):
        sdt.open_dataset("endoslam", tmp_path)[0]


# ------------------------------------------------------------------------------------------------ LIIT
def test_liit_simulated_and_translated(tmp_path):
    pat = tmp_path / "simulated" / "patient_01"
    _png(pat / "inputs" / "img00003.png", _bgr(3, 4, 3))
    _tif(pat / "depth" / "depth00003.tiff", np.array([[0, 12.5, 80.0, 250.0]] * 3, np.float32))
    _png(tmp_path / "stylernd" / "patient_01" / "style_00" / "img00003.png", _bgr(3, 4, 9))
    ds = sdt.open_dataset("liit", tmp_path)
    s = ds[0]
    np.testing.assert_array_equal(s["depth"][0], [0, 12.5, 80.0, 250.0])
    np.testing.assert_array_equal(s["image"], cv2.cvtColor(_bgr(3, 4, 3), cv2.COLOR_BGR2RGB))
    t = sdt.open_dataset("liit", tmp_path, style="stylernd")[0]
    np.testing.assert_array_equal(t["image"], cv2.cvtColor(_bgr(3, 4, 9), cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(t["depth"], s["depth"])
    (pat / "depth" / "depth00003.tiff").unlink()
    _png(pat / "depth" / "depth00003.png", np.full((3, 4), 700, np.uint16))
    with pytest.raises(DatasetError, match=r"depth00003\.png: integer depth \(uint16\) needs depth_scale="):
        sdt.open_dataset("liit", tmp_path)[0]
    assert sdt.open_dataset("liit", tmp_path, depth_scale=0.1)[0]["depth"][0, 0] == pytest.approx(70.0)
