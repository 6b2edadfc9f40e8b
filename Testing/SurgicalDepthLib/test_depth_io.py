"""Depth files: exact float round trips, the documented uint16 PNG scale rule, Slicer sequence NRRD."""
from __future__ import annotations

import contextlib
import errno
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from SurgicalDepthLib.depth_io import (PNG_TEXT_KEY, DepthSequenceWriter, load_depth, load_depth_sequence_nrrd,
                                       read_nrrd_header, save_depth, save_depth_sequence_nrrd)


@pytest.fixture
def depth(rng) -> np.ndarray:
    return rng.uniform(20.0, 180.0, (30, 41)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".npy", ".tiff", ".tif", ".nrrd"])
def test_float_formats_exact(tmp_path, depth, suffix):
    path = save_depth(tmp_path / f"d{suffix}", depth)
    back = load_depth(path)
    assert back.dtype == np.float32 and back.shape == depth.shape
    np.testing.assert_array_equal(back, depth)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d{suffix}"]  # no temporary left behind


def test_float_formats_read_by_other_tools(tmp_path, depth):
    save_depth(tmp_path / "d.tiff", depth)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "d.tiff"), cv2.IMREAD_UNCHANGED), depth)
    save_depth(tmp_path / "d.nrrd", depth, spacing=(0.5, 0.25))
    image = sitk.ReadImage(str(tmp_path / "d.nrrd"))
    assert image.GetSize() == (41, 30) and image.GetSpacing() == (0.5, 0.25)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), depth)
    save_depth(tmp_path / "d.npy", depth)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), depth)


def test_png_documented_scale_rule(tmp_path, depth):
    path = save_depth(tmp_path / "d.png", depth, unit="mm")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    scale = float(depth.max()) / 65535  # default: the largest depth uses the full range
    np.testing.assert_array_equal(raw, np.round(depth.astype(np.float64) / scale).astype(np.uint16))
    assert raw.max() == 65535
    back = load_depth(path)
    np.testing.assert_allclose(back, raw * scale, rtol=1e-6)
    assert np.abs(back - depth).max() <= scale / 2 + 1e-4
    # the text chunk is a valid PNG tEXt chunk (CRC checked by an independent reader)
    PIL = pytest.importorskip("PIL.Image")
    meta = json.loads(PIL.open(path).text[PNG_TEXT_KEY])
    assert meta == {"scale": pytest.approx(scale), "unit": "mm"}


def test_png_explicit_scale_invalid_pixels_and_overflow(tmp_path):
    d = np.array([[0.0, 1.0, 2.5], [np.nan, np.inf, -3.0], [65.535, 0.0004, 7.0]], np.float32)
    path = save_depth(tmp_path / "d.png", d, scale=0.001)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    # 0.0004 is below half a count but valid: written as 1 count, not as 0 (= invalid)
    np.testing.assert_array_equal(raw, [[0, 1000, 2500], [0, 0, 0], [65535, 1, 7000]])
    np.testing.assert_allclose(load_depth(path), [[0, 1, 2.5], [0, 0, 0], [65.535, 0.001, 7]], atol=1e-6)
    with pytest.raises(ValueError, match="does not fit uint16"):
        save_depth(tmp_path / "big.png", d * 10, scale=0.001)
    assert not (tmp_path / "big.png").exists()
    # a 16-bit PNG from another tool has no scale chunk: the caller must say
    cv2.imwrite(str(tmp_path / "other.png"), raw)
    with pytest.raises(ValueError, match="no 'SurgicalDepth' text chunk"):
        load_depth(tmp_path / "other.png")
    np.testing.assert_allclose(load_depth(tmp_path / "other.png", scale=0.001), load_depth(path))
    # all-invalid map: scale 1, all zero
    np.testing.assert_array_equal(load_depth(save_depth(tmp_path / "z.png", np.zeros((2, 2)))), 0)


