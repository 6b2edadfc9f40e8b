"""``surgical-depth train``: fine-tune a depth model (resumable; launch with torchrun for several GPUs).

SIGINT (Ctrl-C) and SIGTERM (Slicer's Cancel, torchrun forwarding a stop) ask the run to stop at the next optimizer
step and save ``last.pt`` first; ``--resume`` continues it. A second signal stops at once (the last checkpoint
written stays).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from SurgicalDepthLib.cli import DEVICE_HELP, OVERWRITE_HELP, add_model_source_args, progress_of
from SurgicalDepthTrainingLib.loss_names import LOSS_NAMES  # torch-free: building the parser stays cheap

from ._dataset_options import DATASET_OPTION_HELP, dataset_option, dataset_options

logger = logging.getLogger(__name__)

#: TrainConfig fields set from flags of the same name only when given (argparse default None), so that
#: TrainConfig's defaults are the only ones; the help texts quote them (Testing checks that they agree).
CONFIG_FLAGS = ("val_fraction", "model", "loss", "lr", "decoder_lr_mult", "batch_size", "grad_accum", "epochs",
                "seed", "num_workers", "checkpoint_minutes", "photometric", "unlabeled_weight", "feature_weight",
                "cutmix_prob", "unlabeled_ratio", "style_prob", "style_beta")
#: flags that act only on the semi-supervised term, refused without unlabeled frames (they would do nothing)
SEMI_FLAGS = ("teacher", "unlabeled_weight", "feature_weight", "cutmix_prob", "unlabeled_ratio")
#: flags that act only on the low-frequency swap, refused without --style-root (they would do nothing)
STYLE_FLAGS = ("style_prob", "style_beta")
#: what the first SIGINT/SIGTERM makes train say on stderr (the Training module then waits longer before escalating)
STOPPING_NOTE = "stopping after the current training step"
#: TrainConfig fields whose flag is not ``--field-name``
_FLAG_OF = {"lora_rank": "--lora"}


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune a depth model on a dataset (resumable, torchrun-ready)",
                              description="Fine-tune Depth Anything on RGB + depth data. Writes last.pt (resume "
                                          "point), best.safetensors (best validation AbsRel, loadable with "
                                          "--model; it reads frames at the size it was trained at, the crop's "
                                          "shorter side), train_config.json and log.csv into --output. For DDP: "
                                          "torchrun --nproc_per_node N -m SurgicalDepthLib.cli train ...")
    p.add_argument("--recipe", choices=("default",), default=None,
                   help="'default' reproduces the shipped default model from scratch: renders its synthetic "
                        "training set into OUTPUT/data, trains, exports OUTPUT/surgical-depth-default.safetensors; "
                        "needs --unlabeled-root: the Kvasir-SEG images, which its stage 'real-frames' reads without "
                        "labels (other data/model/recipe flags are ignored)")
    p.add_argument("--render-workers", type=int, default=1, metavar="N",
                   help="with --recipe: render the training clips in N processes (default 1; the files are the "
                        "same for any N)")
    p.add_argument("--dataset", default=None, help="dataset loader name (e.g. synthetic, c3vd, scared, folder)")
    p.add_argument("--root", default=None, type=Path, help="dataset root folder")
    p.add_argument("--output", required=True, type=Path, help="output folder of the run")
    p.add_argument("--split", default=None, help="training split (loader-specific; default everything found)")
    p.add_argument("--dataset-option", dest="dataset_options", type=dataset_option, action="append", default=[],
                   metavar="KEY=VALUE", help=DATASET_OPTION_HELP + " (training and validation data)")
    p.add_argument("--val-split", default=None,
                   help="validation split (default: hold out --val-fraction of the training data)")
    p.add_argument("--val-fraction", type=float, default=None, help="held-out validation fraction (default 0.1)")
    p.add_argument("--model", default=None,
                   help="start weights: a registry name, checkpoint, HF folder or random:<name> "
                        "(default random:surgical-depth-tiny)")
    add_model_source_args(p, flag=None)
    p.add_argument("--loss", choices=LOSS_NAMES, default=None, help="training loss (default l1)")
    p.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="LoRA rank on attention qkv, encoder otherwise frozen (default 0 = full fine-tuning)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 10)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps; overrides --epochs")
    p.add_argument("--batch-size", type=int, default=None, help="images per process per micro-batch (default 16)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=None, help="encoder learning rate (default 3e-5)")
    p.add_argument("--decoder-lr-mult", type=float, default=None, help="decoder lr multiplier (default 10)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="training crop H W (or one value for a square), rounded to multiples of 14 "
                        "(default 256 386 -> 252 x 392)")
    p.add_argument("--no-augment", action="store_true", help="disable flip and colour jitter")
    p.add_argument("--photometric", type=float, default=None, metavar="P",
                   help="probability of an endoscope look per training sample: random tone curve, local "
                        "brightness adaptation, white balance, JPEG, scope border (default 0)")
    p.add_argument("--style-root", default=None, type=Path, metavar="FRAMES",
                   help="a folder of real frames (no depth needed) whose low spatial frequencies (overall colour, "
                        "exposure, broad shading) training samples take, their geometry and depth kept (Fourier "
                        "Domain Adaptation, Yang & Soatto 2020; the central 60 %% of each frame is used)")
    p.add_argument("--style-prob", type=float, default=None, metavar="P",
                   help="with --style-root: probability per training sample (default 0.5)")
    p.add_argument("--style-beta", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="with --style-root: half-width of the swapped frequency window as a fraction of the "
                        "frame's shorter side, drawn per sample between LOW and HIGH (default 0.01 0.04)")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="bf16 mixed precision (default auto: on for CUDA GPUs with bf16)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--num-workers", type=int, default=None, help="data loader worker processes (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--min-depth", type=float, default=None, help="validation range lower bound (dataset unit)")
    p.add_argument("--max-depth", type=float, default=None, help="validation range upper bound (dataset unit)")
    p.add_argument("--unlabeled-dataset", default=None,
                   help="semi-supervised (Depth Anything: teacher pseudo-labels, strong perturbations, CutMix, "
                        "feature alignment): 'frames' (default with --unlabeled-root: its images and videos, no "
                        "depth needed) or a dataset loader name whose images are used (depth ignored)")
    p.add_argument("--unlabeled-root", default=None,
                   help="semi-supervised: a folder of frames (images at any depth, videos) or a video file; "
                        "enough on its own. With a loader name in --unlabeled-dataset: its root (default --root)")
    p.add_argument("--teacher", default=None,
                   help="semi-supervised: teacher model, any size (default: the start model)")
    p.add_argument("--teacher-detail-size", type=int, default=None,
                   help="semi-supervised: the teacher also reads each unlabeled frame at this larger size and "
                        "teaches the merge of both reads (as --detail-size of predict; default: one read)")
    p.add_argument("--unlabeled-weight", type=float, default=None, metavar="W",
                   help="semi-supervised: weight of the unlabeled term (pseudo-labels + feature alignment) added to "
                        "the labeled loss (default 1.0)")
    p.add_argument("--feature-weight", type=float, default=None, metavar="W",
                   help="semi-supervised: weight of the feature alignment within the unlabeled term (default 1.0)")
    p.add_argument("--cutmix-prob", type=float, default=None, metavar="P",
                   help="semi-supervised: probability that an unlabeled frame gets a CutMix box from another "
                        "(default 0.5)")
    p.add_argument("--unlabeled-ratio", type=float, default=None, metavar="R",
                   help="semi-supervised: unlabeled frames per labeled image in each batch; Depth Anything V1 "
                        "mixes them 1:2 (default 2.0)")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (default: epochs)")
    p.add_argument("--log-every", type=int, default=0, help="also log a CSV row every N steps")
    p.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="also save last.pt once this many minutes passed since the last save (default 10.0), "
                        "besides every epoch end and Ctrl-C/SIGTERM")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from last.pt (keeps its files; stale temporary files of "
                        "killed saves are removed)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=run)


def _input_size(values: list[int] | None) -> dict:
    """``--input-size`` (H W, or one value for a square) as TrainConfig keyword arguments ({} when not given)."""
    if values is None:
        return {}
    if len(values) not in (1, 2):
        raise ValueError(f"--input-size takes H W or one value, got {values}")
    return {"input_size": tuple(values) * (2 if len(values) == 1 else 1)}


def _result(best: Path) -> dict:
    """Fields of the ``done`` event: the best checkpoint and its validation scores (from ``best.json``)."""
    info = best.with_name("best.json")
    val = json.loads(info.read_text()).get("val", {}) if info.is_file() else {}
    return {"best": str(best), **{f"val_{k}": val[k] for k in ("abs_rel", "a1") if k in val}}


def _absolute(path: str | Path | None) -> str | None:
    """An existing file or folder as its absolute path (a resumed run compares paths, and it may be resumed from
    another working directory: ``--root ds`` there is other data); anything else as given."""
    if path is None:
        return None
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def _absolute_source(source: str | None) -> str | None:
    """A model source for ``TrainConfig``: names (``default``, registry names, ``random:...``; ``load_model`` reads
    them before paths) as given, a file or folder as its absolute path (:func:`_absolute`)."""
    from SurgicalDepthLib.configs import MODEL_CONFIGS
    from SurgicalDepthLib.weights import WEIGHTS

    if source is None or source == "default" or source.startswith("random:") or source in WEIGHTS \
            or source in MODEL_CONFIGS:
        return source
    return _absolute(source)


def _config(**fields):
    """``TrainConfig(**fields)``; a field's error names its flag (``--seed must be >= 0, got -1``)."""
    from SurgicalDepthTrainingLib.training import TrainConfig

    try:
        return TrainConfig(**fields)
    except ValueError as exc:
        found = re.match(r"(\w+) must", str(exc))
        if found is None:
            raise
        name = found.group(1)
        raise ValueError(_FLAG_OF.get(name, "--" + name.replace("_", "-")) + str(exc)[len(name):]) from None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT/SIGTERM (the training loop saves and stops at the next step); a second
    signal raises KeyboardInterrupt at once; later ones are only reported, so that its clean-up finishes. Handlers
    are restored afterwards; outside the main thread (where Python delivers signals) nothing is installed."""
    stop = threading.Event()
    signals = [signal.SIGINT, signal.SIGTERM]
    raised: list[str] = []  # the signal that raised KeyboardInterrupt

    def handler(signum, frame):
        if raised:
            os.write(2, f"{signal.Signals(signum).name}: already stopping (cleaning up)\n".encode())
            return
        if stop.is_set():
            raised.append(signal.Signals(signum).name)
            raise KeyboardInterrupt(raised[0])
        stop.signal_name = signal.Signals(signum).name
        stop.set()
        # os.write: the handler may interrupt a write to sys.stderr, which must not be re-entered
        os.write(2, f"{stop.signal_name}: {STOPPING_NOTE} (saving last.pt) or clip "
                    "(send it again to stop at once)\n".encode())

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(args: argparse.Namespace) -> int:
    from SurgicalDepthTrainingLib.training import TrainingStopped, train

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: --resume continues the earlier run in "
                         "--output, --overwrite deletes it")
    if args.recipe == "default":
        from SurgicalDepthTrainingLib.recipes import train_default_model

        if args.overwrite:
            raise ValueError("--overwrite does not apply to --recipe default: use --resume or a new --output")
        if args.render_workers < 1:
            raise ValueError(f"--render-workers must be >= 1, got {args.render_workers}")
        try:
            with _stop_on_signals() as stop:
                path = train_default_model(args.output, resume=args.resume, max_steps=args.max_steps,
                                           device=args.device, progress=progress_of(args), should_stop=stop.is_set,
                                           render_workers=args.render_workers, unlabeled_root=args.unlabeled_root)
        except TrainingStopped as exc:
            logger.warning("%s: stopped at %d of %d (clips rendered, or steps of a stage); %s saved: continue with "
                           "--recipe default --resume", stop.signal_name, exc.step, exc.total, exc.checkpoint)
            raise KeyboardInterrupt from None
        print(f"default model: {path}")
        args.result = {"model": str(path)}
        return 0
    if args.dataset is None or args.root is None:
        raise ValueError("--dataset and --root are required (unless --recipe is given)")
    size = _input_size(args.input_size)
    if not args.root.exists():
        raise FileNotFoundError(f"--root {args.root} does not exist")
    for flag, path in (("--unlabeled-root", args.unlabeled_root), ("--style-root", args.style_root)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    model = args.model or ""
    if not model.startswith("random:") and ("/" in model or "\\" in model or Path(model).suffix) \
            and not Path(model).exists():
        raise FileNotFoundError(f"--model {model} does not exist")
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    if "model" in given:
        given["model"] = _absolute_source(given["model"])
    if args.unlabeled_root is None and args.unlabeled_dataset is None:
        unused = [name for name in SEMI_FLAGS if getattr(args, name) is not None]
        if unused:
            raise ValueError(f"--{unused[0].replace('_', '-')} acts on unlabeled frames only: give "
                             "--unlabeled-root (a folder of frames or a video) or --unlabeled-dataset")
    unused = [name for name in STYLE_FLAGS if getattr(args, name) is not None]
    if args.style_root is None and unused:
        raise ValueError(f"--{unused[0].replace('_', '-')} acts only with --style-root (a folder of real frames)")
    config = _config(
        dataset=args.dataset, root=_absolute(args.root), split=args.split, val_split=args.val_split,
        dataset_options=dataset_options(args.dataset_options),
        max_steps=args.max_steps, freeze_encoder=args.freeze_encoder, lora_rank=args.lora,
        augment=not args.no_augment, amp={"auto": None, "on": True, "off": False}[args.amp], device=args.device,
        output=str(args.output), min_depth=args.min_depth, max_depth=args.max_depth,
        unlabeled_dataset=args.unlabeled_dataset, unlabeled_root=_absolute(args.unlabeled_root),
        teacher=_absolute_source(args.teacher),
        model_version=args.model_version, model_max_depth=args.model_max_depth,
        teacher_detail_size=args.teacher_detail_size,
        style_root=_absolute(args.style_root),
        save_every=args.save_every, log_every=args.log_every, **size, **given)
    if config.style_root is not None:  # a folder without images is refused before the run folder is made
        from SurgicalDepthTrainingLib.style_frames import StyleFrames

        StyleFrames(config.style_root, config.style_beta)
    try:
        with _stop_on_signals() as stop:
            best = train(config, resume=args.resume, overwrite=args.overwrite, should_stop=stop.is_set,
                         progress=progress_of(args))
    except TrainingStopped as exc:
        logger.warning("%s: stopped at step %d of %d; %s saved: continue with --resume", stop.signal_name,
                       exc.step, exc.total, exc.checkpoint)
        raise KeyboardInterrupt from None
    print(f"best model: {best}")
    args.result = _result(best)
    return 0
