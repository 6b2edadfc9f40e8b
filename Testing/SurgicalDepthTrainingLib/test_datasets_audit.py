"""Dataset loaders: bad-input messages, pairing, order, validity and camera fitting found by the loader audit."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import SurgicalDepthTrainingLib as sdt
from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthTrainingLib.datasets import DatasetError

NOT_TEXT = b"\x89PNG\r\n\x1a\n\xff\xd8\xff"  # an image given where a text file belongs


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _bgr(h: int = 4, w: int = 6) -> np.ndarray:
    return np.full((h, w, 3), 120, np.uint8)


def _hamlyn(root: Path, h: int = 4, w: int = 6) -> Path:
    seq = root / "rectified01"
    _png(seq / "image01" / "0000000000.jpg", _bgr(h, w))
    _png(seq / "depth01" / "0000000000.png", np.full((h, w), 50, np.uint16))
    return seq


# ------------------------------------------------------------------------------------------------ text files
def test_binary_text_files_name_the_file(tmp_path):
    """Catches: a dataset's text file (Hamlyn intrinsics.txt, C3VD pose.txt, SimCol3D misc/*_file.txt, synthetic
    meta.json) that is not text ending in Python's bare "'utf-8' codec can't decode byte 0x89" (a
    UnicodeDecodeError naming no file) instead of a DatasetError naming it."""
    seq = _hamlyn(tmp_path / "hamlyn")
    (seq / "intrinsics.txt").write_bytes(NOT_TEXT)
    with pytest.raises(DatasetError, match=r"rectified01/intrinsics\.txt is not a text file"):
        sdt.open_dataset("hamlyn", tmp_path / "hamlyn")[0]

    c3 = tmp_path / "c3" / "seq"  # a made-up sequence in C3VD's published layout (no C3VD data)
    _png(c3 / "0_color.png", _bgr())
    _png(c3 / "0_depth.tiff", np.full((4, 6), 5000, np.uint16))
    (c3 / "pose.txt").write_bytes(NOT_TEXT)
    with pytest.raises(DatasetError, match=r"seq/pose\.txt is not a text file"):
        sdt.open_dataset("c3vd", tmp_path / "c3")[0]

    sc = tmp_path / "simcol"
    _png(sc / "SyntheticColon_I" / "Frames_S1" / "FrameBuffer_0000.png", _bgr())
    _png(sc / "SyntheticColon_I" / "Frames_S1" / "Depth_0000.png", np.full((4, 6), 5000, np.uint16))
    (sc / "misc").mkdir()
    (sc / "misc" / "train_file.txt").write_bytes(NOT_TEXT)
    with pytest.raises(DatasetError, match=r"misc/train_file\.txt is not a text file"):
        sdt.open_dataset("simcol3d", sc, split="train")

    syn = tmp_path / "syn"
    (syn / "rgb").mkdir(parents=True)
    (syn / "meta.json").write_bytes(NOT_TEXT)
    with pytest.raises(DatasetError, match=r"syn/meta\.json is not a text file"):
        sdt.open_dataset("synthetic", syn)


def test_text_files_with_a_byte_order_mark_are_read(tmp_path):
    """Catches: a Hamlyn intrinsics.txt saved by Notepad (UTF-8 with a byte-order mark) refused as holding "a
    non-number" ('\\ufeff383.19'), since ``Path.read_text`` keeps the mark."""
    seq = _hamlyn(tmp_path)
    (seq / "intrinsics.txt").write_bytes("383.19 0 2.5 0\n0 383.19 1.5 0\n0 0 1 0\n".encode("utf-8-sig"))
    assert sdt.open_dataset("hamlyn", tmp_path)[0]["intrinsics"] == Intrinsics(383.19, 383.19, 2.5, 1.5, 6, 4)


# ------------------------------------------------------------------------------------------------ folder
def test_folder_images_and_depth_in_one_folder(tmp_path):
    """Catches: ``image_dir="." depth_dir="." match="{stem}_depth.png"`` (the documented options for frames beside
    their depth) failing with "0000_depth.png: RGB image has no depth file (expected 0000_depth_depth.png)": the
    depth PNGs were listed as RGB images too."""
    for i in range(3):
        _png(tmp_path / f"{i:04d}.png", _bgr())
        _png(tmp_path / f"{i:04d}_depth.png", np.full((4, 6), 500 + i, np.uint16))
    ds = sdt.open_dataset("folder", tmp_path, image_dir=".", depth_dir=".", match="{stem}_depth.png",
                          depth_scale=0.1)
    assert [(p.rgb.name, p.depth.name) for p in ds.pairs] == [(f"{i:04d}.png", f"{i:04d}_depth.png")
                                                            for i in range(3)]
    assert ds[2]["depth"][0, 0] == pytest.approx(50.2)


