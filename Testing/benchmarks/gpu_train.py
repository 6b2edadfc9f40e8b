"""Issue #15's big training run, prepared for a lent GPU: minutes of one GPU instead of hours of two CPU cores.

A lent GPU gives a session 15 minutes of device time in all and 10 minutes per command, so the run is one command
with a time budget (``gpu_check.sh train``):

1. render the default recipe's training clips (``clip_specs(960, 0, scope_light_from=480, polyps_from=720)``: the
   scenes, paths and looks of the shipped model's data) at ``--size`` with ``--render-workers`` processes;
2. measure the step rate on ``--probe-steps`` steps of the real configuration (the steady rate after the first
   ten), and set the run's length so that its learning-rate schedule ends inside the budget (``--minutes`` for
   probe and run together; a deadline stops the run if it is slower than measured, and the weights are exported
   all the same);
3. train ``--model`` with the recipe's loss and augmentation (L1 on mean-normalised disparity, photometry
   p = 0.8; with ``--unlabeled-root FRAMES``, real frames carried to the device, also the semi-supervised term as
   the recipe's ``real-look`` stage, teacher SRC of ``widened:SRC`` with the detail read at 252 px, and the same
   frames lending the labeled frames their low spatial frequencies), bf16 on
   CUDA: by default the Depth Anything V2-S architecture (the issue's first lever) started from the shipped default
   model widened to it (``widened:default``, :mod:`SurgicalDepthTrainingLib.widen`: the same
   function at twice the width), so minutes of a GPU continue from where the CPU runs ended instead of from
   random weights (``--model random:depth-anything-v2-small`` for those);
4. export fp16 safetensors read at the training height, and split it into parts of at most 15 MiB (the device tool
   brings back files of at most 16 MiB), with the SHA256 of the whole in ``summary.json``.

Back on the workstation: ``cat OUT/model.safetensors.part* > model.safetensors``, check its SHA256 against
``summary.json``, then ``python Testing/benchmarks/compare_models.py --model default --model model.safetensors``
and ``eval_default_model.py --model model.safetensors``. Judge it by SimCol3D, EndoSLAM and the real-frame rows,
not by its validation AbsRel: on the CPUs this labeled-only setting at twice the width fitted the renderer
better and transferred worse (model card, "Tried after v4 (fourteenth and fifteenth sessions)").

Usage: ``python Testing/benchmarks/gpu_train.py --out DIR [--minutes 5] [--model widened:default]
[--size 252x308] [--clips 960] [--data DIR] [--unlabeled-root FRAMES [--teacher SRC]] [--render-workers N]
[--device cuda]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
WIDENED = "widened:"  # ``--model widened:SRC``: SRC at twice its width


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def render(data: Path, clips: int, size: tuple[int, int], workers: int) -> float:
    """The recipe's clips at ``size`` into ``data`` (kept where already there); seconds taken."""
    from SurgicalDepthTrainingLib.recipes import DEFAULT_RECIPE, render_training_set

    start = time.perf_counter()
    render_training_set(data, clips, DEFAULT_RECIPE["frames_per_clip"], DEFAULT_RECIPE["data_seed"], *size,
                        scope_light_from=DEFAULT_RECIPE["scope_light_from"],
                        polyps_from=DEFAULT_RECIPE["polyps_from"], workers=workers)
    return time.perf_counter() - start


def widened_source(model: str) -> str | None:
    """SRC of ``--model widened:SRC``; None for any other start."""
    return model[len(WIDENED):] if model.startswith(WIDENED) else None


def start_model(model: str, out: Path) -> str:
    """``--model`` as a ``load_model`` source: ``widened:SRC`` becomes ``out/start.safetensors``, SRC widened."""
    source = widened_source(model)
    if source is None:
        return model
    from SurgicalDepthTrainingLib.widen import widen_checkpoint

    return str(widen_checkpoint(source, out / "start.safetensors"))


def teacher_model(args: argparse.Namespace) -> str | None:
    """The semi-supervised run's teacher: ``--teacher``, else SRC of ``--model widened:SRC`` (the same function
    at half the cost), else None (the trainer's default: the start weights)."""
    return args.teacher if args.teacher is not None else widened_source(args.model)


