"""The recipe of the shipped default model: a domain-randomised synthetic training set, described once.

``clip_specs(n_clips, seed)`` lists the scene of every training clip (organ cycled, colours/light/texture from the
clip seed, and a seeded share of fisheye optics, motion blur, smoke, blood and noise levels) so the shipped weights
can be reproduced exactly: ``surgical-depth train --recipe default --unlabeled-root KVASIR_SEG_IMAGES`` renders
them and trains on them (see README, "The default model"). Its fifth and seventh stages add real colonoscopy frames
without labels through Depth Anything's semi-supervised term: the Kvasir-SEG images (Jha et al., MMM 2020; CC BY
4.0 as part of HyperKvasir, Borgli et al., Sci. Data 2020), less the ones held out for evaluation
(:func:`kvasir_seg_held_out`); in the seventh, the same frames also lend the labeled frames their low spatial
frequencies (:mod:`.style_frames`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from SurgicalDepthLib import __version__
from SurgicalDepthLib.loading import DEFAULT_MODEL_REFERENCE_FOV_DEG
from SurgicalDepthLib.progress import ProgressReporter

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_SIZE = (182, 224)  # (H, W): 13 x 16 patches of 14 px
ORGAN_CYCLE = ("colon", "stomach", "small_intestine", "surgical_field", "colon", "small_intestine")
#: ranges of the scope-light options drawn for clips from ``scope_light_from`` on (``SceneConfig`` fields)
SCOPE_LIGHT = {"fill_light": (0.0, 0.3), "beam_exponent": (0.0, 4.0)}
#: field of view (degrees across the width) of the clips from ``wide_view_from`` on: real colonoscopes and capsules
#: see 140–170°, beyond the 80–125° of the first clips; a share of them through a fisheye lens (pinhole <= 150°)
WIDE_VIEW = {"fov_deg": (125.0, 165.0), "fisheye_share": 0.7, "pinhole_max_deg": 150.0}
#: polyps per 100 mm of lumen drawn for the clips from ``polyps_from`` on (``SceneConfig.polyps``; tube organs),
#: and the share of those clips that approach and inspect one polyp (``SceneConfig.close_up``)
POLYPS = {"polyps": (1.5, 5.0), "close_up_share": 0.5}
#: strength of the patches of other reflectance (blood, bile, mucus, bruising) drawn for the clips from
#: ``albedo_from`` on (``SceneConfig.albedo_patches``)
ALBEDO = {"albedo_patches": (0.4, 1.0)}


def clip_specs(n_clips: int, seed: int = 0, height: int = DEFAULT_TRAIN_SIZE[0],
               width: int = DEFAULT_TRAIN_SIZE[1], scope_light_from: int | None = None,
               wide_view_from: int | None = None, polyps_from: int | None = None,
               albedo_from: int | None = None) -> list[dict[str, Any]]:
    """``SceneConfig`` keyword arguments of each training clip (deterministic for ``seed``).

    Clips with index >= ``scope_light_from`` also get the scope's light drawn from :data:`SCOPE_LIGHT`
    (inter-reflection fill, beam profile), clips with index >= ``wide_view_from`` a field of view from
    :data:`WIDE_VIEW`, clips with index >= ``polyps_from`` polyps (:data:`POLYPS`) and clips with index >=
    ``albedo_from`` patches of other reflectance (:data:`ALBEDO`), each from a generator of their own, so every
    earlier clip stays as it was.
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n_clips):
        specs.append(dict(
            organ=ORGAN_CYCLE[i % len(ORGAN_CYCLE)], seed=int(seed * 100_003 + i), height=height, width=width,
            fov_deg=float(rng.uniform(80.0, 125.0)), fisheye=bool(rng.random() < 0.3), randomize=True,
            noise=float(rng.uniform(0.003, 0.03)), blur=float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.5)])),
            smoke=float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.05, 0.35)])),
            blood=float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.05, 0.4)])),
            specular=float(rng.uniform(0.4, 1.6)), vignetting=float(rng.uniform(0.1, 0.7)),
            speed_mm=float(rng.uniform(3.0, 8.0)),
        ))
        if scope_light_from is not None and i >= scope_light_from:
            light = np.random.default_rng([seed, i, 7])
            specs[-1].update({k: float(light.uniform(lo, hi)) for k, (lo, hi) in SCOPE_LIGHT.items()})
        if wide_view_from is not None and i >= wide_view_from:
            view = np.random.default_rng([seed, i, 11])
            fisheye = bool(view.random() < WIDE_VIEW["fisheye_share"])
            lo, hi = WIDE_VIEW["fov_deg"]
            specs[-1].update(fisheye=fisheye, fov_deg=float(view.uniform(
                lo, hi if fisheye else min(hi, WIDE_VIEW["pinhole_max_deg"]))))
        if polyps_from is not None and i >= polyps_from:
            draw = np.random.default_rng([seed, i, 13])
            specs[-1].update(polyps=float(draw.uniform(*POLYPS["polyps"])),
                             close_up=bool(draw.random() < POLYPS["close_up_share"]))
        if albedo_from is not None and i >= albedo_from:
            draw = np.random.default_rng([seed, i, 17])
            specs[-1].update({k: float(draw.uniform(lo, hi)) for k, (lo, hi) in ALBEDO.items()})
    return specs


