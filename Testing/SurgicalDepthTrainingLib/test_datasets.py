"""Dataset registry, the ``synthetic`` and ``folder`` loaders, bad-input handling, and the real shared samples."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import SurgicalDepthTrainingLib as sdt
from SurgicalDepthLib.camera import Intrinsics
from SurgicalDepthTrainingLib.datasets import DatasetError, collate_samples

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
NAMES = ["colondepth", "endoslam", "c3vd", "simcol3d", "scared", "hamlyn", "servct", "liit", "synthetic", "folder"]


def _samples(sub: str) -> Path:
    path = SAMPLES / sub
    if not path.is_dir():
        pytest.skip(f"real dataset samples not available ({path})")
    return path


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_synthetic(root: Path, frames: int = 3, h: int = 6, w: int = 8, scale: float = 0.01) -> dict:
    """A tiny sequence in the ``synthetic`` layout, written by hand: returns the values written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"format": "surgical-depth-synthetic", "version": 1,
                                                "organ": "colon", "seed": 3, "frames": frames,
                                                "depth_scale_mm": scale}))
    (root / "intrinsics.json").write_text(json.dumps({"fx": 5.0, "fy": 6.0, "cx": 3.5, "cy": 2.5, "width": w,
                                                      "height": h, "distortion": None}))
    poses, rgbs, raws = [], [], []
    lines = ["# frame m00 ... m33 (camera-to-world, mm)"]
    for i in range(frames):
        pose = np.eye(4)
        pose[:3, 3] = [i, 2.0 * i, -3.5]
        poses.append(pose)
        lines.append(" ".join([str(i)] + [repr(float(v)) for v in pose.ravel()]))
        raw = (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 997 + 1000 * (i + 1)).astype(np.uint16)
        raw[0, 0] = 0  # invalid
        rgb = _rgb(h, w, i)
        _write_png(root / "rgb" / f"{i:06d}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        _write_png(root / "depth" / f"{i:06d}.png", raw)
        rgbs.append(rgb)
        raws.append(raw)
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    return {"poses": poses, "rgbs": rgbs, "raws": raws, "scale": scale}


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- registry
def test_registry_names():
    assert sdt.list_datasets() == NAMES
    assert set(sdt.DATASETS) == set(NAMES)
    for cls in sdt.DATASETS.values():
        assert issubclass(cls, torch.utils.data.Dataset)
        assert cls.depth_unit in ("mm", "relative")


@pytest.mark.parametrize("name,cap", [("scared", 150.0), ("hamlyn", 150.0), ("c3vd", 100.0), ("simcol3d", 200.0),
                                      ("colondepth", 200.0), ("servct", 300.0), ("liit", 300.0)])
def test_default_ranges(name, cap):
    cls = sdt.DATASETS[name]
    assert cls.max_depth == cap and cls.min_depth == 1e-3 and cls.depth_unit == "mm"


def test_root_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match=r"root must be a folder, got a file: .*f\.txt"):
        sdt.open_dataset("hamlyn", tmp_path / "f.txt")


