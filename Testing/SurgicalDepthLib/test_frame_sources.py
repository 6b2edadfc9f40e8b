"""Frame sources on real folders: which files a folder or glob lists (suffixes, earlier runs' outputs, links)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from SurgicalDepthLib.frame_sources import frame_source_images, frame_source_kind, frame_source_videos
from SurgicalDepthLib.run_folder import RunFolder
from SurgicalDepthLib.video import open_frames, read_image, write_image


def _rgb(seed: int, h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_webp_images_are_frames(tmp_path):
    """Catches WebP images (lossless ones too: exported by browsers and annotation tools) refused alone as an
    "unsupported suffix" and silently left out of a folder, though OpenCV reads them; upper-case suffixes count."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(("f1.webp", "f2.PNG", "f10.WEBP")):
        ok, buf = cv2.imencode(Path(name).suffix.lower(), _rgb(i)[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])
        assert ok  # WebP quality > 100: lossless
        (folder / name).write_bytes(buf.tobytes())
    assert frame_source_kind(folder / "f1.webp") == "image"
    assert [p.name for p in frame_source_images(folder)] == ["f1.webp", "f2.PNG", "f10.WEBP"]
    frames = list(open_frames(folder))
    for i, rgb in enumerate(frames):
        np.testing.assert_array_equal(rgb, _rgb(i))
    np.testing.assert_array_equal(next(iter(open_frames(folder / "f10.WEBP"))), _rgb(2))


def _earlier_run(folder: Path, command: str, files: dict[str, np.ndarray]) -> None:
    """Write ``files`` (relative name -> RGB image) into ``folder`` as a ``command`` run does (its manifest)."""
    with RunFolder(folder, command) as run:
        for name, rgb in files.items():
            write_image(run.path(name), rgb)


def test_outputs_of_an_earlier_run_are_no_frames(tmp_path):
    """Catches a glob over sibling folders (``data/*/*.png``) reading the colour maps and masks that an earlier
    ``predict`` run wrote into ``data/depth`` as frames: a rerun into ``data/depth2`` wrote ``x_color_depth.npy``,
    and with ``--video`` the colour maps became frames of the clip. A data set written by ``synth`` is frames, not
    outputs; a user's own image beside a run's outputs stays a frame."""
    data = tmp_path / "data"
    (data / "clip").mkdir(parents=True)
    for i in (1, 2):
        write_image(data / "clip" / f"x{i}.png", _rgb(i))
    _earlier_run(data / "depth", "predict", {"x1_color.png": _rgb(5), "x1_fov.png": _rgb(6),
                                             "seq/000000_color.png": _rgb(7)})
    write_image(data / "depth" / "mine.png", _rgb(8))  # the user's: no run wrote it
    _earlier_run(data / "synthetic", "synth", {"000000.png": _rgb(9)})
    listed = frame_source_images(str(data / "*" / "*.png"))
    assert [p.relative_to(data).as_posix() for p in listed] == ["clip/x1.png", "clip/x2.png", "depth/mine.png",
                                                                 "synthetic/000000.png"]
    assert frame_source_images(data / "depth") == [data / "depth" / "mine.png"]
    with pytest.raises(ValueError, match=r"seq contains no image files .*the 1 there \(e\.g\. 000000_color\.png\) "
                                         r"were written by an earlier surgical-depth run"):
        frame_source_images(data / "depth" / "seq")
    with pytest.raises(FileNotFoundError, match=r"matches no image files .*the 2 there .*earlier surgical-depth run"):
        frame_source_images(str(data / "depth" / "x1_*.png"))
    assert frame_source_images(data / "depth" / "x1_color.png") == [data / "depth" / "x1_color.png"]  # named: read
    np.testing.assert_array_equal(read_image(listed[1]), _rgb(2))


def test_videos_an_earlier_run_wrote_are_no_inputs(tmp_path):
    """Catches ``clip_depth.mp4`` (predict's side-by-side colour video) matched by a glob over the folders of a
    rerun and predicted as a clip of its own."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    with RunFolder(tmp_path / "out", "predict") as run:
        run.path("a_depth.mp4").write_bytes(b"")
    assert frame_source_videos(str(tmp_path / "*" / "*.mp4")) == [tmp_path / "clips" / "a.mp4"]


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_links_to_nothing_are_named_as_links(tmp_path):
    """Catches a symbolic link loop (or a dangling link) given as input reported as "does not exist" while
    ``ls`` lists it; in a folder such links, and a link to the folder itself, are no frames."""
    folder = tmp_path / "frames"
    folder.mkdir()
    write_image(folder / "f1.png", _rgb(1))
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    os.symlink(".", folder / "itself")
    for name in ("loop.png", "dangling.png"):
        with pytest.raises(FileNotFoundError, match=rf"input .*{name} is a symbolic link to nothing"):
            frame_source_kind(folder / name)
    assert frame_source_images(folder) == [folder / "f1.png"]
    assert frame_source_images(str(folder / "*")) == [folder / "f1.png"]


def test_names_that_sort_alike_keep_one_order():
    """Catches a frame order left to the file system: ``frame1``/``frame01`` and ``A``/``a`` had equal sort keys, so
    their order was the order the directory listed them in (hash order on ext4, another on a copy). They are now
    ordered by the name itself after the natural order."""
    from SurgicalDepthLib.frame_sources import natural_key

    for names in (["frame01.png", "frame1.png", "frame2.png", "frame10.png"], ["A.png", "a.png", "b.png"]):
        for shuffled in (names, names[::-1], names[1:] + names[:1]):
            assert sorted(shuffled, key=natural_key) == names


def test_a_glob_with_double_star_reaches_subfolders(tmp_path):
    """Catches ``**`` read as ``*`` (``glob`` without ``recursive=True``): ``"clip/**/*.png"`` found only the
    images one folder down, none in ``clip`` itself or two folders down, where shells and Python both reach."""
    for rel in ("a.png", "s1/b.png", "s1/s2/c.png"):
        path = tmp_path / "clip" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, np.full((8, 8, 3), 100, np.uint8))
    files = frame_source_images(str(tmp_path / "clip" / "**" / "*.png"))
    assert [p.relative_to(tmp_path / "clip").as_posix() for p in files] == ["a.png", "s1/b.png", "s1/s2/c.png"]