def render_training_set(root: str | Path, n_clips: int, frames_per_clip: int = 8, seed: int = 0,
                        height: int = DEFAULT_TRAIN_SIZE[0], width: int = DEFAULT_TRAIN_SIZE[1],
                        progress: Callable[[int], None] | None = None,
                        scope_light_from: int | None = None, wide_view_from: int | None = None,
                        polyps_from: int | None = None, workers: int = 1, albedo_from: int | None = None,
                        should_stop: Callable[[], bool] | None = None) -> list[Path]:
    """Render ``n_clips`` sequences of ``clip_specs`` into ``root/seq_XXXX`` (the ``synthetic`` layout); existing
    ones are kept, so an interrupted run resumes. Returns the sequence folders.

    ``workers`` > 1 renders that many clips at once in worker processes (spawned, so it is safe beside torch and
    OpenMP threads; a script that calls it so needs the usual ``if __name__ == "__main__":`` guard, as for any
    spawned process pool); every clip is drawn from its own seeds, so the files are the same for any ``workers``.
    ``progress`` gets the number of clips finished so far (in completion order when ``workers`` > 1).
    ``should_stop`` is polled before the first clip and as each finishes: True raises
    :class:`.training.TrainingStopped` (``step`` = clips finished). Then, as after an error or a cancel, no clip is
    handed out any more; the few already queued to the workers finish first (written atomically: they are kept).
    """
    from ._train_loop import TrainingStopped

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    specs = clip_specs(n_clips, seed, height, width, scope_light_from, wide_view_from, polyps_from, albedo_from)
    folders = [root / f"seq_{i:04d}" for i in range(len(specs))]
    todo = [(spec, folder, frames_per_clip) for spec, folder in zip(specs, folders) if not folder.exists()]
    done = len(folders) - len(todo)
    if progress is not None and done:
        progress(done)

    def finished_one() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done)
        if should_stop is not None and done < len(folders) and should_stop():
            raise TrainingStopped(done, len(folders), str(root))

    if should_stop is not None and todo and should_stop():
        raise TrainingStopped(done, len(folders), str(root))
    if workers == 1 or len(todo) < 2:
        for job in todo:
            _render_one(job)
            finished_one()
        return folders
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_interrupts)
    futures = [pool.submit(_render_one, job) for job in todo]
    try:
        for future in as_completed(futures):
            future.result()  # a clip that failed stops the set (the finished clips stay for a resume)
            finished_one()
    except BaseException:  # an error or a cancel (Ctrl-C, progress raising, should_stop): no clip handed out after it
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # (a `with` block's own shutdown would run the queue)
        raise
    pool.shutdown(wait=True)
    return folders


