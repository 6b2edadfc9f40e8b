"""``surgical-depth predict``: images, folders or videos → per-frame depth maps (+ colour maps, videos, sequences).

Outputs (in ``--output``):

- an image ``name.png`` (alone, in a folder or a glob): ``name_depth.<fmt>`` (+ ``name_color.png``);
- a video ``clip.mp4`` (alone, in a folder or a glob; or a folder/glob of frames with ``--video``):
  ``clip/000000.<fmt>`` per frame, numbered by the source frame index (+ ``clip/000000_color.png``), and with
  ``--colormap`` also ``clip_depth.mp4`` (input | colour-mapped depth side by side, red = near, blue = far) and
  ``clip_depth.seq.nrrd`` (Slicer volume sequence);
  ``clip/predictions.json`` describes the maps for ``reconstruct --depth``.

Pixels outside the scope's field of view (``--fov-mask``, found automatically: from a sequence's first frames, from
each image alone) are NaN in the maps (0 in PNG) and black in colour maps; the mask is written as
``clip/fov_mask.png`` (``name_fov.png`` for images). A sequence's field of view is followed when the scope image moves
in the frame: each new mask is written as ``clip/fov_mask_<frame index:06d>.png`` (the source frame it applies from),
and ``predictions.json`` lists them all as ``"fov_masks": [{"from_frame": i, "file": "fov_mask.png"}, ...]``.

With ``--intrinsics`` (the scope's calibration), the maps of a model with a reference lens (the default model) are
corrected to that lens (:mod:`SurgicalDepthLib.lens`: wide-angle and fisheye scopes).

Images are read as viewers show them (EXIF orientation applied; a video's rotation metadata too): every map and
colour map has the shape the user sees. A folder or glob never includes the outputs of an earlier run (its run
manifest lists them), so a rerun whose glob reaches an output folder reads only the frames.

Relative models write disparity (larger = nearer), metric models depth; see :mod:`SurgicalDepthLib.depth_io`
for the formats. Frames stream through decode + preprocessing → inference → writing, each in its own thread with
bounded queues, in constant memory.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..atomic_io import atomic_path
from ..background import BackgroundCalls
from ..camera import parse_intrinsics
from ..colormap import colorize, robust_range, to_disparity
from ..depth_io import DepthSequenceWriter, save_depth
from ..fov import detect_fov_mask, nan_outside, write_fov_mask
from ..run_folder import RunFolder
from ..saved_predictions import INFO_NAME, write_info
from ..stream import DepthFrame, depth_stream, no_depth_if_black
from ..frame_sources import frame_source_images, frame_source_kind, frame_source_videos
from ..video import FrameReader, open_frames, read_image, write_image
from . import (FOV_MASK_HELP, OVERWRITE_HELP, CliError, add_model_args, check_intrinsics_arg,
               check_output_not_an_input_folder, input_paths, model_hints, progress_of)
from ._fov_outputs import FovMaskAction, FovMaskFiles, check_fov_mask_fits, same_mask

logger = logging.getLogger(__name__)

FORMATS = ("npy", "png", "nrrd", "tiff")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="images, folders or videos -> depth maps",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, video files, folders or glob patterns (quote them) of images and videos")
    p.add_argument("--output", "-o", required=True, type=Path, help="output folder (created if missing)")
    add_model_args(p)
    p.add_argument("--format", choices=FORMATS, default="npy",
                   help="depth file format: npy/tiff/nrrd float32, png uint16 with the scale in a text chunk")
    p.add_argument("--colormap", action="store_true",
                   help="also write colour PNGs (red = near, blue = far); for videos also a side-by-side mp4 "
                        "and a 4D NRRD sequence for 3D Slicer")
    p.add_argument("--temporal", action="store_true",
                   help="for videos: stabilise the per-frame relative depth over time (robust scale+shift)")
    p.add_argument("--video", action="store_true",
                   help="treat each image folder or glob as the frames of one video (sequence outputs, --temporal)")
    p.add_argument("--stride", type=int, default=1, help="for videos: use every N-th frame")
    p.add_argument("--max-frames", type=int, default=None, help="for videos: stop after this many frames")
    p.add_argument("--fov-mask", action=FovMaskAction, default="auto", metavar="auto|none|FILE", help=FOV_MASK_HELP)
    p.add_argument("--intrinsics", default=None,
                   help="the scope's calibration (a calibration file, rescaled to each input's size, or 'fx,fy,cx,cy' "
                        "in pixels of the inputs): maps of models with a reference lens, such as the default model, "
                        "are corrected to this lens; default: none")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=run)


# -- helpers -----------------------------------------------------------------------------------------------------
def _lens(args: argparse.Namespace, lenses: dict[tuple[int, int], Any], height: int, width: int) -> Any:
    """The calibrated camera for ``height × width`` inputs (``--intrinsics``), or None; ``lenses`` keeps it per
    size, so a calibration file is read once per input size in the run."""
    if (height, width) not in lenses:
        lenses[(height, width)] = None if args.intrinsics is None else parse_intrinsics(args.intrinsics, width, height)
    return lenses[(height, width)]


def check_frame_size(source: str | Path, height: int, width: int) -> None:
    """Refuse frames of ``height × width`` that the network cannot read (sides more than
    :data:`~SurgicalDepthLib.preprocess.MAX_ASPECT_RATIO` apart): a ValueError naming ``source``, the image or video
    (the size alone does not say which of a folder's images it is)."""
    from ..preprocess import official_input_size  # lazy: torch is imported when the command runs

    try:
        official_input_size(height, width)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _sequence_name(text: str, kind: str) -> str:
    """Output name of a sequence: a video's stem, a folder's name, a glob's last folder without pattern characters
    (``.`` and ``..`` by the folder they stand for; ``frames`` for a glob without a folder, or in ``/``)."""
    path = Path(text)
    if kind == "video":
        return path.stem
    if kind == "glob":
        parts = [p for p in path.parts if not any(c in p for c in "*?[")]
        if not parts:
            return "frames"
        path = Path(*parts)
    return path.resolve().name or "frames"


def _is_sequence(kind: str, video: bool) -> bool:
    """Whether a source of ``kind`` (:func:`frame_source_kind`) is read as one video (``video``: --video)."""
    return kind == "video" or (video and kind in ("folder", "glob"))


def _source(text: str, video: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """One input's images and sequences ``(source, name)``: a video; a folder or glob read as one video
    (``video``: --video); else its images, and each video it holds or matches as a sequence of its own."""
    kind = frame_source_kind(text)
    if _is_sequence(kind, video):
        return [], [(text, _sequence_name(text, kind))]
    videos = frame_source_videos(text, kind)
    return (frame_source_images(text, kind, required=not videos),
            [(str(v), _sequence_name(str(v), "video")) for v in videos])


def _check_video_options(args: argparse.Namespace) -> None:
    """``--stride`` / ``--max-frames`` without a video input: an error, not options silently ignored (a missing
    input is left to ``_plan``, which names it)."""
    def sequence(text: str) -> bool:
        try:
            return bool(_source(text, args.video)[1])
        except (FileNotFoundError, ValueError):
            return True

    if (args.stride != 1 or args.max_frames is not None) and not any(sequence(text) for text in args.inputs):
        raise CliError("--stride and --max-frames select frames of videos (or of folders and globs with --video); "
                       "no video input was given")


def _plan(args: argparse.Namespace) -> tuple[list[Path], list[tuple[str, str]]]:
    """Split the inputs into independent images and sequences ``(source, name)``; check they exist."""
    images: list[Path] = []
    sequences: list[tuple[str, str]] = []
    for text in args.inputs:
        found, videos = _source(text, args.video)
        images.extend(found)
        sequences.extend(videos)
    # names are compared as Windows and macOS file systems compare them (case-insensitively): Frame1_depth.npy and
    # frame1_depth.npy would be one file there
    unique: dict[Path, Path] = {}  # an image given twice (or in a folder and by name) is predicted once
    by_stem: dict[str, Path] = {}
    for p in images:
        other = by_stem.setdefault(p.stem.casefold(), p)
        if other.resolve() != p.resolve():
            raise CliError(f"inputs {other} and {p} would both write {p.stem}_depth.* (file names that differ only "
                           "in case are one file on Windows and macOS); rename one")
        unique.setdefault(p.resolve(), p)
    images = list(unique.values())
    names = [n.casefold() for _, n in sequences]
    dupes = sorted({n for n in names if names.count(n) > 1} | (set(names) & {p.stem.casefold() for p in images}))
    if dupes:
        raise CliError(f"several inputs would write outputs named {dupes}; rename or predict them separately")
    return images, sequences


def _in_fov(frame: DepthFrame) -> np.ndarray:
    """The frame's prediction with NaN outside the field of view (written maps hold no depth for the border)."""
    if frame.fov_mask is None:
        return frame.prediction
    return nan_outside(frame.prediction.copy(), frame.fov_mask)


def _write_fov(out: RunFolder, relative: str, frame: DepthFrame, written: set) -> None:
    """Write the frame's field-of-view mask (255 = tissue) once per output file."""
    if frame.fov_mask is not None and relative not in written:
        write_fov_mask(out.path(relative), frame.fov_mask)
        written.add(relative)


def _map_unit(model: Any) -> str:
    """What a written map's values are, stored in its file (PNG, NRRD, TIFF; a ``.npy`` holds the array alone, and
    ``predictions.json`` names the unit of a sequence's maps): ``"disparity"`` (relative) or the metric unit."""
    return "disparity" if model.output_kind == "disparity" else model.depth_unit


def _colour_range(pred: np.ndarray, kind: str) -> tuple[float | None, float | None]:
    """Robust colour limits of one map, or ``(None, None)`` (colorize's own default) when nothing is valid."""
    if not to_disparity(pred, kind)[1].any():
        return None, None
    return robust_range(pred, kind)


# -- the two kinds of job ----------------------------------------------------------------------------------------
def _image_batches(images: list[Path], batch_size: int, fov_mask: Any
                   ) -> Iterator[tuple[list[Path], list[np.ndarray], Any]]:
    """Consecutive images that share one size and one field of view, at most ``batch_size`` per batch (a batch is
    one tensor), with that field of view for ``depth_stream``: with ``fov_mask="auto"`` each image's own
    (``detect_fov_mask([rgb])``; unrelated photos share no scope), else ``fov_mask`` as given."""
    group: list[Path] = []
    frames: list[np.ndarray] = []
    mask: Any = None
    for path in images:
        rgb = read_image(path)
        check_frame_size(path, *rgb.shape[:2])
        own = detect_fov_mask([rgb]) if isinstance(fov_mask, str) else fov_mask
        if frames and (rgb.shape != frames[0].shape or len(frames) == batch_size or not same_mask(own, mask)):
            yield group, frames, mask
            group, frames = [], []
        group.append(path)
        frames.append(rgb)
        mask = own
    if frames:
        yield group, frames, mask


def _predict_images(model, images: list[Path], args: argparse.Namespace, ext: str, out: RunFolder, bar,
                    lenses: dict[tuple[int, int], Any]) -> int:
    kind = model.output_kind
    written = 0
    masks: set = set()
    for group, frames, fov in _image_batches(images, args.batch_size, args.fov_mask):
        check_fov_mask_fits(args, frames[0].shape[:2], group[0])  # a batch holds images of one size
        lens = _lens(args, lenses, *frames[0].shape[:2])
        for path, frame in zip(group, depth_stream(model, frames, batch_size=args.batch_size, intrinsics=lens,
                                                   input_size=args.input_size, fov_mask=fov,
                                                   detail_size=args.detail_size)):
            if isinstance(args.fov_mask, str):  # "auto", given here as each image's own mask: a black image
                frame = no_depth_if_black(frame)  # shows no tissue, as a video's black frame
            pred = _in_fov(frame)
            save_depth(out.path(f"{path.stem}_depth{ext}"), pred, unit=_map_unit(model))
            if args.colormap:
                write_image(out.path(f"{path.stem}_color.png"), colorize(pred, kind))
            _write_fov(out, f"{path.stem}_fov.png", frame, masks)
            written += 1
            bar.update(1)
    return written


def _claim_outputs(out: RunFolder, images: list[Path], sequences: list[tuple[FrameReader, str]],
                   args: argparse.Namespace, ext: str) -> None:
    """Claim every output file the run will write before any inference: a conflict (a file no run wrote, an
    input) stops the run before anything is written. A field-of-view mask may be written whenever ``--fov-mask`` is
    not ``none`` (``auto`` finds one or not): its file is claimed too. Only the masks of a field of view that moves
    later in a sequence (:class:`FovMaskFiles`) are claimed when written: their frames are not known before."""
    colour = ["_color.png"] if args.colormap else []
    masked = args.fov_mask is not None
    for path in images:
        for tail in [f"_depth{ext}", *colour, *(["_fov.png"] if masked else [])]:
            out.path(f"{path.stem}{tail}")
    for reader, name in sequences:
        for index in reader.indices:
            for tail in [ext, *colour]:
                out.path(f"{name}/{index:06d}{tail}")
        out.path(f"{name}/{INFO_NAME}")
        if masked:
            out.path(f"{name}/fov_mask.png")
        if args.colormap:
            out.path(f"{name}_depth.mp4")
            out.path(f"{name}_depth.seq.nrrd")


def _open_sequence(source: str, args: argparse.Namespace) -> FrameReader:
    stop = None if args.max_frames is None else args.max_frames * args.stride
    return open_frames(source, stop=stop, stride=args.stride)


#: widest frame the mp4v (MPEG-4 Part 2) encoder takes: its width must stay below 8192 pixels
MP4V_MAX_WIDTH = 8190


def side_by_side_size(height: int, width: int) -> tuple[int, int]:
    """``(width, height)`` of the colour video's frame (input | depth side by side, ``2·width × height``) with even
    sides, which mp4v needs (it crops an odd side): an odd height gets one more row (black, :func:`fit_panel`);
    scaled down, aspect kept, within :data:`MP4V_MAX_WIDTH` (a 4096-pixel-wide input is 8192 side by side)."""
    if 2 * width <= MP4V_MAX_WIDTH:
        return 2 * width, height + height % 2
    scale = MP4V_MAX_WIDTH / (2 * width)
    return 2 * int(width * scale), max(2, 2 * round(height * scale / 2))


def fit_panel(both: np.ndarray, panel: tuple[int, int]) -> np.ndarray:
    """RGB uint8 ``[h, w, 3]`` side-by-side frame as ``panel = (width, height)`` (:func:`side_by_side_size`): one
    black row below an odd height (every input row kept), else resized (an input too wide for mp4v)."""
    h, w = both.shape[:2]
    if (w, h) == tuple(panel):
        return both
    if (w, h + 1) == tuple(panel):
        return cv2.copyMakeBorder(both, 0, 1, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return cv2.resize(both, panel, interpolation=cv2.INTER_AREA)


def _write_info(out: RunFolder, name: str, model: Any, args: argparse.Namespace, reader: FrameReader,
                lens: Any, fov_masks: list[dict[str, Any]]) -> None:
    """``{name}/predictions.json`` (:func:`write_info`) with the field-of-view masks used (:class:`FovMaskFiles`)."""
    write_info(out.path(f"{name}/{INFO_NAME}"), model=model, file_format=args.format, size=reader.size,
               source=reader.path, lens_corrected=lens is not None, extra={"fov_masks": fov_masks})


def _predict_sequence(model, reader: FrameReader, name: str, args: argparse.Namespace, ext: str, out: RunFolder,
                      bar, lens: Any) -> int:
    source = reader.path
    reader.prefetch = 2 * args.batch_size  # decode ahead of the batches
    kind = model.output_kind
    source_fps = reader.fps
    if source_fps is None:
        source_fps = 25.0
        if args.colormap:
            logger.info("%s has no frame rate (image frames): writing its video and sequence at 25 frames/s", source)
    fps = source_fps / args.stride
    fixed_range = args.temporal or kind == "depth"  # raw relative frames flicker: give each its own range
    count = 0
    with contextlib.ExitStack() as stack:
        stack.callback(reader.close)
        writer = seq = None
        if args.colormap:
            panel = side_by_side_size(*reader.size)
            video = out.path(f"{name}_depth.mp4")
            tmp = stack.enter_context(atomic_path(video))
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, panel)
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot write mp4v video {video}")
            stack.callback(writer.release)  # runs before atomic_path renames the file
            seq = stack.enter_context(DepthSequenceWriter(out.path(f"{name}_depth.seq.nrrd"), fps=fps,
                                                          unit=_map_unit(model)))
        vrange = None
        masks = FovMaskFiles(out, name)

        def emit(frame: DepthFrame) -> None:  # in the writer thread, in order
            nonlocal vrange
            pred = _in_fov(frame)
            save_depth(out.path(f"{name}/{frame.index:06d}{ext}"), pred, unit=_map_unit(model))
            masks.add(frame)
            if args.colormap:
                if not fixed_range or vrange is None or vrange[0] is None:  # fixed: the first frame with depth's
                    vrange = _colour_range(pred, kind)
                color = colorize(pred, kind, *vrange)
                write_image(out.path(f"{name}/{frame.index:06d}_color.png"), color)
                both = fit_panel(np.hstack([frame.rgb, color]), panel)
                writer.write(cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
                seq.append(pred, frame.index / source_fps)
            bar.update(1)

        # entered last, so it is closed (all writes done, or skipped after an error) before the files above
        calls = stack.enter_context(BackgroundCalls(depth=2 * args.batch_size, name=f"write {name}"))
        # a video that ends before its announced count ends there (video.FrameReader warns); damaged frames are
        # skipped: every frame that decodes gets its map
        for frame in depth_stream(model, reader, batch_size=args.batch_size, temporal=args.temporal,
                                  input_size=args.input_size, fov_mask=args.fov_mask,
                                  detail_size=args.detail_size, intrinsics=lens):
            calls.submit(emit, frame)
            count += 1
        calls.close()
    _write_info(out, name, model, args, reader, lens, masks.records)
    extra = f", {name}_depth.mp4 and {name}_depth.seq.nrrd" if args.colormap else ""
    print(f"{source}: {count} frames -> {args.output / name}{extra}")
    return count


def run(args: argparse.Namespace) -> int:
    from ..loading import load_model  # lazy: torch import only when the command runs

    for name in ("batch_size", "stride"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    check_intrinsics_arg(args.intrinsics)
    check_output_not_an_input_folder(args.output, args.inputs)
    _check_video_options(args)
    with RunFolder(args.output, "predict", inputs=input_paths(args.inputs), overwrite=args.overwrite) as out:
        images, sources = _plan(args)  # after an --overwrite cleared the earlier run: its outputs are no inputs
        sequences = [(_open_sequence(source, args), name) for source, name in sources]  # opened once
        lenses: dict[tuple[int, int], Any] = {}  # input size -> calibrated camera
        for reader, _ in sequences:  # a calibration or mask file that fits no video fails before anything is written
            check_frame_size(reader.path, *reader.size)
            _lens(args, lenses, *reader.size)
            check_fov_mask_fits(args, reader.size, reader.path)
        out.protect(images)
        for reader, _ in sequences:
            out.protect(reader.files or [reader.path])
        ext = "." + args.format
        _claim_outputs(out, images, sequences, args, ext)
        model = load_model(args.model, device=args.device, precision=args.precision, backend=args.backend,
                       **model_hints(args))
        args.batch_size = args.batch_size or model.default_batch_size
        print(f"model: {model.source} ({model.config.encoder} {model.config.version}, {model.output_kind}) "
              f"on {model.device} {model.precision}")
        if args.temporal and not sequences:
            logger.warning("--temporal applies to videos (or folders with --video); no video input was given")
        started = time.perf_counter()
        total = 0
        n_frames = len(images) + sum(len(reader) for reader, _ in sequences)
        with progress_of(args).stage("predict", n_frames) as bar:
            if images:
                total += _predict_images(model, images, args, ext, out, bar, lenses)
            for reader, name in sequences:
                announced = len(reader)
                total += _predict_sequence(model, reader, name, args, ext, out, bar, lenses[reader.size])
                bar.retotal(bar.total + len(reader) - announced)  # a video that ended before its announced count
    args.result = {"frames": total, "output": str(args.output)}
    elapsed = time.perf_counter() - started
    print(f"wrote {total} {model.output_kind} maps ({args.format}) to {args.output} "
          f"in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.2f} frames/s)")
    return 0