def test_unknown_name_and_option(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        sdt.open_dataset("kitti", tmp_path)
    make_synthetic(tmp_path / "seq")
    with pytest.raises(ValueError, match="bogus"):
        sdt.open_dataset("synthetic", tmp_path, bogus=1)


def test_options_are_checked_against_the_loader_signature(tmp_path, monkeypatch):
    """Catches unknown options recognised by a TypeError's text: an unknown option is a ValueError naming it and
    the valid ones (also for a loader that passes ``**options`` on to its base), while a TypeError raised inside a
    loader stays a TypeError (its text said "unexpected keyword argument" too, so it was turned into a bad option)."""
    common = {"skip_bad", "min_depth", "max_depth", "intrinsics"}
    for cls in sdt.DATASETS.values():
        assert common <= cls.option_names() and not {"root", "split", "self"} & cls.option_names()
    assert sdt.DATASETS["endoslam"].option_names() == common | {"organ"}
    assert {"depth_scale", "image_dir", "style"} <= sdt.DATASETS["liit"].option_names()  # its own and folder's
    make_synthetic(tmp_path / "seq")
    with pytest.raises(ValueError, match=r"^dataset 'synthetic': unknown option\(s\) \['bogus', 'side'\]; "
                                         r"expected some of \['intrinsics', 'max_depth', 'min_depth', 'skip_bad'\]"):
        sdt.open_dataset("synthetic", tmp_path, bogus=1, side="left")
    assert len(sdt.open_dataset("synthetic", tmp_path, skip_bad=True, max_depth=100.0)) == 3

    def broken(self):
        raise TypeError("helper() got an unexpected keyword argument 'x'")

    monkeypatch.setattr(sdt.DATASETS["synthetic"], "_list_pairs", broken)
    with pytest.raises(TypeError, match="helper"):
        sdt.open_dataset("synthetic", tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_missing_root(tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        sdt.open_dataset(name, missing)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "folder"])
def test_empty_root_says_no_pairs(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="no RGB/depth pairs found"):
        sdt.open_dataset(name, tmp_path)


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_range_is_the_renderers_cap(tmp_path):
    """Catches the loader reading a top-level ``max_depth_mm`` that ``write_synthetic`` never writes (it records the
    renderer's cap inside ``generator``): evaluation then clamped to 655.35 mm instead of the data set's 300."""
    from SurgicalDepthTrainingLib.synthetic import SceneConfig, SceneGenerator, write_synthetic

    config = SceneConfig(organ="colon", height=24, width=32, seed=1, max_depth_mm=120.0)
    frames = (f.as_dict() for f in SceneGenerator(config).iter_frames(1))
    write_synthetic(frames, tmp_path / "seq", {"organ": "colon", "seed": 1, "generator": config.to_dict()})
    ds = sdt.open_dataset("synthetic", tmp_path / "seq")
    assert ds.max_depth == pytest.approx(120.0)
    assert ds[0]["depth"][ds[0]["valid"]].max() <= 120.0


def test_synthetic_round_trip(tmp_path):
    written = make_synthetic(tmp_path / "seq_a")
    before = _tree_digest(tmp_path)
    ds = sdt.open_dataset("synthetic", tmp_path / "seq_a")
    assert len(ds) == 3 and ds.depth_unit == "mm"
    assert ds.max_depth == pytest.approx(655.35)
    for i in range(3):
        s = ds[i]
        assert s["image"].dtype == np.uint8 and s["image"].shape == (6, 8, 3)
        np.testing.assert_array_equal(s["image"], written["rgbs"][i])
        raw = written["raws"][i]
        np.testing.assert_array_equal(s["valid"], raw > 0)
        np.testing.assert_allclose(s["depth"], raw.astype(np.float64) * 0.01, rtol=1e-6)
        assert s["depth"].dtype == np.float32 and s["depth"][0, 0] == 0
        np.testing.assert_array_equal(s["pose"], written["poses"][i])
        assert s["pose"].dtype == np.float64
        assert s["intrinsics"] == Intrinsics(5.0, 6.0, 3.5, 2.5, 8, 6)
        assert s["name"] == str(tmp_path / "seq_a" / "rgb" / f"{i:06d}.png")
        assert s["depth_unit"] == "mm"
    assert _tree_digest(tmp_path) == before  # nothing in the dataset folder was touched


def test_synthetic_root_with_sequences_and_split(tmp_path):
    make_synthetic(tmp_path / "seq_b", frames=2)
    make_synthetic(tmp_path / "seq_a", frames=3)
    ds = sdt.open_dataset("synthetic", tmp_path)
    assert [Path(ds[i]["name"]).parent.parent.name for i in range(len(ds))] == ["seq_a"] * 3 + ["seq_b"] * 2
    assert len(sdt.open_dataset("synthetic", tmp_path, split="seq_b")) == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)
    batches = list(loader)
    assert [len(b["name"]) for b in batches] == [2, 2, 1]
    b = batches[0]
    assert b["image"].shape == (2, 6, 8, 3) and b["image"].dtype == torch.uint8
    assert b["depth"].dtype == torch.float32 and b["valid"].dtype == torch.bool
    assert isinstance(b["intrinsics"][0], Intrinsics) and b["pose"][1].shape == (4, 4)
    np.testing.assert_array_equal(b["depth"][1].numpy(), ds[1]["depth"])


