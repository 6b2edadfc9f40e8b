"""``surgical-depth`` command line: one sub-command per module in this package, plus commands that other
installed packages (``SurgicalDepthTrainingLib``) contribute through the ``surgical_depth.commands`` entry point.

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func`` (called with the
parsed namespace, returns an exit code). Errors a user can fix (bad paths, shapes, formats) are raised as
``ValueError``/``TypeError``/``FileNotFoundError``/``OSError``/``CliError`` and printed as one line.

Every command takes ``--progress bar|jsonl|none`` (:mod:`SurgicalDepthLib.progress`); the command finds its
reporter in ``args.progress_reporter``. With ``jsonl``, stdout carries only the JSON lines: everything else the
command prints goes to stderr, and the run ends with a ``done`` or ``error`` event. SIGTERM (a caller's terminate;
the Training module's Cancel when the stdin stop line below is not obeyed) ends a command as Ctrl-C does: its
temporary files are removed, an ``error`` event is printed and the exit code is 130 (``train`` and ``stream``
handle both signals themselves). A second signal while the command cleans up is reported, not obeyed, so the
clean-up finishes.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

from .. import __version__
from ..alignment import DEFAULT_DEPTH_RANGE_MM
from ..progress import PROGRESS_MODES, ProgressReporter

_CORE_COMMANDS = ("predict", "reconstruct", "download", "export", "stream")


class CliError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def progress_of(args: argparse.Namespace) -> ProgressReporter:
    """The run's progress reporter (set by :func:`main`; a tqdm bar when a command is called without it)."""
    reporter = getattr(args, "progress_reporter", None)
    if reporter is None:
        reporter = args.progress_reporter = ProgressReporter(getattr(args, "progress", "bar"))
    return reporter


def input_size_arg(text: str) -> int:
    """argparse type of ``--input-size``: a positive multiple of 14."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 14 or value % 14:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 14, got {value}")
    return value


def fov_mask_arg(text: str):
    """argparse type of ``--fov-mask``: ``auto``, ``none`` or a mask image (nonzero = inside the field of view)."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    from ..fov import read_fov_mask

    try:
        return read_fov_mask(text)
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a readable mask image, got {text!r}") from None