def test_png_default_scale_keeps_a_tiny_valid_depth_valid(tmp_path):
    """Catches: a valid depth below half a count of the default scale (max / 65535) rounded to 0, which the
    format reads as invalid: the pixel vanished from the map."""
    back = load_depth(save_depth(tmp_path / "d.png", np.array([[100.0, 0.0005, np.nan]], np.float32)))
    assert back[0, 0] == pytest.approx(100.0, rel=1e-4) and back[0, 1] > 0 and back[0, 2] == 0


def test_bad_arguments(tmp_path, depth):
    with pytest.raises(ValueError, match="suffix '.jpg'"):
        save_depth(tmp_path / "d.jpg", depth)
    with pytest.raises(ValueError, match=r"2D map \[H, W\], got shape \(2, 30, 41\)"):
        save_depth(tmp_path / "d.npy", np.stack([depth, depth]))
    with pytest.raises(ValueError, match="scale applies to .png only"):
        save_depth(tmp_path / "d.npy", depth, scale=0.1)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_depth(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_depth(tmp_path / "no" / "d.npy", depth)


def test_sequence_nrrd_slicer_layout(tmp_path, rng):
    depths = rng.uniform(1, 5, (5, 12, 17)).astype(np.float32)
    path = save_depth_sequence_nrrd(tmp_path / "clip.seq.nrrd", depths, spacing=(0.5, 0.5), fps=10.0, unit="mm")
    fields, offset = read_nrrd_header(path)
    assert fields["dimension"] == "4" and fields["sizes"] == "17 12 1 5"
    assert fields["kinds"] == "domain domain domain list"
    assert fields["space directions"].endswith("none")
    assert fields["axis 3 index type"] == "numeric" and fields["axis 3 index values"] == "0 0.1 0.2 0.3 0.4"
    assert fields["DataNodeClassName"] == "vtkMRMLScalarVolumeNode" and fields["labels"].endswith('"time"')
    assert path.stat().st_size == offset + depths.nbytes  # raw float32, time axis slowest
    back, values = load_depth_sequence_nrrd(path)
    np.testing.assert_array_equal(back, depths)
    np.testing.assert_allclose(values, [0, 0.1, 0.2, 0.3, 0.4])
    # independent reader: ITK reads the list axis as 5 components per voxel of a 17x12x1 volume
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (17, 12, 1) and image.GetNumberOfComponentsPerPixel() == 5
    assert image.GetSpacing()[:2] == (0.5, 0.5)
    np.testing.assert_array_equal(np.moveaxis(sitk.GetArrayFromImage(image)[0], -1, 0), depths)


def test_sequence_streams_from_iterator_and_is_atomic(tmp_path, rng):
    frames = [rng.uniform(1, 5, (6, 7)).astype(np.float32) for _ in range(4)]
    consumed = []

    def gen():
        for i, f in enumerate(frames):
            consumed.append(i)
            yield f

    path = save_depth_sequence_nrrd(tmp_path / "s.seq.nrrd", gen())
    back, values = load_depth_sequence_nrrd(path, mmap=False)
    np.testing.assert_array_equal(back, np.stack(frames))
    np.testing.assert_array_equal(values, [0, 1, 2, 3])
    # frames go to disk as they come: the raw data grows with each append
    writer = DepthSequenceWriter(tmp_path / "w.seq.nrrd")
    writer.append(frames[0])
    writer._raw.flush()
    assert writer._raw_path.stat().st_size == frames[0].nbytes
    with pytest.raises(ValueError, match=r"frame 1 has shape \(3, 3\), expected \(6, 7\)"):
        writer.append(np.ones((3, 3), np.float32))
    writer.abort()
    # an exception inside the with block leaves nothing behind
    with pytest.raises(RuntimeError):
        with DepthSequenceWriter(tmp_path / "x.seq.nrrd") as w:
            w.append(frames[0])
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.seq.nrrd"]
    with pytest.raises(ValueError, match="no frames"):
        save_depth_sequence_nrrd(tmp_path / "e.seq.nrrd", iter([]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.seq.nrrd"]


# -- a full disk ---------------------------------------------------------------------------------------------------
#: CPython 3.12.1 (pyenv here) segfaults in its garbage collector at exit after this error path, even with only
#: numpy imported and the limit lifted again (it prints the right message first); 3.11 does not.
CRASHES_AFTER_EFBIG = pytest.mark.skipif(sys.version_info[:2] == (3, 12),
                                         reason="CPython 3.12 crashes at exit after a file-size-limit error here")


def disk_full_in_child(code: str, limit: int) -> str:
    """Run ``code`` in a child Python with RLIMIT_FSIZE = ``limit`` bytes around it (the kernel answers EFBIG past
    it; Python ignores SIGXFSZ) and return the message of the DiskFullError it raised. A child, not this process:
    a size limit on the test runner also hits pytest's capture files (it crashed Python 3.12's GC), and it is
    lifted before the child exits (Python 3.12 crashed at exit under it)."""
    pytest.importorskip("resource")
    import subprocess

    program = ("import resource\nimport numpy as np\nfrom SurgicalDepthLib.depth_io import *\n"
               "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, hard))\ntry:\n"
               + "".join(f"    {line}\n" for line in code.splitlines())
               + "except DiskFullError as exc:\n    print(exc)\n"
               "finally:\n    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))\n")
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@CRASHES_AFTER_EFBIG
@pytest.mark.parametrize("suffix", [".npy", ".nrrd", ".tiff", ".png"])
def test_full_disk_names_the_file_and_leaves_nothing(tmp_path, suffix, monkeypatch):
    """Catches: a full disk reported as numpy's "20480 requested and 9184 written" (npy) or as SimpleITK's
    multi-line C++ exception (NRRD) instead of "disk full while writing <file>", and half-written files left."""
    import SurgicalDepthLib.depth_io as depth_io

    depth = np.random.default_rng(0).uniform(1, 9, (200, 200)).astype(np.float32)
    target = tmp_path / f"d{suffix}"
    # ENOSPC from the kernel: the data goes to /dev/full
    monkeypatch.setattr(depth_io, "atomic_path", lambda path: contextlib.nullcontext(Path("/dev/full")))
    with pytest.raises(depth_io.DiskFullError, match=rf"^disk full while writing {re.escape(str(target))} "
                                                     r"\(No space left on device\)$") as info:
        save_depth(target, depth)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    monkeypatch.undo()
    # EFBIG from a file size limit, through the real atomic writer: no temporary file, no partial file
    noise = "np.random.default_rng(0).uniform(1, 9, (200, 200)).astype(np.float32)"  # does not compress below 4 kB
    message = disk_full_in_child(f"save_depth({str(target)!r}, {noise})", 4096)
    assert message.startswith(f"disk full while writing {target}")
    assert list(tmp_path.iterdir()) == []


@CRASHES_AFTER_EFBIG
def test_full_disk_during_a_sequence(tmp_path):
    """Catches: a full disk while appending frames to a .seq.nrrd leaving its large temporary raw file behind or
    raising a bare OSError that names no file."""
    target = tmp_path / "clip.seq.nrrd"
    frame = "np.ones((100, 100), np.float32)"  # 40 kB a frame
    message = disk_full_in_child(f"with DepthSequenceWriter({str(target)!r}) as writer:\n"
                                 f"    for _ in range(10):\n        writer.append({frame})", 100_000)
    assert message.startswith(f"disk full while writing {target}")
    assert list(tmp_path.iterdir()) == []
    # the raw data fits, header + data do not
    message = disk_full_in_child(f"save_depth_sequence_nrrd({str(target)!r}, np.stack([{frame}] * 2))",
                                 2 * 40_000 + 100)
    assert message.startswith(f"disk full while writing {target}")
    assert list(tmp_path.iterdir()) == []


def test_nrrd_header_is_the_one_simpleitk_writes(tmp_path, depth):
    """Catches: the hand-written 2D NRRD drifting from what ITK/Slicer read (fields, spacing, raw layout)."""
    save_depth(tmp_path / "ours.nrrd", depth, spacing=(0.5, 2.0))
    image = sitk.GetImageFromArray(depth)
    image.SetSpacing((0.5, 2.0))
    sitk.WriteImage(image, str(tmp_path / "itk.nrrd"), useCompression=False)
    ours, offset = read_nrrd_header(tmp_path / "ours.nrrd")
    theirs, _ = read_nrrd_header(tmp_path / "itk.nrrd")
    assert set(ours) == set(theirs) and ours["sizes"] == theirs["sizes"] == "41 30"
    assert {k: v for k, v in ours.items() if k != "space directions"} == \
        {k: v for k, v in theirs.items() if k != "space directions"}
    assert sitk.ReadImage(str(tmp_path / "ours.nrrd")).GetSpacing() == (0.5, 2.0)
    assert (tmp_path / "ours.nrrd").stat().st_size == offset + depth.nbytes


@pytest.mark.parametrize("suffix", [".npy", ".png", ".nrrd", ".tiff"])
def test_an_empty_map_is_refused_by_name(tmp_path, suffix):
    """Catches: a ``(0, W)`` map raising ``cv2.error`` (PNG, TIFF: not a ValueError, so a traceback in the CLI) or
    being written as a file no reader takes back (NRRD ``sizes: 41 0``)."""
    with pytest.raises(ValueError, match=r"depth is empty \(shape \(0, 41\)\)"):
        save_depth(tmp_path / f"d{suffix}", np.zeros((0, 41), np.float32))
    assert not list(tmp_path.iterdir())


def test_sequence_times_of_a_long_clip_stay_distinct(tmp_path):
    """Frames 2 h 47 min into a 30 fps clip are 1/30 s apart. Catches: index values written with six significant
    digits, so 10000.0333 s read back as 10000.0 (and 10000.0667 as 10000.1): neighbouring frames shared a time in
    Slicer's sequence browser. Whole numbers (frame numbers) stay written as integers."""
    times = [(300000 + k) / 30.0 for k in range(4)]
    path = save_depth_sequence_nrrd(tmp_path / "long.seq.nrrd", np.ones((4, 2, 3), np.float32), fps=30.0,
                                    index_values=times)
    assert load_depth_sequence_nrrd(path)[1].tolist() == times  # exact round trip
    frames = save_depth_sequence_nrrd(tmp_path / "frames.seq.nrrd", np.ones((3, 2, 3), np.float32))
    assert read_nrrd_header(frames)[0]["axis 3 index values"] == "0 1 2"


@pytest.mark.parametrize("suffix", [".nrrd", ".tiff", ".tif"])
def test_nrrd_and_tiff_maps_name_their_unit(tmp_path, depth, suffix):
    """``unit`` is what the values are (``disparity`` or a metric unit); a reader of the file alone must be able to
    tell. Catches: only PNG maps recording it (NRRD and TIFF maps were bare floats, though ``predict`` says the unit
    is stored in the file). Read back by independent readers (ITK's metadata, the TIFF ImageDescription via
    Pillow) and the values stay exact for every reader."""
    from PIL import Image

    for unit in ("disparity", "mm", "m"):  # "m" and "mm" fit inside the TIFF tag's entry itself
        path = save_depth(tmp_path / f"{unit}{suffix}", depth, unit=unit)
        np.testing.assert_array_equal(load_depth(path), depth)
        if suffix == ".nrrd":
            image = sitk.ReadImage(str(path))
            assert image.GetMetaData("depth unit") == unit
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), depth)
        else:
            with Image.open(path) as tiff:
                assert json.loads(tiff.tag_v2[270]) == {"unit": unit}
                np.testing.assert_array_equal(np.asarray(tiff), depth)
            np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), depth)
    assert read_nrrd_header(save_depth(tmp_path / "none.nrrd", depth))[0].get("depth unit") is None
    if suffix == ".nrrd":
        with pytest.raises(ValueError, match="unit must be printable ASCII"):
            save_depth(tmp_path / "bad.nrrd", depth, unit="mm\ndimension: 3")