def _ignore_interrupts() -> None:
    """Worker processes ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and the parent alone
    decides (it stops handing out clips; a worker's interrupted clip would only come back as a failure)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_one(job: tuple[dict[str, Any], Path, int]) -> Path:
    """Render one clip of ``clip_specs`` (spec, folder, frames) into its folder (written atomically)."""
    from .synthetic import render_clip, write_synthetic

    spec, folder, n_frames = job
    options = {k: v for k, v in spec.items() if k not in ("organ", "seed", "height", "width")}
    frames = render_clip(spec["organ"], n_frames=n_frames, seed=spec["seed"], height=spec["height"],
                         width=spec["width"], **options)
    return write_synthetic(frames, folder, {"organ": spec["organ"], "seed": spec["seed"], "generator": spec})


# -- the default model ------------------------------------------------------------------------------------------
#: The shipped default model (v5), trained in eight stages on one data set of ``clip_specs(960, data_seed)``:
#: 1. ``synthetic`` (= the v1 model): from random initialisation on the first 240 clips;
#: 2. ``endoscope-look``: fine-tunes stage 1's fp16 export on all 480 clips with the photometry augmentation
#:    (:mod:`.photometric`: tone curves, local adaptation, white balance, JPEG, scope borders), so that depth is
#:    read from shape rather than from the renderer's brightness (model card: ``Resources/Models/MODEL_CARD.md``).
#: 3. ``scope-light`` (= the v2 model): fine-tunes stage 2 on 720 clips, the last 240 lit like a real scope
#:    (``SCOPE_LIGHT``: light bouncing around the lumen, a beam brightest on the optical axis), same augmentation.
#: 4. ``polyps``: fine-tunes stage 3 on 960 clips, the last 240 with sessile polyps (``POLYPS``; half of them
#:    close-ups of one polyp), at the full 182×224 frames (stages 1-3: 126×168 crops), same augmentation; the
#:    export reads frames at that size (``inference_input_size``) (= the v3 model).
#: 5. ``real-frames``: adds the Kvasir-SEG frames without labels through the semi-supervised term (:mod:`.semi`;
#:    teacher: stage 4); 6. ``settle`` (= the v4 model): labeled frames only, at a lower learning rate.
#: 7. ``real-look``: stage 5's setting again (teacher: stage 6), and half of the labeled frames take the low spatial
#:    frequencies of a Kvasir-SEG frame (:mod:`.style_frames`: Fourier Domain Adaptation, their depth kept);
#:    8. ``settle-again`` (= the v5 model): stage 6's setting from stage 7 (the swap off).
# the labeled settings of stage 4 (whole 182 x 224 frames), which the later stages start from
_WHOLE_FRAMES = dict(
    dataset="synthetic", model="@previous", loss="l1", lr=5e-5, decoder_lr_mult=3.0, weight_decay=0.05,
    batch_size=16, max_steps=1200, input_size=(182, 224), val_fraction=0.05, warmup_steps=30,
    clip_grad_norm=1.0, augment=True, photometric=0.8, seed=0, log_every=50, save_every=100, max_depth=300.0)
DEFAULT_RECIPE = dict(
    frames_per_clip=8, data_seed=0, inference_input_size=182, scope_light_from=480, polyps_from=720,
    reference_fov_deg=DEFAULT_MODEL_REFERENCE_FOV_DEG,
    stages=(
        dict(name="synthetic", n_clips=240, keep="best", train=dict(
            dataset="synthetic", model="random:surgical-depth-tiny", loss="l1", lr=2e-4, decoder_lr_mult=3.0,
            weight_decay=0.05, batch_size=16, max_steps=2400, input_size=(126, 168), val_fraction=0.05,
            warmup_steps=100, clip_grad_norm=1.0, head_bias=1.0, augment=True, seed=0, log_every=100,
            save_every=200, max_depth=300.0)),
        dict(name="endoscope-look", n_clips=480, keep="last", train=dict(
            dataset="synthetic", model="@previous", loss="l1", lr=1e-4, decoder_lr_mult=3.0, weight_decay=0.05,
            batch_size=16, max_steps=1500, input_size=(126, 168), val_fraction=0.05, warmup_steps=50,
            clip_grad_norm=1.0, augment=True, photometric=0.8, seed=0, log_every=50, save_every=100,
            max_depth=300.0)),
        dict(name="scope-light", n_clips=720, keep="last", train=dict(
            dataset="synthetic", model="@previous", loss="l1", lr=5e-5, decoder_lr_mult=3.0, weight_decay=0.05,
            batch_size=16, max_steps=1000, input_size=(126, 168), val_fraction=0.05, warmup_steps=30,
            clip_grad_norm=1.0, augment=True, photometric=0.8, seed=0, log_every=50, save_every=100,
            max_depth=300.0)),
        dict(name="polyps", n_clips=960, keep="last", train=_WHOLE_FRAMES),
        # stages 5 and 6 keep stage 4's labeled settings and change only what is written here
        dict(name="real-frames", n_clips=960, keep="last", unlabeled=True, train=dict(
            _WHOLE_FRAMES, max_steps=800, log_every=25, unlabeled_weight=1.0, feature_weight=1.0, cutmix_prob=0.5)),
        dict(name="settle", n_clips=960, keep="last", train=dict(
            _WHOLE_FRAMES, lr=2e-5, max_steps=300, log_every=25)),
        dict(name="real-look", n_clips=960, keep="last", unlabeled=True, style=True, train=dict(
            _WHOLE_FRAMES, max_steps=400, log_every=25, unlabeled_weight=1.0, feature_weight=1.0, cutmix_prob=0.5,
            style_prob=0.5, style_beta=(0.01, 0.04))),
        # style_prob 0: the swap is off, but each labeled sample still draws whether to swap, as in the run that
        # made the v5 weights, so that the recipe reproduces them bit for bit
        dict(name="settle-again", n_clips=960, keep="last", style=True, train=dict(
            _WHOLE_FRAMES, lr=2e-5, max_steps=300, log_every=25, style_prob=0.0)),
    ),
)
#: Kvasir-SEG images never trained on: the five of ../shared/samples/real (README figure, model card) and the last
#: :data:`KVASIR_SEG_HELD_OUT_LAST` in name order (the model card's held-out polyp measure).
KVASIR_SEG_SAMPLES = ("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0qx73cjw570799j4n5cjze",
                      "cju0roawvklrq0799vmjorwfv", "cju0rx1idathl0835detmsp84")
KVASIR_SEG_HELD_OUT_LAST = 100
#: unlabeled frames per labeled image in the stages with unlabeled frames: 1:1, as the shipped weights were trained
#: (the paper's 1:2, ``TrainConfig``'s default, doubles their step time on 2 CPU cores). Not in DEFAULT_RECIPE,
#: which the shipped weights record as it was before ``unlabeled_ratio`` existed.
RECIPE_UNLABELED_RATIO = 1.0
UNLABELED_FOLDER = "unlabeled"  # below the recipe's output: links to the unlabeled training frames
PREVIOUS_STAGE = "@previous"  # a stage's ``model``: the fp16 export of the stage before it


class _ContinuedSteps:
    """A progress reporter for one stage's ``train``: its steps continue the count of the stages before, out of the
    recipe's total, so a progress bar or a ``--progress jsonl`` reader sees one ``train`` stage rising to 100 %."""

    def __init__(self, reporter: ProgressReporter, done_before: int, grand_total: int) -> None:
        self._reporter, self._done_before, self._grand_total = reporter, done_before, grand_total

    def stage(self, name: str, total: int | None = None, *, unit: str = "frame", initial: int = 0,
              desc: str | None = None):
        return self._reporter.stage(name, self._grand_total, unit=unit, initial=self._done_before + initial,
                                    desc=desc)