def test_synthetic_bad_meta(tmp_path):
    make_synthetic(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other", "version": 1, "depth_scale_mm": 0.01}))
    with pytest.raises(DatasetError, match=r"meta\.json: 'format' must be"):
        sdt.open_dataset("synthetic", tmp_path)


# ------------------------------------------------------------------------------------------- bad input
def test_rgb_without_depth(tmp_path, caplog):
    make_synthetic(tmp_path)
    (tmp_path / "depth" / "000001.png").unlink()
    with pytest.raises(DatasetError, match=r"000001\.png: RGB image has no depth file"):
        sdt.open_dataset("synthetic", tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = sdt.open_dataset("synthetic", tmp_path, skip_bad=True)
    assert len(ds) == 2 and ds.skipped == 1 and "000001.png" in caplog.text


def test_depth_size_mismatch(tmp_path):
    make_synthetic(tmp_path)
    _write_png(tmp_path / "depth" / "000002.png", np.full((5, 8), 500, np.uint16))
    ds = sdt.open_dataset("synthetic", tmp_path)
    with pytest.raises(DatasetError, match=r"depth[/\\]000002\.png: depth is 8x5 \(WxH\) but its RGB .* is 8x6"):
        ds[2]


def test_8bit_depth_refused_and_default_cv2_read_would_truncate(tmp_path):
    make_synthetic(tmp_path)
    raw = cv2.imread(str(tmp_path / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED)
    default = cv2.imread(str(tmp_path / "depth" / "000000.png"))  # what a careless reader gets
    assert default.dtype == np.uint8 and not np.array_equal(default[..., 0].astype(np.uint16), raw)
    np.testing.assert_allclose(sdt.open_dataset("synthetic", tmp_path)[0]["depth"], raw * 0.01, rtol=1e-6)
    _write_png(tmp_path / "depth" / "000000.png", np.full((6, 8), 100, np.uint8))
    with pytest.raises(DatasetError, match=r"000000\.png: depth file is 8-bit uint8, expected 16-bit"):
        sdt.open_dataset("synthetic", tmp_path)[0]


def test_unreadable_file(tmp_path):
    make_synthetic(tmp_path)
    (tmp_path / "depth" / "000001.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"000001\.png: unreadable image file"):
        sdt.open_dataset("synthetic", tmp_path)[1]


def test_rgb_files_16bit_rgba_grey_and_bad(tmp_path):
    """Catches the loaders' RGB reader drifting from ``sd.read_image`` (16-bit high byte, alpha dropped, grey
    expanded) and a bad RGB file escaping as something other than :class:`DatasetError` (``skip_bad`` skips only
    those)."""
    written = make_synthetic(tmp_path)
    rgb16 = written["rgbs"][0].astype(np.uint16) * 256 + 200  # high byte = the 8-bit value
    _write_png(tmp_path / "rgb" / "000000.png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    rgba = np.concatenate([written["rgbs"][1], np.full((6, 8, 1), 7, np.uint8)], axis=2)
    _write_png(tmp_path / "rgb" / "000001.png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    _write_png(tmp_path / "rgb" / "000002.png", written["rgbs"][2][..., 0])
    ds = sdt.open_dataset("synthetic", tmp_path)
    np.testing.assert_array_equal(ds[0]["image"], written["rgbs"][0])
    np.testing.assert_array_equal(ds[1]["image"], written["rgbs"][1])
    np.testing.assert_array_equal(ds[2]["image"], np.repeat(written["rgbs"][2][..., :1], 3, axis=2))
    (tmp_path / "rgb" / "000001.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot decode image .*000001\.png"):
        ds[1]
    (tmp_path / "rgb" / "000002.png").unlink()
    with pytest.raises(DatasetError, match=r"000002\.png: file not found"):
        ds[2]
    ds = sdt.open_dataset("synthetic", tmp_path, skip_bad=True)
    (tmp_path / "rgb" / "000000.png").unlink()
    with pytest.raises(DatasetError, match="every pair .* is bad"):
        ds[0]


def test_all_invalid_depth_and_skip_bad(tmp_path, caplog):
    make_synthetic(tmp_path)
    _write_png(tmp_path / "depth" / "000001.png", np.zeros((6, 8), np.uint16))
    with pytest.raises(DatasetError, match=r"000001\.png: depth has no valid pixel"):
        sdt.open_dataset("synthetic", tmp_path)[1]
    ds = sdt.open_dataset("synthetic", tmp_path, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        names = [Path(ds[i]["name"]).name for i in range(len(ds))]
    assert names == ["000000.png", "000002.png", "000002.png"]  # the bad pair is replaced by the next good one
    assert ds.skipped == 1 and ds.bad == [str(tmp_path / "rgb" / "000001.png")]
    assert "no valid pixel" in caplog.text


def test_index_out_of_range(tmp_path):
    make_synthetic(tmp_path)
    ds = sdt.open_dataset("synthetic", tmp_path)
    with pytest.raises(IndexError, match="index 3 out of range for 3 pairs"):
        ds[3]
    assert ds[-1]["name"].endswith("000002.png")


# ------------------------------------------------------------------------------------------- folder
def test_folder_scale_and_matching(tmp_path):
    _write_png(tmp_path / "images" / "a_01.png", cv2.cvtColor(_rgb(4, 5), cv2.COLOR_RGB2BGR))
    _write_png(tmp_path / "gt" / "a_01_depth.png", np.array([[0, 1, 2, 3, 65535]] * 4, np.uint16))
    with pytest.raises(DatasetError, match="a_01.png: RGB image has no depth file"):
        sdt.open_dataset("folder", tmp_path, depth_dir="gt", depth_scale=0.1)
    ds = sdt.open_dataset("folder", tmp_path, depth_dir="gt", match="{stem}_depth.png", depth_scale=0.1)
    s = ds[0]
    np.testing.assert_allclose(s["depth"][0], [0, 0.1, 0.2, 0.3, 6553.5], rtol=1e-6)
    np.testing.assert_array_equal(s["valid"][0], [False, True, True, True, True])
    ds_idx = sdt.open_dataset("folder", tmp_path, depth_dir="gt", match="index", depth_scale=1.0)
    assert ds_idx[0]["depth"][0, 1] == 1.0


def test_folder_needs_scale_for_integers_and_reads_float(tmp_path):
    _write_png(tmp_path / "rgb" / "0.png", _rgb(3, 3))
    _write_png(tmp_path / "depth" / "0.png", np.full((3, 3), 7, np.uint16))
    with pytest.raises(DatasetError, match=r"0\.png: integer depth \(uint16\) needs depth_scale="):
        sdt.open_dataset("folder", tmp_path)[0]
    (tmp_path / "depth" / "0.png").unlink()
    d = np.full((3, 3), 12.25, np.float32)
    d[1, 1] = np.nan
    np.save(tmp_path / "depth" / "0.npy", d)
    s = sdt.open_dataset("folder", tmp_path, depth_unit="relative")[0]
    assert s["depth_unit"] == "relative" and s["depth"][0, 0] == 12.25 and not s["valid"][1, 1]
    assert s["depth"][1, 1] == 0


# ------------------------------------------------------------------------------------------- real samples
def _manifest(dataset: str) -> list[dict]:
    with open(_samples(dataset).parent / "MANIFEST.tsv", newline="") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["dataset"] == dataset]


def test_simcol3d_sample_matches_manifest():
    root = _samples("simcol3d")
    rows = _manifest("simcol3d")
    ds = sdt.open_dataset("simcol3d", root)
    assert len(ds) == len(rows) == 10
    for i, row in enumerate(rows):
        s = ds[i]
        assert Path(s["name"]).name == Path(row["rgb_path"]).name
        assert s["image"].shape == (int(row["height"]), int(row["width"]), 3)
        assert s["valid"].all()  # README: no zeros in these files
        d = s["depth"]
        assert float(d.min()) == pytest.approx(float(row["depth_min_mm"]), abs=1e-3)
        assert float(np.median(d)) == pytest.approx(float(row["depth_median_mm"]), abs=1e-3)
        assert float(d.max()) == pytest.approx(float(row["depth_max_mm"]), abs=1e-3)
    s = ds[0]
    raw = cv2.imread(str(root / "FrameBuffer_0000.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(s["image"], cv2.cvtColor((raw >> 8).astype(np.uint8), cv2.COLOR_BGRA2RGB))
    assert s["intrinsics"] == Intrinsics(227.60416, 227.60416, 237.5, 237.5, 475, 475)
    assert s["pose"] is None  # no SavedPosition files beside the sample


def test_endoslam_sample_relative_inverse():
    root = _samples("endoslam")
    ds = sdt.open_dataset("endoslam", root)
    assert len(ds) == 50 and ds.depth_unit == "relative" and ds.max_depth is None
    s = ds[0]
    raw = cv2.imread(str(root / "depth" / "aov_image_0000.png"), cv2.IMREAD_UNCHANGED)[..., 0].astype(np.float32)
    rgb = cv2.imread(str(root / "frames" / "image_0000.png"))
    # README: about 7 % of pixels are the black corners outside the capsule's field of view -> invalid
    assert 0.06 < 1 - s["valid"].mean() < 0.08 and (rgb[~s["valid"]].max(axis=1) <= 5).all()
    np.testing.assert_array_equal(s["disparity"][s["valid"]], raw[s["valid"]])
    np.testing.assert_allclose(s["depth"][s["valid"]], 1.0 / raw[s["valid"]], rtol=1e-6)
    assert s["depth_unit"] == "relative" and s["image"].shape == (320, 320, 3)
    with pytest.raises(FileNotFoundError, match="no RGB/depth pairs"):
        sdt.open_dataset("endoslam", root, split="colon")  # the sample folder names no organ
    # README statistics over all 50 depth images: min 1, median 9, max 51, no zeros
    raw_all = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., 0] for p in sorted((root / "depth").glob("*.png"))])
    assert (raw_all.min(), np.median(raw_all), raw_all.max()) == (1, 9, 51)
    disp = np.stack([ds[i]["disparity"] for i in range(len(ds))])
    assert 45 <= disp.max() <= 51 and disp[disp > 0].min() >= 1  # the 51 lies in a masked corner


def test_sample_files_match_manifest_hashes():
    root = _samples("simcol3d").parent
    for dataset in ("simcol3d", "endoslam"):
        for row in _manifest(dataset)[:3]:
            for key in ("rgb", "depth"):
                digest = hashlib.sha256((root / row[f"{key}_path"]).read_bytes()).hexdigest()
                assert digest == row[f"{key}_sha256"], row[f"{key}_path"]


def test_endoslam_field_of_view_mask_keeps_the_dark_lumen():
    from SurgicalDepthTrainingLib.datasets.endoslam import outside_field_of_view

    rgb = np.full((40, 40, 3), 120, np.uint8)
    yy, xx = np.mgrid[:40, :40]
    corners = (np.abs(yy - 19.5) + np.abs(xx - 19.5)) > 30  # octagon-like masked corners
    rgb[corners] = 0
    rgb[17:23, 17:23] = 2  # the dark lumen in the middle: inside the field of view
    out = outside_field_of_view(rgb)
    assert np.array_equal(out, corners)