def test_folder_same_stem_in_one_folder_is_not_its_own_depth(tmp_path):
    """Catches: with one folder for both and ``match="stem"``, a depth PNG listed as an image paired with itself
    (the depth map read as the RGB image), a duplicated pair."""
    _png(tmp_path / "0001.jpg", _bgr())
    _png(tmp_path / "0001.png", np.full((4, 6), 700, np.uint16))
    ds = sdt.open_dataset("folder", tmp_path, image_dir=".", depth_dir=".", depth_glob="*.png", depth_scale=0.1)
    assert [(p.rgb.name, p.depth.name) for p in ds.pairs] == [("0001.jpg", "0001.png")]


def test_folder_ambiguous_depth_match_is_an_error(tmp_path):
    """Catches: ``match="index"`` silently pairing frame 1 with whichever of ``0001.png`` and a preview
    ``0001_color.png`` sorted last (the preview), instead of naming both."""
    _png(tmp_path / "rgb" / "frame_1.png", _bgr())
    _png(tmp_path / "depth" / "0001.png", np.full((4, 6), 700, np.uint16))
    _png(tmp_path / "depth" / "0001_color.png", _bgr())
    with pytest.raises(DatasetError, match=r"frame_1\.png: 2 depth files match it \(0001\.png, 0001_color\.png\)"):
        sdt.open_dataset("folder", tmp_path, match="index", depth_scale=0.1)


def test_folder_and_hamlyn_list_frames_in_numeric_order(tmp_path):
    """Catches: frames with unpadded numbers listed lexicographically (frame_1, frame_10, frame_2), so the report's
    per-image rows and the sample indices were out of frame order."""
    for i in (1, 2, 10):
        _png(tmp_path / "f" / "rgb" / f"frame_{i}.png", _bgr())
        _png(tmp_path / "f" / "depth" / f"frame_{i}.png", np.full((4, 6), 500, np.uint16))
        _png(tmp_path / "h" / "rectified01" / "image01" / f"{i}.jpg", _bgr())
        _png(tmp_path / "h" / "rectified01" / "depth01" / f"{i}.png", np.full((4, 6), 500, np.uint16))
    folder = sdt.open_dataset("folder", tmp_path / "f", depth_scale=0.1)
    assert [p.rgb.name for p in folder.pairs] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    assert [Path(folder[i]["name"]).name for i in range(3)] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    hamlyn = sdt.open_dataset("hamlyn", tmp_path / "h")
    assert [p.rgb.name for p in hamlyn.pairs] == ["1.jpg", "2.jpg", "10.jpg"]


def test_folder_depth_overflowing_float32_is_invalid(tmp_path):
    """Catches: a float64 .npy value past float32's range (1e39) kept as valid depth ``inf`` (valid True), which
    evaluation would then measure."""
    _png(tmp_path / "rgb" / "a.png", _bgr())
    (tmp_path / "depth").mkdir()
    depth = np.full((4, 6), 20.0)
    depth[0, 0] = 1e39
    np.save(tmp_path / "depth" / "a.npy", depth)
    s = sdt.open_dataset("folder", tmp_path)[0]
    assert not s["valid"][0, 0] and s["depth"][0, 0] == 0 and np.isfinite(s["depth"]).all()
    assert s["valid"].sum() == 23