def kvasir_seg_held_out(names: list[str]) -> set[str]:
    """The held-out Kvasir-SEG image names (stems) among ``names``: :data:`KVASIR_SEG_SAMPLES` and the last
    :data:`KVASIR_SEG_HELD_OUT_LAST` of the others in sorted order."""
    others = sorted(set(names) - set(KVASIR_SEG_SAMPLES))
    return (set(names) & set(KVASIR_SEG_SAMPLES)) | set(others[-KVASIR_SEG_HELD_OUT_LAST:])


def link_unlabeled_frames(source: str | Path, target: str | Path) -> Path:
    """Fill ``target`` with links to the images of ``source`` (a Kvasir-SEG ``images`` folder, searched at any depth,
    or the data set's folder holding ``images/`` beside ``masks/``; copies where links cannot be made) less
    :func:`kvasir_seg_held_out`; returns ``target``. Run again, it gives the same folder.

    Raises:
        FileNotFoundError: ``source`` is missing or holds no image (the message names it).
    """
    import os
    import shutil

    from SurgicalDepthLib.frame_sources import is_image_file

    source, target = Path(source).expanduser().resolve(), Path(target)
    if (source / "images").is_dir():  # the data set's own layout: never train on its masks
        source = source / "images"
    images = sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p)) if source.is_dir() else []
    if not images:
        raise FileNotFoundError(f"--unlabeled-root {source}: no images found (the recipe's stage 'real-frames' "
                                "needs the Kvasir-SEG images: https://datasets.simula.no/kvasir-seg/)")
    held_out = kvasir_seg_held_out([p.stem for p in images])
    keep = [p for p in images if p.stem not in held_out]
    if not keep:
        raise FileNotFoundError(f"--unlabeled-root {source}: all {len(images)} images are held out for evaluation "
                                f"(the recipe trains on the Kvasir-SEG images less {KVASIR_SEG_HELD_OUT_LAST} + "
                                f"{len(KVASIR_SEG_SAMPLES)})")
    target.mkdir(parents=True, exist_ok=True)
    for path in keep:
        link = target / path.name
        if link.exists():
            continue
        try:
            os.symlink(path, link)
        except OSError:  # e.g. Windows without the symlink privilege
            shutil.copy2(path, link)
    return target