def check_output_not_an_input_folder(output: Path, sources: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an ``--output`` folder that is one of the input folders (a folder given, or the folder of a glob),
    before anything runs: maps written beside the frames would be read as frames by the next run on that folder
    (a depth or colour PNG is an image too). CliError naming both."""
    from ..frame_sources import frame_source_kind, glob_folder

    target = Path(output).resolve()
    for source in sources:
        try:
            kind = None if source is None else frame_source_kind(source)
        except (FileNotFoundError, ValueError):
            continue  # a missing or unreadable input: the command names it
        if kind == "folder":
            folder = Path(source)
        elif kind == "glob":
            folder = glob_folder(source)
        else:
            continue  # no input, or a file (image, video): its folder may take outputs
        if folder.resolve() == target:
            raise CliError(f"--output {output} is the input folder {source}: outputs written beside the frames "
                           "would be read as frames by the next run; choose another output folder")


def input_paths(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """The files and folders that frame sources read (a glob: its folder), for ``RunFolder(inputs=)``, checked
    before anything is cleared or written: FileNotFoundError / ValueError naming a missing or unsupported one."""
    from ..frame_sources import frame_source_kind, glob_folder

    return [glob_folder(source) if frame_source_kind(source) == "glob" else Path(source) for source in sources]


def check_intrinsics_arg(text: str | None) -> None:
    """``--intrinsics`` before any work: an existing calibration file or four positive numbers ``fx,fy,cx,cy``
    (a file is read later, for each frame size: it may be rescaled to it); CliError naming the value otherwise."""
    if text is None or Path(text).is_file():
        return
    try:
        values = [float(v) for v in re.split(r"[,\s]+", text.strip())]
    except ValueError:
        values = []
    if len(values) != 4 or not all(v > 0 for v in values):
        raise CliError(f"--intrinsics: expected 'fx,fy,cx,cy' (positive pixels) or a calibration file, got {text!r}")


FOV_MASK_HELP = ("the scope's field of view: 'auto' (default: found from the first frames; black borders and the "
                 "overlay text on them get no depth), 'none' (every pixel is tissue) or a mask image "
                 "(nonzero = tissue); the mask used is written as fov_mask.png")


#: --backend choices (written out: importing loading.BACKENDS would import torch when the parser is built)
BACKEND_CHOICES = ("torch", "onnxruntime", "openvino", "auto")
BACKEND_HELP = ("inference runtime: torch (reference); onnxruntime or openvino (CPU, the exported graph; pip install "
                "'surgical-depth[onnx]' / '[openvino]'); auto (OpenVINO bf16 on CPUs with AVX512-BF16 or AMX, else "
                "torch). An exported .onnx/.xml --model uses its own runtime")


OVERWRITE_HELP = ("replace the outputs of an earlier run in the output folder (exactly the files its manifest "
                  "lists); without it such a folder is refused. Files no run wrote are never overwritten")

MODEL_HELP = "model: 'default', a registry name, a .pth/.safetensors file or a Hugging Face folder (see load_model)"
INPUT_SIZE_HELP = "network input lower bound, multiple of 14 (default: the model's own, 518 for official models)"
DETAIL_SIZE_HELP = ("also read each frame at this larger network size (multiple of 14, e.g. 252 for the default "
                    "model) and keep that read's detail on the first read's layout: polyps and folds stand out "
                    "more, about 3x the inference time (default: one read)")
BATCH_SIZE_HELP = "frames per inference batch (default: 1 on CPU, 4 on a GPU)"
DEVICE_HELP = "auto|cpu|cuda|cuda:N|mps (auto: cuda, then mps, then cpu)"
#: --precision choices (written out like BACKEND_CHOICES: loading.PRECISIONS would import torch)
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
PRECISION_HELP = ("inference precision (auto: half precision on GPU, fp32 on CPU; bf16 on a CPU with AVX512-BF16 or "
                  "AMX is ~1.4-1.9x faster than fp32, on other CPUs slower)")


def add_model_args(parser: argparse.ArgumentParser, *, batch_size: bool = True, detail: bool = True) -> None:
    """The flags of every command that runs a depth model, with one default and help text each: ``--model`` (and
    its hints, :func:`add_model_source_args`), ``--input-size``, ``--detail-size`` (when ``detail``),
    ``--batch-size`` (when ``batch_size``), ``--device``, ``--precision``, ``--backend``."""
    add_model_source_args(parser)
    parser.add_argument("--input-size", type=input_size_arg, default=None, help=INPUT_SIZE_HELP)
    if detail:
        parser.add_argument("--detail-size", type=input_size_arg, default=None, help=DETAIL_SIZE_HELP)
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=None, help=BATCH_SIZE_HELP)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES, help=BACKEND_HELP)


def add_model_source_args(parser: argparse.ArgumentParser, *, flag: str | None = "--model",
                          default: str | None = "default") -> None:
    """``--model`` (unless ``flag`` is None: a command that takes the source as its argument) and the hints a weight
    file may need, as ``sd.load_model`` takes them: ``--model-version v1|v2`` (a file without its official name)
    and ``--model-max-depth M`` (a metric model of another depth range); :func:`model_hints` collects them."""
    if flag is not None:
        parser.add_argument(flag, default=default, help=MODEL_HELP)
    parser.add_argument("--model-version", choices=("v1", "v2"), default=None,
                        help="Depth Anything V1 or V2, for a weight file whose name does not say (same shapes)")
    parser.add_argument("--model-max-depth", type=float, default=None, metavar="M",
                        help="a metric model's depth range (its head's sigmoid x M, in its unit), for a file whose "
                             "name does not say (official metric names: hypersim 20, vkitti 80)")


def model_hints(args: argparse.Namespace) -> dict:
    """``sd.load_model`` keywords from :func:`add_model_source_args`' flags (the ones given)."""
    hints = {"version": getattr(args, "model_version", None), "max_depth": getattr(args, "model_max_depth", None)}
    return {key: value for key, value in hints.items() if value is not None}


def add_depth_range_arg(parser: argparse.ArgumentParser) -> None:
    """``--depth-range NEAR FAR``: the mm range that turns a relative model's disparity into depth."""
    parser.add_argument("--depth-range", type=float, nargs=2, default=DEFAULT_DEPTH_RANGE_MM, metavar=("NEAR", "FAR"),
                        help="depth in mm of the nearest/farthest tissue, used to scale relative (disparity) models "
                             f"(default {DEFAULT_DEPTH_RANGE_MM[0]:g} {DEFAULT_DEPTH_RANGE_MM[1]:g})")


class _UsageError(Exception):
    """A command-line usage error, raised instead of argparse's exit so that ``--progress jsonl`` callers also
    get an ``error`` event for it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(self, message)


def _wants_jsonl(argv: list[str]) -> bool:
    return "--progress=jsonl" in argv or any(a == "--progress" and b == "jsonl" for a, b in zip(argv, argv[1:]))


def build_parser(extra: tuple = ()) -> argparse.ArgumentParser:
    """The full parser. ``extra``: more ``register(subparsers)`` functions (used by ``python -m
    SurgicalDepthTrainingLib``, which works without an installed entry point, e.g. inside 3D Slicer)."""
    parser = _ArgumentParser(
        prog="surgical-depth",
        description="Monocular depth for surgical video (Depth Anything V1/V2) and 3D reconstruction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"surgical-depth {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _CORE_COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    registrars = list(extra)
    for ep in sorted(entry_points(group="surgical_depth.commands"), key=lambda e: e.name):
        func = ep.load()
        if func not in registrars:
            registrars.append(func)
    for register in registrars:
        register(subparsers)
    for command in subparsers.choices.values():
        command.add_argument("--progress", choices=PROGRESS_MODES, default="bar",
                             help="progress display: bar (tqdm on stderr), jsonl (one JSON object per stdout "
                                  "line, for programs; a line 'stop' on stdin then stops it as SIGTERM does), none")
    return parser


def _handling_interrupt() -> bool:
    """Whether the calling thread is handling a ``KeyboardInterrupt`` (in an ``except``/``finally`` or ``__exit__``
    it passes through, also as the context of another exception): a signal handler sees the code it interrupted."""
    exc = sys.exc_info()[1]
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


class _Interrupts:
    """The command's SIGINT / SIGTERM handler (``handler``, installed by :func:`_signals_interrupt`): the first
    signal raises ``KeyboardInterrupt`` naming it, so that the same clean-up runs for Ctrl-C and for a caller's
    terminate (temporary files, run-folder locks, a half-written output's removal). Once the command has taken the
    interrupt (``taken``: it reached the command's handler) or while its clean-up runs, a signal only says, once, that
    the command is already stopping: a second Ctrl-C must not break that clean-up off half-way. Before, a signal
    that finds no interrupt being handled raises again: the first was dropped (raised inside a ``__del__``, a
    callback or an extension module's import, where Python discards exceptions) and the command would run on."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.taken = self.told = False
        self.handler = self._handle  # one bound method: ``signal.getsignal`` returns this very object

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received and (self.taken or _handling_interrupt()):
            if not self.told:  # os.write: the handler may interrupt a write to sys.stderr, which must not be re-entered
                os.write(2, f"{name}: already stopping (cleaning up after {self.received[0]})\n".encode())
                self.told = True
            return
        self.received.append(name)
        raise KeyboardInterrupt(self.received[0])


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[_Interrupts | None]:
    """While active, SIGINT and SIGTERM go to an :class:`_Interrupts` handler (yielded). Python delivers signals to the
    main thread only: elsewhere nothing is installed (and ``None`` is yielded)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    interrupts = _Interrupts()
    previous = {sig: signal.signal(sig, interrupts.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupts
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: a line a caller writes to a ``--progress jsonl`` command's stdin to stop it as SIGTERM does: Slicer starts commands
#: through its PythonSlicer launcher, which passes stdin on to the interpreter it starts, but no signal
STOP_LINE = "stop"
#: seconds between deliveries of a stop line's SIGTERM while the command's own interrupt handler is in place
STOP_REPEAT_S = 2.0


def _stop_on_stdin_line(own_handler: Callable | None) -> None:
    """A daemon thread that reads stdin and, at a line :data:`STOP_LINE`, delivers SIGTERM to the main thread
    (``_thread.interrupt_main``: nothing happens while no Python handler is installed), whose handlers then stop the
    command cleanly. While ``own_handler`` (:func:`_signals_interrupt`'s) is the one in place it delivers again every
    :data:`STOP_REPEAT_S` seconds (it ignores repeats while it cleans up, and raises again if its first interrupt was
    dropped); a handler a command installed instead (train's: stop at the next step, a second signal stops at once)
    gets exactly one. The end of stdin (closed, ``/dev/null``) does nothing."""
    import _thread
    import time

    def watch() -> None:
        try:
            if not any(line.strip() == STOP_LINE for line in sys.stdin):
                return
        except (OSError, ValueError):  # no readable stdin (pytest's capture, a closed descriptor)
            return
        while True:
            handler = signal.getsignal(signal.SIGTERM)
            if callable(handler):
                _thread.interrupt_main(signal.SIGTERM)
                if handler is not own_handler:
                    return
            time.sleep(STOP_REPEAT_S)

    if own_handler is not None and sys.stdin is not None:
        threading.Thread(target=watch, name="stdin stop line", daemon=True).start()


def _console_never_fails() -> None:
    """Characters the console's encoding lacks are written escaped (``\\u2192``) instead of raising: on Windows a
    redirected or piped stdout uses the ANSI code page (cp1252 has no "→" or "δ", nor most non-Latin-1 letters of a
    path), and a command that had done its work then ended in UnicodeEncodeError while printing where it wrote."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None, extra: tuple = ()) -> int:
    _console_never_fails()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(extra)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:  # argparse's exit code, one line (not its usage block), plus the jsonl error event
        print(f"{exc.parser.prog}: error: {exc} (see {exc.parser.prog} --help)", file=sys.stderr)
        if _wants_jsonl(argv):
            ProgressReporter("jsonl", sys.stdout).error(str(exc))
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # torch's own INFO lines (its exit hook's "FakeTensor cache stats") are not ours to print
        logging.getLogger("torch").setLevel(logging.WARNING)
    # FFmpeg's own log lines (an unreadable video's "moov atom not found") would precede the command's one-line
    # error; OpenCV reads this when it opens a video. A level the user set is kept (--verbose: FFmpeg's default)
    if not args.verbose:
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        _quiet_opencv()
    if os.environ.get("RANK", "0") != "0":  # torchrun: only rank 0 reports progress and the final event
        args.progress, args.other_rank = "none", True
    reporter = args.progress_reporter = ProgressReporter(args.progress, sys.stdout)
    # held until the error is reported: a second signal must not break that off
    with _signals_interrupt() as interrupts:
        if args.progress == "jsonl" and interrupts is not None:  # a machine caller (the Slicer modules) may stop it
            _stop_on_stdin_line(interrupts.handler)  # through stdin
        return _run_command(args, reporter, interrupts)


def _quiet_opencv() -> None:
    """Silence OpenCV's own log lines (a corrupt PNG's "[ WARN:0@7.49] global grfmt_png.cpp ... read_chunk" before
    the command's one-line error), unless the user set ``OPENCV_LOG_LEVEL``. Called when a command runs, not when
    the parser is built (which the commands' modules make import OpenCV already: no cost here)."""
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    import cv2

    api = getattr(getattr(cv2, "utils", None), "logging", None)
    if api is not None and hasattr(api, "setLogLevel"):
        api.setLogLevel(api.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):  # older builds without cv2.utils.logging
        cv2.setLogLevel(0)


#: flags that size what a command holds in memory, in the order an out-of-memory hint names them
MEMORY_FLAGS = ("--batch-size", "--input-size", "--frames", "--size")


def memory_hint(args: argparse.Namespace) -> str:
    """What to lower after an out-of-memory error: the :data:`MEMORY_FLAGS` that the parsed command has (its
    namespace holds every flag of its own parser, defaults included), e.g. ``lower --batch-size or --input-size``
    for predict, ``lower --frames or --size`` for synth."""
    flags = [flag for flag in MEMORY_FLAGS if hasattr(args, flag[2:].replace("-", "_"))]
    if not flags:
        return "free memory or give smaller inputs"
    return "lower " + (flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " or " + flags[-1])


def _run_command(args: argparse.Namespace, reporter: ProgressReporter, interrupts: _Interrupts | None) -> int:
    """Run the parsed command; an interrupt (taken: ``interrupts``) or an error a user can fix becomes one line on
    stderr, the jsonl ``error`` event and its exit code (130, 2); success the ``done`` event."""
    # jsonl: stdout is the JSON channel; the command's own messages go to stderr (also those of torchrun's other
    # ranks, which share rank 0's stdout)
    to_stderr = args.progress == "jsonl" or getattr(args, "other_rank", False)
    quiet = contextlib.redirect_stdout(sys.stderr) if to_stderr else contextlib.nullcontext()
    try:
        with quiet:
            code = int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if interrupts is not None:
            interrupts.taken = True
        print(f"surgical-depth: interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        reporter.error("interrupted")
        return 130
    except (CliError, ValueError, TypeError, FileNotFoundError, FileExistsError, OSError) as exc:
        reporter.error(str(exc))
        if args.verbose:
            raise
        print(f"surgical-depth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.verbose or not is_out_of_memory(exc):
            reporter.error(f"{type(exc).__name__}: {exc}")
            raise
        message = (f"out of memory ({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}); "
                   f"{memory_hint(args)}")
        reporter.error(message)
        print(f"surgical-depth {args.command}: error: {message}", file=sys.stderr)
        return 2
    if code == 0:
        reporter.done(**getattr(args, "result", {}))
    else:
        reporter.error(f"exit code {code}")
    return code


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: a size the user chose (``--input-size``, ``--batch-size``) that the
    machine cannot hold — Python's MemoryError, torch's OutOfMemoryError (CUDA), or an allocator's message in a
    RuntimeError (torch on CPU) or ``cv2.error``."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return type(exc).__name__ in ("RuntimeError", "error") and any(
        marker in text for marker in ("out of memory", "can't allocate", "insufficient memory", "failed to allocate"))


def run(extra: tuple = ()) -> None:
    """The ``surgical-depth`` program: :func:`main` (``extra`` as there), then exit with its code. After an
    interrupt, signals are ignored until the process has ended: a second Ctrl-C during the interpreter's shut-down
    (threads joined, torch's exit hooks) would otherwise end it with a traceback and Python's own exit status."""
    code = main(extra=extra)
    if code == 130 and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