# ------------------------------------------------------------------------------------------------ SERV-CT
def test_servct_blue_occlusion_pixels_have_no_reference(tmp_path):
    """Catches: SERV-CT pixels the occlusion image colours blue ("outside the reference surface"; the authors'
    toolkit servcttk drops them whatever the depth file holds) kept valid when the depth PNG has a value there,
    so metrics measured them; the other colours (yellow, red, green) must stay valid."""
    exp = tmp_path / "Experiment_1"
    _png(exp / "Left_rectified" / "001.png", _bgr(2, 5))
    _png(exp / "Reference_CT" / "DepthL" / "001.png", np.full((2, 5), 2560, np.uint16))
    occ = np.zeros((2, 5, 3), np.uint8)  # BGR: blue, yellow, red, green, black
    occ[:, 0], occ[:, 1], occ[:, 2], occ[:, 3] = (255, 0, 0), (0, 255, 255), (0, 0, 255), (0, 255, 0)
    _png(exp / "Reference_CT" / "OcclusionL" / "001.png", occ)
    s = sdt.open_dataset("servct", tmp_path)[0]
    assert s["valid"][0].tolist() == [False, True, True, True, True]
    assert s["depth"][0, 0] == 0 and s["depth"][0, 1] == pytest.approx(10.0)
    _png(exp / "Reference_CT" / "OcclusionL" / "001.png", np.zeros((3, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"OcclusionL/001\.png: occlusion image is 5x3"):
        sdt.open_dataset("servct", tmp_path)[0]


# ------------------------------------------------------------------------------------------------ intrinsics=
def test_intrinsics_override_of_another_aspect_ratio_is_an_error(tmp_path):
    """Catches: ``intrinsics=`` (``evaluate --intrinsics``) calibrated for 1350x1080 stretched onto 64x64 images
    (fx 33.2 but fy 41.5 for a square-pixel camera) without a word; ``predict``/``reconstruct`` refuse another
    aspect ratio. The same aspect ratio is still rescaled."""
    _hamlyn(tmp_path / "h", 64, 64)
    calib = tmp_path / "c3vd_like.json"
    calib.write_text(json.dumps({"fx": 700, "fy": 700, "cx": 674.5, "cy": 539.5, "width": 1350, "height": 1080}))
    with pytest.raises(DatasetError, match=r"0000000000\.jpg: intrinsics from .*c3vd_like\.json: .*1350x1080"):
        sdt.open_dataset("hamlyn", tmp_path / "h", intrinsics=calib)[0]
    with pytest.raises(DatasetError, match="aspect ratio"):
        sdt.open_dataset("hamlyn", tmp_path / "h", intrinsics=Intrinsics(700, 700, 674.5, 539.5, 1350, 1080))[0]
    same_aspect = Intrinsics(200.0, 200.0, 127.5, 127.5, 256, 256)
    got = sdt.open_dataset("hamlyn", tmp_path / "h", intrinsics=same_aspect)[0]["intrinsics"]
    assert got == Intrinsics(50.0, 50.0, 31.5, 31.5, 64, 64)


def test_intrinsics_override_bare_matrix_file_takes_the_image_size(tmp_path):
    """Catches: ``intrinsics=K.txt`` (9 numbers, EndoSLAM's cam.txt format, which states no image size) refused
    when the dataset opened ("holds no image size; pass width and height"), though the images give the size
    and ``evaluate`` has no way to pass one; a file that is no calibration still fails at opening."""
    _hamlyn(tmp_path / "h", 64, 64)
    (tmp_path / "K.txt").write_text("156.04,0,31.5,0,155.75,31.5,0,0,1\n")
    got = sdt.open_dataset("hamlyn", tmp_path / "h", intrinsics=tmp_path / "K.txt")[0]["intrinsics"]
    assert got == Intrinsics(156.04, 155.75, 31.5, 31.5, 64, 64)
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt"):
        sdt.open_dataset("hamlyn", tmp_path / "h", intrinsics=tmp_path / "bad.txt")


# ------------------------------------------------------------------------------------------------ SCARED
def _scared_keyframe(kf: Path, h: int, w: int) -> None:
    _png(kf / "Left_Image.png", _bgr(h, w))
    _png(kf / "left_depth_map.tiff", np.full((h, w), 60.0, np.float32))  # a single-channel Z map
    fs = cv2.FileStorage(str(kf / "endoscope_calibration.yaml"), cv2.FILE_STORAGE_WRITE)
    fs.write("M1", np.array([[1035.3, 0, 597.0], [0, 1035.1, 509.0], [0, 0, 1]]))  # for the 1280 x 1024 frames
    fs.release()


def test_scared_calibration_of_resized_keyframes(tmp_path):
    """Catches: ``M1`` (the camera of SCARED's recorded 1280x1024 frames) given unchanged to keyframes resized to
    320x256: every sample failed with "Intrinsics.cx=597 px lies far outside the 320x256 image", naming no file
    (and a resize that kept the principal point inside would have got a camera 4x too narrow). A crop to another
    aspect ratio gets no camera instead of a wrong one."""
    _scared_keyframe(tmp_path / "small" / "dataset_1" / "keyframe_1", 256, 320)
    intr = sdt.open_dataset("scared", tmp_path / "small")[0]["intrinsics"]
    assert intr.size == (320, 256)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((1035.3 / 4, 1035.1 / 4, 148.875, 126.875))
    _scared_keyframe(tmp_path / "crop" / "dataset_1" / "keyframe_1", 4, 6)
    assert sdt.open_dataset("scared", tmp_path / "crop")[0]["intrinsics"] is None
