"""Frame readers on real files: mp4 written by OpenCV, image folders, globs, broken inputs, streaming memory."""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from video_files import mjpeg_avi, webm_clip, with_damaged_frames, with_duration

from SurgicalDepthLib.colormap import colorize
from SurgicalDepthLib.frame_sources import frame_source_images, frame_source_kind, natural_key
from SurgicalDepthLib.video import FrameReader, VideoDecodeError, open_frames, read_image, write_image

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
RED, BLUE = 200, 30


def frame_for(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """RGB frame: flat (R high, G mid, B low) top half; the bottom 16 rows encode ``i`` in 8 binary cells of
    8 px (white = 1), robust to lossy codecs."""
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = RED, 100, BLUE
    for bit in range(8):
        rgb[h - 16:, 8 * bit:8 * bit + 8] = 255 if (i >> bit) & 1 else 0
    return rgb


def decode_index(rgb: np.ndarray) -> int:
    h = rgb.shape[0]
    return sum(1 << bit for bit in range(8) if rgb[h - 14:h - 2, 8 * bit + 2:8 * bit + 6].mean() > 128)


def top_half(rgb: np.ndarray) -> np.ndarray:
    return rgb[2:rgb.shape[0] // 2 - 2, 2:-2]


def write_clip(path: Path, n: int, h: int = 48, w: int = 64, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(cv2.cvtColor(frame_for(i % 256, h, w), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _boxes(buf: bytes | bytearray, start: int, end: int):
    i = start
    while i < end:
        size = int.from_bytes(buf[i:i + 4], "big")
        yield bytes(buf[i + 4:i + 8]), i, size
        i += size


def faststart(data: bytes) -> bytes:
    """Move the mp4 ``moov`` box before ``mdat`` (as streaming encoders do), shifting the ``stco`` chunk offsets,
    so that a truncated file still opens and decodes its first frames."""
    top = {typ: (i, size) for typ, i, size in _boxes(data, 0, len(data))}
    mi, msize = top[b"moov"]
    moov = bytearray(data[mi:mi + msize])

    def patch(start: int, end: int) -> None:
        for typ, i, size in _boxes(moov, start, end):
            if typ in (b"trak", b"mdia", b"minf", b"stbl"):
                patch(i + 8, i + size)
            elif typ == b"stco":
                for k in range(int.from_bytes(moov[i + 12:i + 16], "big")):
                    p = i + 16 + 4 * k
                    moov[p:p + 4] = (int.from_bytes(moov[p:p + 4], "big") + msize).to_bytes(4, "big")
            elif typ == b"co64":
                raise NotImplementedError("co64 offsets")

    patch(8, len(moov))
    fi, fsize = top[b"ftyp"]
    rest = data[fi + fsize:mi] + data[mi + msize:]
    return data[fi:fi + fsize] + bytes(moov) + rest


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 30)


def test_mp4_frames_count_order_and_rgb(clip):
    reader = open_frames(clip)
    assert isinstance(reader, FrameReader) and reader.kind == "video"
    assert reader.frame_count == len(reader) == 30
    assert reader.fps == pytest.approx(25.0)
    assert reader.size == (48, 64)
    frames = list(reader)
    assert len(frames) == 30
    for i, rgb in enumerate(frames):
        assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
        assert decode_index(rgb) == i
        # RGB order, not OpenCV's BGR; mp4v keeps flat colours within a few levels
        top = top_half(rgb)
        assert abs(float(top[..., 0].mean()) - RED) < 8 and abs(float(top[..., 2].mean()) - BLUE) < 8
    assert len(list(reader)) == 30  # iterable more than once


def test_start_stop_stride(clip):
    reader = open_frames(clip, start=3, stop=20, stride=4)
    assert list(reader.indices) == [3, 7, 11, 15, 19] and reader.frame_count == 5
    assert [decode_index(f) for f in reader] == [3, 7, 11, 15, 19]
    assert open_frames(clip, start=40).frame_count == 0
    with pytest.raises(ValueError, match="stride"):
        open_frames(clip, stride=0)


def test_prefetch_same_frames_and_close(clip):
    plain = list(open_frames(clip))
    with open_frames(clip, prefetch=3) as reader:
        fetched = list(reader)
    assert len(fetched) == len(plain) and all(np.array_equal(a, b) for a, b in zip(plain, fetched))
    # stopping early: breaking out of the loop and closing ends the decoder thread
    reader = open_frames(clip, prefetch=2)
    before = threading.active_count()
    for k, _ in enumerate(reader):
        if k == 2:
            break
    reader.close()
    assert threading.active_count() <= before


def test_image_folder_natural_order_and_glob(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1, 33, 3):
        cv2.imwrite(str(folder / f"frame_{i}.png"), cv2.cvtColor(frame_for(i), cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    reader = open_frames(folder)
    assert reader.kind == "images" and reader.fps is None and reader.size == (48, 64)
    assert [p.name for p in reader.files] == ["frame_1.png", "frame_2.png", "frame_3.png", "frame_10.png",
                                              "frame_33.png"]
    frames = list(reader)
    assert [decode_index(f) for f in frames] == [1, 2, 3, 10, 33]
    assert frames[0][0, 0, 0] == RED and frames[0][0, 0, 2] == BLUE  # PNG is lossless: exact RGB
    globbed = open_frames(str(folder / "frame_?.png"))
    assert [decode_index(f) for f in globbed] == [1, 2, 3]
    single = open_frames(folder / "frame_10.png")
    assert single.frame_count == 1 and decode_index(next(iter(single))) == 10
    assert natural_key("a10") > natural_key("a9")


def test_folder_leaves_out_hidden_files_as_a_glob_does(tmp_path):
    """Catches: macOS's AppleDouble ``._frame.png`` files (and a writer's hidden temporary file) read as frames of
    a folder — the whole run aborted on "cannot decode image ._f0.png" where the folder's glob skipped them."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(frame_for(i), cv2.COLOR_RGB2BGR))
        (folder / f"._f{i}.png").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    (folder / ".f3.tmp123.png").write_bytes(b"")
    assert [p.name for p in open_frames(folder).files] == ["f0.png", "f1.png", "f2.png"]
    assert [decode_index(f) for f in open_frames(folder)] == [0, 1, 2]


def test_errors(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        open_frames(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="matches no image"):
        open_frames(str(tmp_path / "*.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        open_frames(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="junk.mp4"):
        open_frames(junk)
    # a truncated mp4 whose index sits at the end cannot be opened at all: clear error naming it
    cut = tmp_path / "cut_at_end.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut_at_end.mp4"):
        open_frames(cut)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported suffix '.txt'"):
        open_frames(tmp_path / "notes.txt")


def test_frame_source_kind_names_without_opening(tmp_path):
    """Catches open_frames and predict classifying inputs differently: both use these two functions. Nothing is
    decoded, so an unreadable image or video is still classified by its name."""
    (tmp_path / "frames").mkdir()
    for name in ("frames/f10.png", "frames/f2.png", "broken.jpg", "clip.MP4", "notes.txt", "[odd].png"):
        (tmp_path / name).write_bytes(b"not decodable")
    kinds = {name: frame_source_kind(tmp_path / name) for name in ("frames", "broken.jpg", "clip.MP4", "[odd].png")}
    assert kinds == {"frames": "folder", "broken.jpg": "image", "clip.MP4": "video", "[odd].png": "image"}
    assert frame_source_kind(str(tmp_path / "frames" / "*.png")) == "glob"
    assert frame_source_images(tmp_path / "frames") == [tmp_path / "frames" / "f2.png", tmp_path / "frames" / "f10.png"]
    assert frame_source_images(str(tmp_path / "*" / "f*.png")) == frame_source_images(tmp_path / "frames")
    assert frame_source_images(tmp_path / "broken.jpg") == [tmp_path / "broken.jpg"]
    with pytest.raises(ValueError, match="unsupported suffix '.txt'"):
        frame_source_kind(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        frame_source_kind(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="matches no image"):
        frame_source_images(str(tmp_path / "*.bmp"))
    with pytest.raises(ValueError, match="is a video source"):
        frame_source_images(tmp_path / "clip.MP4")


def test_mixed_sizes_in_folder(tmp_path):
    for name, (h, w) in {"a1.png": (48, 64), "a2.png": (48, 64), "a3.png": (40, 64), "a4.png": (20, 20)}.items():
        cv2.imwrite(str(tmp_path / name), frame_for(0, h, w))
    reader = open_frames(tmp_path)
    got = []
    with pytest.raises(ValueError, match=r"a3\.png is 40x64 .*a1\.png is 48x64"):
        for rgb in reader:
            got.append(rgb)
    assert len(got) == 2


def _truncated_mp4(tmp_path: Path) -> Path:
    """A 40-frame streamable mp4 (moov first, as capture devices and live encoders write it) cut at 80 %: the
    container still announces 40 frames, 22 decode."""
    full = tmp_path / "full.mp4"
    write_clip(full, 40)
    data = faststart(full.read_bytes())
    whole = tmp_path / "streamable.mp4"
    whole.write_bytes(data)
    assert len(list(open_frames(whole))) == 40  # the relocation itself is valid
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) * 8 // 10])
    return broken


@pytest.mark.parametrize("prefetch", [0, 2])
def test_truncated_clip_ends_at_its_real_end_with_a_warning(tmp_path, prefetch, caplog):
    """Catches a truncated recording (or one still being written) ending every reader with VideoDecodeError
    ('decoding stopped at frame 22 of 40') instead of treating its real end as the end: all 22 decodable frames
    are yielded, then a warning names the file and both counts, and frame_count/indices follow the real length."""
    broken = _truncated_mp4(tmp_path)
    reader = open_frames(broken, prefetch=prefetch)
    assert reader.frame_count == 40  # the container still announces all frames
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.video"):
        pairs = list(reader.indexed())
    assert 5 < len(pairs) < 40
    assert [i for i, _ in pairs] == list(range(len(pairs)))
    # the last frame before the cut may be partly concealed by the decoder; all earlier ones are intact
    assert [decode_index(f) for _, f in pairs[:-1]] == list(range(len(pairs) - 1))
    assert reader.frame_count == len(pairs) and reader.indices == range(len(pairs))
    ends = [r.getMessage() for r in caplog.records if "ends after" in r.getMessage()]
    assert len(ends) == 1 and "broken.mp4" in ends[0] and "announced 40 frames" in ends[0]
    assert f"ends after {len(pairs)} frames" in ends[0]
    assert not [t for t in threading.enumerate() if t.name.startswith("FrameReader")]


def test_truncated_capture_avi_ends_at_its_real_end(tmp_path):
    """Catches a capture card's Motion-JPEG AVI cut off (recording stopped by a crash: no idx1, the header still
    announces 40 frames) ending with VideoDecodeError after 17 frames: they are yielded, and a stride picks the
    existing frames among them."""
    data = mjpeg_avi(tmp_path / "full.avi", [frame_for(i) for i in range(40)])
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) * 6 // 10])
    got = [i for i, _ in open_frames(path).indexed()]
    assert 5 < len(got) < 40 and got == list(range(len(got)))
    reader = open_frames(path, start=1, stride=3)
    assert [i for i, _ in reader.indexed()] == list(range(1, len(got), 3)) == list(reader.indices)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_damaged_frames_in_the_middle_are_skipped_not_the_end(tmp_path, prefetch, caplog):
    """Catches damaged frames in the middle of a video (frames 10-15 of a capture AVI zeroed) taken for its end:
    the reader stopped with VideoDecodeError at frame 10 and lost the 24 good frames after them. They are skipped
    with a warning naming them, and every later frame keeps its source index."""
    data = mjpeg_avi(tmp_path / "full.avi", [frame_for(i) for i in range(40)])
    path = tmp_path / "damaged.avi"
    path.write_bytes(with_damaged_frames(data, range(10, 16)))
    expected = [i for i in range(40) if not 10 <= i < 16]
    with caplog.at_level("WARNING", logger="SurgicalDepthLib.video"):
        pairs = list(open_frames(path, prefetch=prefetch).indexed())
    assert [i for i, _ in pairs] == [decode_index(f) for _, f in pairs] == expected
    assert any("damaged.avi: frames 10-15 could not be decoded" in r.getMessage() for r in caplog.records)
    reader = open_frames(path, start=2, stride=4)  # 10 and 14 are damaged: the others keep their indices
    assert [(i, decode_index(f)) for i, f in reader.indexed()] == [(i, i) for i in (2, 6, 18, 22, 26, 30, 34, 38)]
    assert reader.frame_count == 10  # the video's length is unchanged
    assert [i for i, _ in open_frames(path, stop=12).indexed()] == list(range(10))  # 16 is past stop


def test_selection_past_the_real_end_is_a_one_line_error(tmp_path):
    """Catches frames asked for past the real end of a truncated video (start=30 of 40 announced, 22 decode)
    coming back as an empty, silent iteration: a one-line VideoDecodeError names the file and the index. A
    selection that starts before the end yields the frames that exist."""
    broken = _truncated_mp4(tmp_path)
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4: frame 30 is past the real end") as info:
        list(open_frames(broken, start=30))
    assert "\n" not in str(info.value) and info.value.frame_index == 30 and info.value.decoded == 22
    assert [i for i, _ in open_frames(broken, start=10, stride=15).indexed()] == [10]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    pytest.skip("no /proc/self/status VmRSS on this platform")


def test_streaming_memory_independent_of_length(tmp_path):
    # 1000 frames of 192x192 RGB = 110 MB if they were kept: a leak would exceed the 50 MB bound
    path = write_clip(tmp_path / "long.mp4", 1000, 192, 192)
    rss = {}
    with open_frames(path, prefetch=4) as reader:
        for i, rgb in enumerate(reader):
            colorize(rgb[..., 0].astype(np.float32) + 1.0)  # decode + colour map, results dropped
            if i + 1 in (100, 1000):
                rss[i + 1] = _rss_mb()
    assert set(rss) == {100, 1000}
    assert rss[1000] - rss[100] < 50.0, rss


def test_real_clip_if_available():
    path = SAMPLES / "real" / "video" / "laparoscopy_endo.mp4"
    if not path.is_file():
        pytest.skip(f"real clip not available ({path})")
    reader = open_frames(path, stride=100)
    assert reader.size == (720, 1280) and reader.fps == pytest.approx(25.0) and reader.frame_count == 3
    frames = list(reader)
    assert len(frames) == 3 and all(f.shape == (720, 1280, 3) for f in frames)
    # laparoscopic tissue is reddish: RGB order means channel 0 dominates channel 2
    assert frames[0][..., 0].mean() > frames[0][..., 2].mean()


def test_write_image_round_trips_rgb_and_leaves_nothing_on_failure(tmp_path):
    rgb = np.zeros((6, 9, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[2:4, 3:7] = (10, 120, 250)
    out = write_image(tmp_path / "x.png", rgb)
    np.testing.assert_array_equal(read_image(out), rgb)  # lossless, RGB order kept
    with pytest.raises(ValueError, match=r"could not encode .*x\.nosuchformat"):
        write_image(tmp_path / "x.nosuchformat", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def _jpeg_with_exif_orientation(path: Path, bgr: np.ndarray, orientation: int) -> None:
    """A JPEG whose APP1 Exif segment holds one tag: Orientation (0x0112) = ``orientation``."""
    import struct

    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHII", 0x0112, 3, 1, orientation << 16)
    app1 = b"Exif\x00\x00" + tiff + struct.pack(">I", 0)
    data = buf.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])


def test_read_image_16bit_rgba_grey_and_orientation(tmp_path):
    """Catches a reader that depends on the format for 16-bit files (IMREAD_COLOR truncates a 16-bit PNG but
    rounds a 16-bit TIFF), keeps alpha, drops grey to one channel, reads a float TIFF as an image, or cannot
    keep the stored pixel grid of a JPEG with an EXIF orientation tag (the dataset loaders need it)."""
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    rgb16[0, 0] = (0x0180, 0x01FF, 0xFFFF)  # rounding would give 2, 2, 256 -> 255; the high byte 1, 1, 255
    high = (rgb16 >> 8).astype(np.uint8)
    for suffix in (".png", ".tif"):
        assert cv2.imwrite(str(tmp_path / f"rgb16{suffix}"), rgb16[..., ::-1])
        np.testing.assert_array_equal(read_image(tmp_path / f"rgb16{suffix}"), high)
    grey16 = rgb16[..., 0]
    assert cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    np.testing.assert_array_equal(read_image(tmp_path / "grey16.png"), np.repeat(high[..., :1], 3, axis=2))
    grey8 = high[..., 1]
    assert cv2.imwrite(str(tmp_path / "grey8.png"), grey8)
    got = read_image(tmp_path / "grey8.png")
    assert got.shape == (5, 7, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.repeat(grey8[..., None], 3, axis=2))
    rgba = np.concatenate([high, rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)], axis=2)
    assert cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), high)  # alpha dropped, not blended
    assert cv2.imwrite(str(tmp_path / "float.tif"), rng.random((5, 7, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"float\.tif has float32 samples, expected 8- or 16-bit"):
        read_image(tmp_path / "float.tif")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot decode image .*empty\.png"):
        read_image(tmp_path / "empty.png")
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, :16] = 255  # left half white
    _jpeg_with_exif_orientation(tmp_path / "rotated.jpg", wide, 6)  # 6: shown rotated 90° clockwise
    shown = read_image(tmp_path / "rotated.jpg")
    stored = read_image(tmp_path / "rotated.jpg", orientation=False)
    assert shown.shape == (32, 16, 3) and stored.shape == (16, 32, 3)
    assert stored[:, :8].mean() > 200 and stored[:, 24:].mean() < 50
    assert shown[:8].mean() > 200 and shown[24:].mean() < 50  # the left half is on top once rotated


def test_video_without_a_frame_count_is_counted_not_refused(tmp_path):
    """Catches a WebM/MKV without a Duration (MediaRecorder, OBS after a crash), for which OpenCV reports about
    -2.3e17 frames, refused with 'the container reports -230584300921369408 frames'; all 60 frames decode."""
    data = webm_clip(tmp_path / "clip.webm", [frame_for(i) for i in range(60)])
    path = tmp_path / "recorded.webm"
    path.write_bytes(with_duration(data, None))
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) <= 0  # what the container says
    reader = open_frames(path, stride=7)
    assert reader.frame_count == 9 and list(reader.indices) == list(range(0, 60, 7))
    assert [decode_index(f) for f in reader] == list(range(0, 60, 7))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_video_with_more_frames_than_announced_yields_the_tail(tmp_path, prefetch):
    """Catches the tail dropped silently when the container announces too few frames (a WebM whose duration says
    1 s of a 2.4 s clip: 25 of its 60 frames were read; MPEG-1 .mpg files announce 59 of 60): every frame is
    yielded with its index, and frame_count/indices are corrected at the end."""
    data = webm_clip(tmp_path / "clip.webm", [frame_for(i) for i in range(60)])
    path = tmp_path / "short_duration.webm"
    path.write_bytes(with_duration(data, 1000.0))
    reader = open_frames(path, start=3, stride=7, prefetch=prefetch)
    assert reader.frame_count == 4  # what the container says: 25 frames
    assert [decode_index(f) for f in reader] == list(range(3, 60, 7))
    assert reader.frame_count == 9 and reader.indices == range(3, 60, 7)
    pairs = list(reader.indexed())
    assert [i for i, _ in pairs] == [decode_index(f) for _, f in pairs] == list(range(3, 60, 7))
    assert len(list(open_frames(path, stop=40))) == 40  # stop past the announced end, before the true one
    assert not [t for t in threading.enumerate() if t.name.startswith("FrameReader")]


def test_read_video_frame_is_the_frame_sequential_decoding_gives(tmp_path):
    """Catches seeking with CAP_PROP_POS_FRAMES taken as exact: in an MPEG-2 program stream (.mpg) frame 29
    came back as frame 26, so a sampler drew other frames than the ones it named."""
    from SurgicalDepthLib.video import read_video_frame

    path = tmp_path / "clip.mpg"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MPG2"), 25.0, (64, 48))
    if not writer.isOpened():
        pytest.skip("OpenCV here cannot write MPEG-2")
    for i in range(60):
        writer.write(cv2.cvtColor(frame_for(i), cv2.COLOR_RGB2BGR))
    writer.release()
    capture, sequential = cv2.VideoCapture(str(path)), []
    while (bgr := capture.read()[1]) is not None:
        sequential.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(sequential) == 60
    for index in (0, 13, 29, 30, 31, 45, 59):
        np.testing.assert_array_equal(read_video_frame(path, index), sequential[index])
    with pytest.raises(ValueError, match=r"clip\.mpg: frame 99 could not be decoded"):
        read_video_frame(path, 99)


def _grey_tiff(order: str, pages: list[tuple[np.ndarray, int]]) -> bytes:
    """An uncompressed 8-bit grey TIFF in byte order ``order`` (``"<"``: II, ``">"``: MM) with one image file
    directory per ``(image uint8 [h, w], NewSubfileType)`` (1: reduced-resolution, e.g. a thumbnail; 2: a page)."""
    import struct

    out = bytearray((b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 0))
    next_at = 4
    for image, subfile_type in pages:
        h, w = image.shape
        data_at = len(out)
        out += image.tobytes() + b"\x00" * (image.size % 2)
        struct.pack_into(order + "I", out, next_at, len(out))
        entries = [(254, 4, subfile_type), (256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                   (273, 4, data_at), (277, 3, 1), (278, 4, h), (279, 4, h * w)]
        out += struct.pack(order + "H", len(entries))
        for tag, kind, value in entries:
            field = struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
            out += struct.pack(order + "HHI", tag, kind, 1) + field
        next_at = len(out)
        out += struct.pack(order + "I", 0)
    return bytes(out)


def test_a_multi_page_tiff_is_refused_naming_its_pages(tmp_path):
    """Catches a TIFF stack (ImageJ, a microscope, a frame grabber; OpenCV's imwritemulti, Pillow's save_all,
    BigTIFF) read as its first page without a word: a folder of such stacks gave one map per file and the other
    pages were lost. One page, and one page with a reduced-resolution thumbnail after it (NewSubfileType 1, as
    cameras write it), are single images and read as before, in both byte orders."""
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    assert cv2.imwritemulti(str(tmp_path / "opencv.tif"), [rgb, rgb, rgb])
    Image.fromarray(rgb).save(tmp_path / "pillow.tiff", save_all=True, append_images=[Image.fromarray(rgb)])
    Image.fromarray(rgb).save(tmp_path / "big.tif", big_tiff=True, save_all=True,
                              append_images=[Image.fromarray(rgb)] * 3)
    for name, pages in (("opencv.tif", 3), ("pillow.tiff", 2), ("big.tif", 4)):
        with pytest.raises(ValueError, match=rf"{name} is a TIFF stack of {pages} pages; one image per file"):
            read_image(tmp_path / name)
    Image.fromarray(rgb).save(tmp_path / "one.tif", big_tiff=True)
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), rgb)
    grey = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    for order in "<>":
        (tmp_path / "thumb.tif").write_bytes(_grey_tiff(order, [(grey, 0), (grey[::2, ::2].copy(), 1)]))
        np.testing.assert_array_equal(read_image(tmp_path / "thumb.tif"), np.repeat(grey[..., None], 3, axis=2))
        (tmp_path / "stack.tif").write_bytes(_grey_tiff(order, [(grey, 2), (grey, 2)]))
        with pytest.raises(ValueError, match=r"stack\.tif is a TIFF stack of 2 pages"):
            read_image(tmp_path / "stack.tif")
        with pytest.raises(ValueError, match=r"stack\.tif is a TIFF stack of 2 pages"):
            list(open_frames(tmp_path / "stack.tif"))


def _with_rotation(data: bytes) -> bytes:
    """The mp4 ``data`` with its video track's display matrix (``tkhd``) set to a 90° rotation, as phones and
    some scope recorders store a portrait clip (the frames stay landscape; players rotate them)."""
    import struct

    buf = bytearray(data)

    def find(start: int, end: int, path: tuple[bytes, ...]) -> int:
        for typ, i, size in _boxes(buf, start, end):
            if typ == path[0]:
                return i if len(path) == 1 else find(i + 8, i + size, path[1:])
        raise AssertionError(f"no {path[0]} box")

    tkhd = find(0, len(buf), (b"moov", b"trak", b"tkhd"))
    assert buf[tkhd + 8] == 0  # version 0: 32-bit times
    matrix_at = tkhd + 8 + 4 + 20 + 8 + 8  # version/flags, times/track/reserved/duration, reserved, layer..volume
    struct.pack_into(">9i", buf, matrix_at, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return bytes(buf)


def test_a_rotated_video_is_read_as_a_player_shows_it(tmp_path):
    """The contract (a check, not a fix): a clip with rotation metadata is read rotated, as players show it, and
    the reader's ``size`` is the rotated one, so maps, colour maps and the side-by-side video of ``predict`` all
    have the shape a user sees. Catches a reader whose ``size`` (container width x height) disagrees with its
    frames, or that yields the stored landscape frames of a portrait clip."""
    write_clip(tmp_path / "plain.mp4", 3)
    (tmp_path / "rotated.mp4").write_bytes(_with_rotation((tmp_path / "plain.mp4").read_bytes()))
    stored, rotated = (open_frames(tmp_path / name) for name in ("plain.mp4", "rotated.mp4"))
    assert stored.size == (48, 64) and rotated.size == (64, 48)
    for plain, turned in zip(stored, rotated, strict=True):
        assert turned.shape == (64, 48, 3)
        assert min(np.abs(turned.astype(int) - np.rot90(plain, k).astype(int)).mean() for k in (1, -1)) < 3