def config(args: argparse.Namespace, steps: int, output: Path, model: str):
    """The run's ``TrainConfig``: the recipe's last labeled-only stage at ``args.size`` on every clip, ``steps``
    long; with ``args.unlabeled_root``, its last semi-supervised stage instead, the real frames read by
    :func:`teacher_model` with the detail read at 252 px (the twelfth session's setting) and lending the labeled
    frames their low spatial frequencies (:mod:`SurgicalDepthTrainingLib.style_frames`)."""
    from SurgicalDepthTrainingLib.recipes import DEFAULT_RECIPE
    from SurgicalDepthTrainingLib.training import TrainConfig

    semi = args.unlabeled_root is not None
    base = dict([s for s in DEFAULT_RECIPE["stages"] if bool(s.get("unlabeled")) == semi][-1]["train"])
    if semi:
        base.update(unlabeled_root=str(args.unlabeled_root), teacher=teacher_model(args), teacher_detail_size=252,
                    style_root=str(args.unlabeled_root))
    lr = args.lr if args.lr is not None else 1e-4 if model.startswith("random:") else 3e-5  # 3e-5: the paper's
    base.update(model=model, lr=lr, input_size=args.size, max_steps=steps, batch_size=args.batch_size,
                warmup_steps=min(100, max(1, steps // 10)), root=str(args.data), output=str(output),
                split=",".join(f"seq_{i:04d}" for i in range(args.clips)), device=args.device,
                num_workers=args.loader_workers, save_every=0, log_every=50, checkpoint_minutes=2.0)
    if model.startswith("random:"):
        base["head_bias"] = 1.0  # as the recipe's stage 1: keeps the final ReLU alive from the start
    return TrainConfig(**base)


class Clock:
    """``should_stop`` for ``train``: notes when each optimizer step ends and says stop after ``deadline``, but not
    in its first ``at_least`` polls (``train`` polls once before the first step: 2 = at least one step taken)."""

    def __init__(self, deadline: float, at_least: int = 0) -> None:
        self.deadline, self.at_least, self.times = deadline, at_least, []

    def __call__(self) -> bool:
        self.times.append(time.perf_counter())
        return len(self.times) > self.at_least and self.times[-1] > self.deadline

    def rate(self, skip: int = 10) -> float:
        """Steps per second after the first ``skip`` (start-up, compilation, loader warm-up)."""
        times = self.times[skip:] if len(self.times) > skip + 1 else self.times
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)


def split_file(path: Path, out: Path) -> list[Path]:
    """``path`` as ``out/<name>.part00, .part01, ...`` of at most :data:`PART_BYTES` each."""
    data, parts = path.read_bytes(), []
    for i in range(0, max(len(data), 1), PART_BYTES):
        parts.append(out / f"{path.name}.part{i // PART_BYTES:02d}")
        parts[-1].write_bytes(data[i:i + PART_BYTES])
    return parts


def run(args: argparse.Namespace) -> dict:
    from SurgicalDepthTrainingLib.recipes import export_stage
    from SurgicalDepthTrainingLib.training import TrainingStopped, train

    summary: dict = {"model": args.model, "size": list(args.size), "clips": args.clips, "device": args.device,
                     "unlabeled_root": None if args.unlabeled_root is None else str(args.unlabeled_root)}
    summary["render_s"] = round(render(args.data, args.clips, args.size, args.render_workers), 1)
    start_weights = start_model(args.model, args.out)  # set-up, like the rendering: outside the training budget
    start = time.perf_counter()
    deadline = start + 60.0 * args.minutes
    probe = Clock(deadline)
    try:
        train(config(args, args.probe_steps, args.out / "probe", start_weights), should_stop=probe)
    except TrainingStopped:
        pass
    shutil.rmtree(args.out / "probe", ignore_errors=True)
    summary["probe_steps_per_s"] = round(probe.rate(), 3)
    left = deadline - time.perf_counter()
    steps = max(1, int(probe.rate() * left * args.margin))
    summary["planned_steps"] = steps
    clock, run_dir = Clock(deadline, at_least=2), args.out / "run"  # one step at least: the export is trained
    try:
        train(config(args, steps, run_dir, start_weights), should_stop=clock)
        summary["stopped_at"] = None
    except TrainingStopped as stop:
        summary["stopped_at"] = stop.step  # slower than the probe: the weights of that step are exported
    summary["train_s"] = round(time.perf_counter() - start, 1)
    summary["steps_per_s"] = round(clock.rate(), 3)
    card = {"name": "surgical-depth-gpu-candidate", "stage": "gpu_train", "summary": json.dumps(summary)}
    model = export_stage(run_dir, "last", args.out / "model.safetensors", card, input_size=args.size[0])
    summary["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    summary["parts"] = [p.name for p in split_file(model, args.out)]
    model.unlink()
    (args.out / "start.safetensors").unlink(missing_ok=True)  # a widened start: not for the trip back
    shutil.copyfile(run_dir / "log.csv", args.out / "log.csv")
    if not args.keep_run:
        shutil.rmtree(run_dir)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the parts, log.csv and summary.json")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall time for probe + training (default 5)")
    ap.add_argument("--model", default=WIDENED + "default",
                    help="start weights (load_model source; widened:SRC = SRC at twice its width)")
    ap.add_argument("--size", type=_size, default=(252, 308), help="training frames HxW (default 252x308)")
    ap.add_argument("--clips", type=int, default=960, help="recipe clips rendered and trained on (default 960)")
    ap.add_argument("--data", type=Path, default=None, help="where the clips are rendered (default OUT/../data)")
    ap.add_argument("--unlabeled-root", type=Path, default=None,
                    help="real frames (image folder or video) through the semi-supervised term (default: none)")
    ap.add_argument("--teacher", default=None,
                    help="the semi-supervised term's teacher (default: SRC of widened:SRC, else the start weights)")
    ap.add_argument("--lr", type=float, default=None,
                    help="encoder learning rate (decoder x3; default 1e-4 from random weights, else 3e-5)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--probe-steps", type=int, default=40)
    ap.add_argument("--margin", type=float, default=0.85, help="share of the measured rate planned on")
    ap.add_argument("--render-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--loader-workers", type=int, default=min(12, max(0, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--keep-run", action="store_true", help="keep the run folder (last.pt) beside the parts")
    args = ap.parse_args()
    if args.teacher is not None and args.unlabeled_root is None:
        ap.error("--teacher acts only with --unlabeled-root (the semi-supervised term), got it without one")
    args.out.mkdir(parents=True, exist_ok=True)
    args.data = args.data or args.out.parent / "data"
    print(json.dumps(run(args), indent=2), flush=True)


if __name__ == "__main__":
    main()