def stage_configs(output: Path, n_clips: int | None, max_steps: int | None, device: str) -> list[dict[str, Any]]:
    """``TrainConfig`` keyword arguments of every recipe stage (``@previous`` not yet resolved; a stage with
    unlabeled frames reads them from ``output/unlabeled``, :func:`link_unlabeled_frames`, and so does a stage whose
    labeled frames take their look)."""
    recipe, configs = DEFAULT_RECIPE, []
    for stage in recipe["stages"]:
        n = min(n_clips, stage["n_clips"]) if n_clips else stage["n_clips"]
        options = dict(stage["train"], root=str(output / "data"), output=str(output / f"run-{stage['name']}"),
                       device=device, split=",".join(f"seq_{i:04d}" for i in range(n)))
        if stage.get("unlabeled"):
            options.update(unlabeled_root=str(output / UNLABELED_FOLDER), unlabeled_ratio=RECIPE_UNLABELED_RATIO)
        if stage.get("style"):  # the same real frames lend the labeled frames their look
            options["style_root"] = str(output / UNLABELED_FOLDER)
        if max_steps is not None:
            options.update(max_steps=max_steps,
                           warmup_steps=min(options["warmup_steps"], max(1, max_steps // 10)))
        configs.append(options)
    return configs


def export_stage(run: Path, keep: str, target: Path, card: dict[str, str], input_size: int | None = None) -> Path:
    """A stage's ``best`` (``run/best.safetensors``) or ``last`` (``run/last.pt``) weights as fp16 safetensors
    with the inference size (``input_size``, default the recipe's ``inference_input_size``), the recipe's
    reference lens and ``card`` as metadata."""
    import dataclasses
    import json

    import torch

    from SurgicalDepthLib.checkpoints import save_checkpoint
    from SurgicalDepthLib.configs import ModelConfig
    from SurgicalDepthLib.loading import load_model
    from SurgicalDepthLib.model import DepthModel

    from .checkpointing import load_training_checkpoint

    if keep == "best":
        model = load_model(run / "best.safetensors", device="cpu")
    else:
        data = load_training_checkpoint(run / "last.pt")
        model = DepthModel(ModelConfig.from_dict(json.loads(data["model_config"])))
        model.load_state_dict(data["model"])
    size = DEFAULT_RECIPE["inference_input_size"] if input_size is None else input_size
    model.config = dataclasses.replace(model.config, input_size=size,
                                       reference_fov_deg=DEFAULT_RECIPE["reference_fov_deg"])
    save_checkpoint(target, model, extra=card, dtype=torch.float16)
    return target


def card_metadata() -> dict[str, str]:
    """The metadata every export of the recipe carries (its stage is added per export)."""
    import json

    return {"name": "surgical-depth-default", "recipe": json.dumps(DEFAULT_RECIPE, default=list),
            "training_data": "procedural synthetic scenes (colon, stomach, small intestine, surgical field) with "
                             "depth; without labels, real colonoscopy frames of Kvasir-SEG (Jha et al. 2020; "
                             "HyperKvasir, Borgli et al. 2020; CC BY 4.0) less the held-out ones",
            "output": "relative depth: disparity (larger = nearer), scale-invariant; no metric scale",
            "license": "Apache-2.0", "trained_with": f"surgical-depth {__version__}"}


def train_default_model(output: str | Path, *, resume: bool = False, max_steps: int | None = None,
                        n_clips: int | None = None, device: str = "auto",
                        progress: ProgressReporter | None = None,
                        should_stop: Callable[[], bool] | None = None, render_workers: int = 1,
                        unlabeled_root: str | Path | None = None) -> Path:
    """Reproduce the shipped default model: render the training set (``output/data``), link the unlabeled real
    frames of ``unlabeled_root`` (the Kvasir-SEG images; :func:`link_unlabeled_frames`, ``output/unlabeled``), train
    each stage of :data:`DEFAULT_RECIPE` (``output/run-<stage>``; each exported as ``output/<stage>.safetensors``),
    and write the last export as ``output/surgical-depth-default.safetensors`` with the model card metadata.

    ``max_steps`` (per stage) and ``n_clips`` shorten the run (tests); the shipped weights use the recipe
    unchanged. ``resume`` continues the stages that were started and skips the finished ones. ``progress`` (None
    = tqdm bars) gets the stages ``"render"`` (one update per clip) and ``"train"`` (the steps of all stages).
    ``should_stop`` is polled before each clip is rendered and at every optimizer step: a stage then saves its
    checkpoint and :class:`.training.TrainingStopped` is raised; ``resume=True`` continues from there.
    ``render_workers``: processes rendering the training set (``render_training_set``'s ``workers``; the same files
    for any number).
    Returns the exported ``output/surgical-depth-default.safetensors``.

    Raises:
        ValueError: ``unlabeled_root`` not given although a stage needs it (before anything is written).
        FileNotFoundError: ``unlabeled_root`` holds no image.
    """
    import shutil

    from .training import TrainConfig, train

    output = Path(output)
    recipe = DEFAULT_RECIPE
    needs_frames = [s["name"] for s in recipe["stages"] if s.get("unlabeled")]
    if needs_frames and unlabeled_root is None:
        raise ValueError(f"--unlabeled-root is required: the recipe's stage {needs_frames[0]!r} trains on the "
                         "Kvasir-SEG images without labels (a folder of them; https://datasets.simula.no/kvasir-seg/)")
    if needs_frames:
        link_unlabeled_frames(unlabeled_root, output / UNLABELED_FOLDER)
    reporter = progress if progress is not None else ProgressReporter("bar")
    configs = stage_configs(output, n_clips, max_steps, device)
    n = max(len(c["split"].split(",")) for c in configs)
    logger.info("rendering %d training clips into %s", n, output / "data")
    with reporter.stage("render", n, unit="clip") as stage:
        render_training_set(output / "data", n, recipe["frames_per_clip"], recipe["data_seed"],
                            progress=lambda done: stage.update(done - stage.step),
                            scope_light_from=recipe["scope_light_from"], polyps_from=recipe["polyps_from"],
                            workers=render_workers, should_stop=should_stop)
    card = card_metadata()
    grand_total, done_before, export = sum(c["max_steps"] for c in configs), 0, None
    for spec, options in zip(recipe["stages"], configs):
        if options["model"] == PREVIOUS_STAGE:
            options["model"] = str(export)
        stage_resume = resume and (Path(options["output"]) / "last.pt").is_file()
        train(TrainConfig(**options), resume=stage_resume, should_stop=should_stop,
              progress=_ContinuedSteps(reporter, done_before, grand_total))
        done_before += options["max_steps"]
        export = export_stage(Path(options["output"]), spec["keep"], output / f"{spec['name']}.safetensors",
                               {**card, "stage": spec["name"]})
    target = output / "surgical-depth-default.safetensors"
    shutil.copyfile(export, target)
    return target
