"""training: learning on analytic scenes, exact kill-and-resume, DDP (gloo, 2 processes), LoRA, semi-supervised."""
from __future__ import annotations

import numpy as np
import torch


def plane_sample(seed: int, h: int = 64, w: int = 64) -> dict:
    """A textured tilted plane with exact z-depth (mm); brightness falls with depth (inverse square)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    gx, gy = rng.uniform(-0.6, 0.6, 2)
    depth = np.clip(30 + gx * (u - w / 2) + gy * (v - h / 2) + rng.uniform(-5, 5), 8, 80)
    texture = 0.8 + 0.2 * np.sin(u * rng.uniform(0.3, 0.9) + rng.uniform(0, 6)) * np.cos(v * rng.uniform(0.3, 0.9))
    shade = np.clip((20 / depth) ** 2 * texture, 0, 1)
    tint = rng.uniform(0.6, 1.0, 3) * np.array([1.0, 0.55, 0.5])
    image = (255 * shade[..., None] * tint).astype(np.uint8)
    return {"image": image, "depth": depth.astype(np.float32), "valid": np.ones((h, w), bool),
            "name": f"plane_{seed}"}


class Planes(torch.utils.data.Dataset):
    """In-test dataset of analytic scenes (rendered on the fly)."""

    name, root, min_depth, max_depth = "planes", "analytic", 1.0, 100.0

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return plane_sample(self.offset + i)


import copy  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import pytest  # noqa: E402
from SurgicalDepthLib.configs import make_config  # noqa: E402
from SurgicalDepthLib.loading import load_model  # noqa: E402
from SurgicalDepthLib.model import DepthModel  # noqa: E402
from SurgicalDepthTrainingLib.checkpointing import load_training_checkpoint  # noqa: E402
from SurgicalDepthTrainingLib.lora import add_lora, merge_lora  # noqa: E402
from SurgicalDepthTrainingLib.semi import FrozenEncoder, semi_supervised_loss  # noqa: E402
from SurgicalDepthTrainingLib.training import TrainConfig, train  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see Testing/conftest.py


def tiny(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    values = dict(output=str(tmp_path / name), input_size=(56, 56), batch_size=2, max_steps=6, lr=3e-5,
                  augment=True, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def read_log(folder: Path) -> list[dict]:
    with (folder / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_config_rounding_and_json():
    config = TrainConfig()
    assert config.input_size == (256, 386) and config.effective_input_size == (252, 392)
    assert config.lr == 3e-5 and config.decoder_lr_mult == 10 and config.batch_size == 16
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="l2")
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_json('{"lr_typo": 1}')


@pytest.mark.slow
def test_training_lowers_validation_absrel(tmp_path):
    config = tiny(tmp_path, max_steps=120, batch_size=4)
    best = train(config, train_data=Planes(48), val_data=Planes(8, offset=1000))
    rows = read_log(tmp_path / "run")
    initial, final = float(rows[0]["val_abs_rel"]), min(float(r["val_abs_rel"]) for r in rows[1:])
    assert rows[0]["step"] == "0" and rows[-1]["step"] == "120"
    assert final < 0.7 * initial, (initial, final)
    model = load_model(best, device="cpu")  # the exported best model loads as a plain project checkpoint
    assert model.output_kind == "disparity"


def test_a_random_start_never_begins_with_a_dead_output():
    """Catches training from scratch that never starts: with PyTorch's default bias on the last convolution, the
    final ReLU of ``random:surgical-depth-tiny`` outputs 0 at every pixel for about 4 in 10 seeds (seed 6 here),
    so no gradient reaches any weight and ``surgical-depth train --model random:...`` (which has no option for
    the bias) went on at a constant loss. With the default head bias every seed gives a positive output."""
    from SurgicalDepthTrainingLib.training import build_model

    rgb = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    for seed in range(8):
        model = build_model(TrainConfig(model="random:surgical-depth-tiny", root="unused", seed=seed),
                            torch.device("cpu"))
        with torch.no_grad():
            out = model(rgb)
        assert float(out.min()) > 0, seed


def test_fine_tuned_model_keeps_neither_the_start_lens_nor_the_start_size(tmp_path):
    """Catches: a model fine-tuned from the default model keeping its measured reference lens, which describes the
    old training views, not the new data's: calibrated frames would then be 'corrected' by a wrong amount; and
    ``best.safetensors`` keeping the start model's inference size (518 for the official models) instead of the
    crops' shorter side it was trained at, so ``predict``/``evaluate`` read frames at a scale it never saw; and
    ``last.pt``, which ``load_model`` also loads, still keeping it (its maps then differed from best's)."""
    from SurgicalDepthLib.checkpoints import save_checkpoint

    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "start.safetensors", DepthModel(make_config("vitt", reference_fov_deg=100.0)))
    assert load_model(start, device="cpu").config.reference_fov_deg == 100.0
    assert load_model(start, device="cpu").config.input_size == 518
    best = train(tiny(tmp_path, model=str(start), max_steps=2, input_size=(84, 55)), train_data=Planes(4),
                 val_data=Planes(2, offset=50))
    assert load_model(best, device="cpu").config.reference_fov_deg is None
    assert load_model(best, device="cpu").config.input_size == 56  # min(84, 55 -> 56)
    last = load_model(best.parent / "last.pt", device="cpu").config
    assert last.input_size == 56 and last.reference_fov_deg is None


def test_start_weights_without_their_official_name_take_the_version_hint(tmp_path):
    """Catches: ``train --model weights.pth`` (an official-layout file renamed) with no way to say V1 or V2 (the
    loader's error asked for a keyword the CLI could not pass); the hint not reaching the start model."""
    from SurgicalDepthLib.checkpoints import CheckpointError, save_official

    torch.manual_seed(0)
    weights = save_official(tmp_path / "weights.pth", DepthModel(make_config("vitt", "v1")))
    with pytest.raises(CheckpointError, match="cannot tell Depth Anything V1 from V2"):
        train(tiny(tmp_path, "none", model=str(weights), max_steps=1), train_data=Planes(4), val_data=Planes(2))
    best = train(tiny(tmp_path, model=str(weights), model_version="v1", max_steps=1), train_data=Planes(4),
                 val_data=Planes(2, offset=50))
    assert load_model(best, device="cpu").config.version == "v1"


@pytest.mark.parametrize("extra", [{}, {"lora_rank": 2, "grad_accum": 2, "loss": "ssi"}])
def test_kill_and_resume_gives_identical_weights(tmp_path, extra):
    data, val = Planes(8), Planes(2, offset=50)
    train(tiny(tmp_path, "straight", **extra), train_data=data, val_data=val)
    resumed = tiny(tmp_path, "resumed", **extra)
    train(resumed, train_data=data, val_data=val, stop_after_steps=3)
    assert load_training_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 3
    with pytest.raises(FileExistsError):
        train(resumed, train_data=data, val_data=val)
    train(resumed, train_data=data, val_data=val, resume=True)
    a, b = load_training_checkpoint(tmp_path / "straight" / "last.pt"), load_training_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in ("model", "train_state") if extra else ("model",):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert read_log(tmp_path / "straight") == read_log(tmp_path / "resumed")
    with pytest.raises(ValueError, match="differs"):
        train(tiny(tmp_path, "resumed", **{**extra, "lr": 1e-3}), train_data=data, val_data=val, resume=True)


def test_train_progress_per_step_and_resumed_from_the_saved_step(tmp_path):
    """Catches progress not reported per optimiser step (with loss and lr), validation scores missing from the step
    that computed them, and a resumed run whose progress restarts at 0 instead of the saved step."""
    import io
    import json

    from SurgicalDepthLib.progress import ProgressReporter

    def run(**kw) -> list[dict]:
        stream = io.StringIO()
        train(tiny(tmp_path, max_steps=3, batch_size=2), train_data=Planes(4), val_data=Planes(1, offset=9),
              progress=ProgressReporter("jsonl", stream), **kw)
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    first, resumed = run(stop_after_steps=1), run(resume=True)
    assert {(e["stage"], e["total"]) for e in first + resumed} == {("train", 3)}
    assert [(e["step"], "loss" in e, "val_abs_rel" in e) for e in first] == [(0, False, False), (0, False, True),
                                                                           (1, True, False)]
    assert [e["step"] for e in resumed] == [1, 2, 2, 3, 3]  # 2 steps per epoch: validation at 2 and at the end
    lrs = [e["lr"] for e in first + resumed if "loss" in e]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > 0 and all(e["loss"] > 0 for e in resumed if "loss" in e)
    assert [e["step"] for e in resumed if "val_abs_rel" in e] == [2, 3]


def test_lora_merge_equals_unmerged_forward(tmp_path):
    torch.manual_seed(0)
    model = DepthModel(make_config("vitt")).eval()
    with torch.no_grad():  # random init scales attention by LayerScale 1e-5: make it matter, as trained weights do
        for block in model.pretrained.blocks:
            block.ls1.gamma.fill_(1.0)
    x = torch.randn(2, 3, 56, 70)
    reference = model(x)
    assert add_lora(model, rank=4, alpha=8) == 12
    assert torch.allclose(model(x), reference)  # B = 0 at init: the pretrained function
    for name, p in model.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        adapted = model(x)
        assert not torch.allclose(adapted, reference, atol=1e-4)
        assert merge_lora(model) == 12
        assert set(model.state_dict()) == set(DepthModel(make_config("vitt")).state_dict())
        assert torch.allclose(model(x), adapted, atol=1e-5, rtol=1e-4)



def test_export_weights_merges_lora_into_a_loadable_copy(tmp_path):
    """Catches: the best model written with its LoRA adapter keys (which ``load_model`` refuses) or merged in place,
    which would turn the run's still-training LoRA model into a plain one."""
    from SurgicalDepthTrainingLib.checkpointing import export_weights

    torch.manual_seed(0)
    model = DepthModel(make_config("vitt")).eval()
    add_lora(model, rank=2, alpha=4)
    for name, p in model.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        adapted = model(x)
    path = export_weights(tmp_path / "best.safetensors", model, {"step": "7"})
    assert any("lora_b" in name for name, _ in model.named_parameters())  # the training model keeps its adapters
    loaded = load_model(path, device="cpu", precision="fp32")
    with torch.no_grad():
        assert torch.allclose(loaded(x), adapted, atol=1e-5, rtol=1e-4)

def test_semi_supervised_loss_finite_and_decreasing():
    torch.manual_seed(0)
    teacher = DepthModel(make_config("vitt")).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    with torch.no_grad():  # a student that disagrees with its teacher
        for p in student.depth_head.parameters():
            p.add_(0.02 * torch.randn_like(p))
    images = torch.stack([torch.from_numpy(plane_sample(i, 56, 56)["image"]).permute(2, 0, 1) for i in range(4)])
    clean = (images.float() / 255 - 0.45) / 0.225
    batch = {"image": clean, "image_strong": clean * 1.3 + 0.1}
    frozen = FrozenEncoder(copy.deepcopy(student.pretrained), student.config.intermediate_layers[-1])
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    values = []
    for _ in range(6):
        loss, parts = semi_supervised_loss(student, teacher, frozen, batch, torch.Generator().manual_seed(1),
                                           cutmix_prob=1.0)
        assert torch.isfinite(loss) and parts["feature"] >= 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert values[-1] < values[0]


def test_train_with_unlabeled_data_runs(tmp_path):
    config = tiny(tmp_path, max_steps=2, unlabeled_weight=0.5)
    best = train(config, train_data=Planes(4), val_data=Planes(2, offset=9), unlabeled_data=Planes(3, offset=20))
    assert best.is_file() and all(r["val_abs_rel"] for r in read_log(tmp_path / "run"))


def write_folder(root: Path, n: int) -> Path:
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        s = plane_sample(i, 60, 60)
        cv2.imwrite(str(root / "rgb" / f"{i:03d}.png"), s["image"][..., ::-1])
        np.save(root / "depth" / f"{i:03d}.npy", s["depth"])
    return root


def test_cli_train_bad_root_is_one_line_error(tmp_path, capsys):
    from SurgicalDepthLib.cli import main

    rc = main(["train", "--dataset", "folder", "--root", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope" in err and not (tmp_path / "o").exists()


def test_cli_train_passes_dataset_options(tmp_path, capsys):
    """A folder of 16-bit PNG depth (the common export of a depth sensor, in 0.1 mm units here) trains with
    ``--dataset-option depth_scale=0.1``, which the run records and checks on resume. Catches: no way to give a
    loader option to ``train`` (every such folder failed with "needs depth_scale="), a run failing on its data
    only once training started, leaving a run folder that the corrected command is refused (it held an "earlier
    training run"), and an unknown option failing after the run folder was made instead of as one line before."""
    from SurgicalDepthLib.cli import main

    root = write_folder(tmp_path / "ds", 4)
    for npy in sorted((root / "depth").glob("*.npy")):
        cv2.imwrite(str(npy.with_suffix(".png")), np.round(np.load(npy) * 10).astype(np.uint16))
        npy.unlink()
    command = ["train", "--dataset", "folder", "--root", str(root), "--output", str(tmp_path / "run"),
               "--max-steps", "1", "--batch-size", "2", "--input-size", "56", "--device", "cpu", "--progress", "none"]
    assert main(command) == 2 and "depth_scale" in capsys.readouterr().err
    assert main(command + ["--dataset-option", "depth_scale=0.1"]) == 0
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["dataset_options"] == {"depth_scale": 0.1}
    capsys.readouterr()
    assert main(command + ["--dataset-option", "depth_scale=0.2", "--resume"]) == 2
    assert "['dataset_options']" in capsys.readouterr().err
    bad = [*command[:6], str(tmp_path / "other"), *command[7:], "--dataset-option", "depth_sacle=0.1"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depth_sacle" in err and not (tmp_path / "other").exists()


def test_cli_resume_knows_its_data_by_path_not_by_the_text_typed(tmp_path, capsys, monkeypatch):
    """Catches a run started with a relative ``--root ds`` and resumed from another working directory, where
    ``ds`` is other data, silently continued on that data (the saved root was the text typed), while the same data
    given by its absolute path was refused; and, for a run folder without last.pt (the run ended before its first
    checkpoint), advice to pass --resume, which then fails."""
    from SurgicalDepthLib.cli import main

    for where in ("a", "b"):
        write_folder(tmp_path / where / "ds", 4 if where == "a" else 3)
    monkeypatch.chdir(tmp_path / "a")
    command = ["train", "--dataset", "folder", "--root", "ds", "--output", str(tmp_path / "run"), "--max-steps", "1",
               "--batch-size", "2", "--input-size", "56", "--device", "cpu"]
    assert main(command) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "b")  # another "ds"
    assert main(command + ["--resume"]) == 2
    assert "differs from the checkpoint's in ['root']" in capsys.readouterr().err
    absolute = command[:4] + [str(tmp_path / "a" / "ds")] + command[5:]
    assert main(absolute + ["--resume"]) == 0  # the same data: the finished run has nothing left to do
    (tmp_path / "run" / "last.pt").unlink()
    capsys.readouterr()
    assert main(absolute) == 2
    err = capsys.readouterr().err
    assert "no last.pt to resume from" in err and "pass --resume" not in err


def test_other_ranks_print_nothing_on_the_jsonl_channel(tmp_path, capsys, monkeypatch):
    """Catches torchrun's other ranks printing their messages (``best model: ...``) on stdout, which they share with
    rank 0's --progress jsonl stream: a line that is not JSON before the done event."""
    from SurgicalDepthLib.cli import main

    write_folder(tmp_path / "ds", 4)
    monkeypatch.setenv("RANK", "1")  # what torchrun sets; without WORLD_SIZE the run itself is a single process
    assert main(["train", "--dataset", "folder", "--root", str(tmp_path / "ds"), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "--batch-size", "2", "--input-size", "56", "--device", "cpu",
                 "--progress", "jsonl"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "best model" in err


def test_train_cli_defaults_are_train_config_defaults():
    """Catches the train command keeping its own copies of TrainConfig's defaults: hyper-parameter flags default to
    None (TrainConfig decides), their help quotes TrainConfig's values, and --loss offers exactly the losses."""
    import re

    from SurgicalDepthLib.cli import build_parser
    from SurgicalDepthTrainingLib.commands.train import CONFIG_FLAGS
    from SurgicalDepthTrainingLib.losses import LOSSES

    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    config = TrainConfig()
    for name in (*CONFIG_FLAGS, "input_size"):
        assert actions[name].default is None, name
        quoted = re.search(r"default:? ([^)]+)", actions[name].help).group(1).split(" ")
        expected = config.input_size[0] if name == "input_size" else getattr(config, name)
        if isinstance(expected, tuple):  # nargs flags quote every value
            assert tuple(float(v) for v in quoted[:len(expected)]) == expected, (name, quoted)
            continue
        assert (quoted[0] == expected) if isinstance(expected, str) else (float(quoted[0]) == expected), (name, quoted)
    assert "256 386 -> 252 x 392" in actions["input_size"].help and config.effective_input_size == (252, 392)
    assert tuple(actions["loss"].choices) == tuple(LOSSES)


@pytest.mark.slow
def test_ddp_two_processes_matches_single_process(tmp_path):
    """torchrun, 2 CPU processes (gloo), batch 1 each == one process with batch 1 and 2 accumulated micro-batches
    (the same samples per step, gradients averaged the same way). (A batch of 2 differs by float rounding only,
    which Adam's ~lr·sign(g) first steps amplify for near-zero gradients, so it is not the reference.)"""
    root = write_folder(tmp_path / "data", 10)
    common = ["train", "--dataset", "folder", "--root", str(root), "--input-size", "56", "--max-steps", "3",
              "--device", "cpu", "--seed", "1", "--no-augment", "--batch-size", "1", "--progress", "jsonl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "SurgicalDepthLib.cli", *common, "--output", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in done.stdout.splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3]  # only rank 0 reports progress
    config = TrainConfig(dataset="folder", root=str(root), input_size=(56, 56), max_steps=3, device="cpu", seed=1,
                         augment=False, batch_size=1, grad_accum=2, output=str(tmp_path / "single"))
    train(config)
    a, b = load_training_checkpoint(tmp_path / "ddp" / "last.pt"), load_training_checkpoint(tmp_path / "single" / "last.pt")
    assert a["step"] == b["step"] == 3
    assert max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"]) < 1e-6
    torch.manual_seed(1)
    start = DepthModel(make_config("vitt")).state_dict()
    assert max(float((b["model"][k] - start[k]).abs().max()) for k in start) > 1e-4  # it did train
    assert (tmp_path / "ddp" / "best.safetensors").is_file() and len(read_log(tmp_path / "ddp")) == 2


def test_transform_crop_keeps_depth_exact_and_rounding():
    from SurgicalDepthTrainingLib.training import DepthTransform, round_to_multiple

    assert [round_to_multiple(v) for v in (256, 386, 518, 20, 21, 1)] == [252, 392, 518, 14, 28, 14]
    sample = plane_sample(0, 64, 64)
    sample["valid"][10:20, 10:20] = False
    out = DepthTransform((56, 56), (0.5,) * 3, (0.25,) * 3, train=True, augment=True)(sample,
                                                                                      np.random.default_rng(0))
    assert out["image"].shape == (3, 56, 56) and out["depth"].shape == out["valid"].shape == (56, 56)
    d = out["depth"][out["valid"]].numpy()
    assert (d > 0).all() and np.isin(d, sample["depth"]).all()  # nearest neighbour: no blended depths
    assert (~out["valid"]).sum() > 0 and (out["depth"][~out["valid"]] == 0).all()


def test_rng_state_round_trip():
    import random

    from SurgicalDepthTrainingLib.checkpointing import rng_state, set_rng_state

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# -- nothing lost: checkpoints on schedule and on request, divergence, run folders (#14) ----------------------------
class FailsAt(Planes):
    """Planes whose ``read``-th sample read raises (a crash mid-run)."""

    def __init__(self, n: int, read: int):
        super().__init__(n)
        self.read, self.reads = read, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.read:
            raise RuntimeError("disk unplugged")
        return super().__getitem__(i)


def test_resume_with_more_steps_trains_from_its_first_step(tmp_path):
    """A finished 2-step run resumed with ``max_steps=3``. Catches: the resumed step taken at the learning rate the
    old schedule ended with (0), so it changed no weight; it runs at the rate of step 2 of 3 of the new schedule."""
    train(tiny(tmp_path, max_steps=2, augment=False), train_data=Planes(4), val_data=Planes(1, offset=9))
    before = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert before["optimizer"]["param_groups"][0]["lr"] == 0.0
    train(tiny(tmp_path, max_steps=3, augment=False), train_data=Planes(4), val_data=Planes(1, offset=9),
          resume=True)
    after = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert after["step"] == 3
    assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


def test_checkpoint_at_every_epoch_end_before_a_crash(tmp_path):
    """Catches: no last.pt until the run ends, so a crash in the second epoch loses the first one."""
    data = FailsAt(4, read=5)  # 2 steps of 2 samples per epoch: the 5th read is the first of epoch 2
    with pytest.raises(RuntimeError, match="unplugged"):
        train(tiny(tmp_path, max_steps=8, augment=False), train_data=data, val_data=Planes(1, offset=9))
    ckpt = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (1, 2, 0)


def test_checkpoint_after_checkpoint_minutes_of_wall_time(tmp_path, monkeypatch):
    """Catches: a long epoch with no checkpoint for hours: checkpoint_minutes (default 10) forces one."""
    import SurgicalDepthTrainingLib.training as training

    assert TrainConfig().checkpoint_minutes == 10.0
    clock = iter(range(0, 10**6, 400))  # every reading of the clock is 400 s later: > 10 minutes every 2 readings
    monkeypatch.setattr(training.time, "monotonic", lambda: float(next(clock)))
    data = FailsAt(8, read=7)  # 4 steps per epoch: the crash is in step 4, before the first epoch end
    with pytest.raises(RuntimeError, match="unplugged"):
        train(tiny(tmp_path, max_steps=8, batch_size=2), train_data=data, val_data=Planes(1, offset=9))
    assert load_training_checkpoint(tmp_path / "run" / "last.pt")["step"] in (2, 3)
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        TrainConfig(checkpoint_minutes=-1)


@pytest.mark.parametrize("stop_at", [1, 2, 3])  # 2 steps an epoch: mid-epoch, at an epoch end, mid-epoch
def test_stop_request_saves_and_resume_is_exact(tmp_path, stop_at):
    """Catches: SIGINT/SIGTERM (should_stop) losing the work since the last checkpoint, or a resumed run that
    differs from an uninterrupted one (e.g. skipping the validation of an epoch end it stopped at)."""
    from SurgicalDepthTrainingLib.training import TrainingStopped

    data, val = Planes(4), Planes(1, offset=50)
    train(tiny(tmp_path, "straight", max_steps=4), train_data=data, val_data=val)
    steps = []

    def should_stop() -> bool:
        steps.append(None)
        return len(steps) > stop_at  # polled once before the first step, then after every step

    with pytest.raises(TrainingStopped) as info:
        train(tiny(tmp_path, "stopped", max_steps=4), train_data=data, val_data=val, should_stop=should_stop)
    assert info.value.step == stop_at and load_training_checkpoint(tmp_path / "stopped" / "last.pt")["step"] == stop_at
    train(tiny(tmp_path, "stopped", max_steps=4), train_data=data, val_data=val, resume=True)
    a, b = load_training_checkpoint(tmp_path / "straight" / "last.pt"), load_training_checkpoint(tmp_path / "stopped" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert read_log(tmp_path / "straight") == read_log(tmp_path / "stopped")


def test_a_stop_with_the_last_step_still_validates_and_finishes(tmp_path):
    """Catches a stop request that came with the last step: the final validation was skipped, and the resumed run
    said "already finished" without doing it, so best.safetensors was an earlier step's and the log lacked its last
    row; the run also ended as "stopped" (exit 130) although nothing was left to do."""
    data, val = Planes(4), Planes(1, offset=50)
    train(tiny(tmp_path, "straight", max_steps=4), train_data=data, val_data=val)
    steps = []
    train(tiny(tmp_path, "stopped", max_steps=4), train_data=data, val_data=val,
          should_stop=lambda: steps.append(None) or len(steps) > 4)  # asked after the 4th and last step
    assert read_log(tmp_path / "straight") == read_log(tmp_path / "stopped")
    best = [json.loads((tmp_path / run / "best.json").read_text()) for run in ("straight", "stopped")]
    assert (best[0]["step"], best[0]["epoch"], best[0]["val"]) == (best[1]["step"], best[1]["epoch"], best[1]["val"])


def test_validation_split_is_held_out_of_training(tmp_path):
    """Catches --val-split without --split training on every image found, the validation images included (the best
    checkpoint was then chosen on training data), and an explicit --split that shares images with it."""
    from SurgicalDepthTrainingLib._train_data import training_data
    from SurgicalDepthTrainingLib.synthetic import render_clip, write_synthetic

    for name in ("clip_a", "clip_b"):
        write_synthetic(render_clip("colon", n_frames=2, seed=len(name), height=32, width=40), tmp_path / name,
                        {"organ": "colon", "seed": 1, "generator": {}})
    config = TrainConfig(dataset="synthetic", root=str(tmp_path), val_split="clip_b", output=str(tmp_path / "o"))
    train_set, train_idx, val_set, val_idx = training_data(config, None, None)
    trained = {str(train_set.pairs[i].rgb) for i in train_idx}
    held = {str(val_set.pairs[i].rgb) for i in val_idx}
    assert len(trained) == 2 and len(held) == 2 and not trained & held
    with pytest.raises(ValueError, match="share 2 images"):
        training_data(TrainConfig(dataset="synthetic", root=str(tmp_path), split="clip_a,clip_b",
                                  val_split="clip_b", output=str(tmp_path / "o")), None, None)


def test_diverging_run_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """Catches: --lr 1e6 ending in a FloatingPointError traceback (or a validation error) instead of one message
    naming the step, and a NaN checkpoint replacing the last good one."""
    from SurgicalDepthTrainingLib.training import TrainingDiverged

    config = tiny(tmp_path, max_steps=6, batch_size=2, lr=1e6, checkpoint_minutes=0, augment=False)
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: .*last good checkpoint") as info:
        train(config, train_data=Planes(4), val_data=Planes(1, offset=9))
    assert isinstance(info.value, ValueError) and isinstance(info.value, FloatingPointError)
    assert len(str(info.value).splitlines()) == 1
    ckpt = load_training_checkpoint(tmp_path / "run" / "last.pt")  # loads: every tensor finite
    assert f"step {ckpt['step']})" in str(info.value)


def test_stale_temporaries_removed_and_runs_never_mixed(tmp_path):
    """Catches: .last.*.pt files of killed saves kept forever; a second run into a used folder mixing with it;
    --overwrite not replacing it; --resume dropping the run's manifest."""
    from SurgicalDepthLib.run_folder import MANIFEST_NAME, OutputConflict, read_manifest

    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.k2j4h5g6.pt", out / ".log.a_b9c8d7.csv", out / ".best.qwertyui.safetensors"]
    for path in stale + [out / "notes.txt", out / ".last.pt.bak"]:
        path.write_text("x")
    data, val = Planes(4), Planes(1, offset=9)
    train(tiny(tmp_path, max_steps=2), train_data=data, val_data=val, stop_after_steps=1)
    assert not any(p.exists() for p in stale) and (out / "notes.txt").exists() and (out / ".last.pt.bak").exists()
    with pytest.raises(OutputConflict, match="--resume to continue it, --overwrite"):
        train(tiny(tmp_path, max_steps=2), train_data=data, val_data=val)
    stale[0].write_text("killed save")
    train(tiny(tmp_path, max_steps=2), train_data=data, val_data=val, resume=True)
    header, files = read_manifest(out)
    assert header["command"] == "train" and {"last.pt", "log.csv", "best.json"} <= set(files)
    assert not stale[0].exists() and load_training_checkpoint(out / "last.pt")["step"] == 2
    train(tiny(tmp_path, max_steps=1), train_data=data, val_data=val, overwrite=True)
    assert load_training_checkpoint(out / "last.pt")["step"] == 1 and (out / "notes.txt").exists()
    with pytest.raises(ValueError, match="exclude each other"):
        train(tiny(tmp_path), train_data=data, val_data=val, overwrite=True, resume=True)
    (out / MANIFEST_NAME).unlink()  # a run from before manifests: --resume adopts it, a new run is refused
    with pytest.raises(OutputConflict, match="pass --resume"):
        train(tiny(tmp_path, max_steps=1), train_data=data, val_data=val)
    train(tiny(tmp_path, max_steps=2), train_data=data, val_data=val, resume=True)
    assert set(read_manifest(out)[1]) >= {"last.pt", "train_config.json"}


@pytest.mark.parametrize("damage", ["truncated", "pickle", "not_a_checkpoint", "nan", "bad_field"])
def test_resume_refuses_damaged_last_pt(tmp_path, damage):
    """Catches: --resume on a truncated or malicious last.pt ending in a traceback (or running the pickle)."""
    from SurgicalDepthLib.checkpoints import CheckpointError

    data, val = Planes(4), Planes(1, offset=9)
    train(tiny(tmp_path, max_steps=2), train_data=data, val_data=val, stop_after_steps=1)
    last = tmp_path / "run" / "last.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:5000])
    elif damage == "pickle":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        torch.save({"format": "surgical-depth-train", "model": Evil()}, last)
    elif damage == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(2)}, last)
    else:
        ckpt = load_training_checkpoint(last)
        if damage == "nan":
            next(iter(ckpt["model"].values())).fill_(float("nan"))
        else:
            ckpt["step"] = "three"
        torch.save(ckpt, last)
    with pytest.raises(CheckpointError) as info:
        train(tiny(tmp_path, max_steps=2), train_data=data, val_data=val, resume=True)
    assert str(last) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert "weights_only=False" not in str(info.value) and not marker.exists()


def test_cli_config_errors_name_the_flag(tmp_path, capsys):
    """Catches: --seed -1 failing with numpy's "expected non-negative integer" that names no option."""
    from SurgicalDepthLib.cli import main

    root = write_folder(tmp_path / "data", 3)
    # --min-depth above --max-depth: once found only at the first validation, after the run folder was written
    for flag, value in (("--seed", "-1"), ("--lr", "inf"), ("--checkpoint-minutes", "-2"), ("--val-fraction", "1"),
                        ("--min-depth", "10")):
        rc = main(["train", "--dataset", "folder", "--root", str(root), "--output", str(tmp_path / "o"), flag, value,
                   "--max-depth", "5", "--progress", "none"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"surgical-depth train: error: {flag} must") and value in err, err
    assert not (tmp_path / "o").exists()


def test_process_group_backend_without_nccl(monkeypatch):
    """Catches multi-GPU training that asked for NCCL whenever CUDA was there: Windows builds of torch have no NCCL,
    so ``init_process_group`` failed there as soon as a user chose two GPUs. Gloo then; NCCL where it is built."""
    import torch.distributed as dist

    from SurgicalDepthTrainingLib.distributed import process_group_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert process_group_backend() == "gloo"
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert process_group_backend() == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_group_backend() == "gloo"


def test_validation_leaves_out_an_image_without_ground_truth_in_range():
    """Catches one validation image whose ground truth lies outside the validation range (or is all invalid)
    stopping the training run with depth_metrics' 'no valid pixel': it is left out of the mean (the metrics equal
    those of the other images alone), and a validation set without any measurable image is a one-line error."""
    from SurgicalDepthTrainingLib._train_loop import validate

    torch.manual_seed(0)
    model = DepthModel(make_config("vitt")).eval()
    images = torch.rand(3, 3, 28, 28)
    depth = torch.full((3, 28, 28), 20.0)
    depth[1] = 500.0  # past max_depth 100
    valid = torch.ones(3, 28, 28, dtype=torch.bool)
    batch = {"image": images, "depth": depth, "valid": valid}
    both = validate(model, [batch], output_kind="disparity", device=torch.device("cpu"), max_depth=100.0)
    alone = validate(model, [{k: v[[0, 2]] for k, v in batch.items()}], output_kind="disparity",
                     device=torch.device("cpu"), max_depth=100.0)
    assert both == pytest.approx(alone, rel=1e-6)
    with pytest.raises(ValueError, match="no validation image has a valid ground-truth pixel"):
        validate(model, [{k: v[[1]] for k, v in batch.items()}], output_kind="disparity",
                 device=torch.device("cpu"), max_depth=100.0)


def test_each_training_process_gets_its_own_gpu_or_a_clear_error():
    """Catches a DDP run started with more processes than GPUs (the Slicer module's GPUs setting at 4 on a 2-GPU
    machine) failing with CUDA's "invalid device ordinal" deep in the first kernel, or two processes sharing a GPU:
    process k takes GPU k, and a process without one is refused naming the count and the setting to lower."""
    from SurgicalDepthTrainingLib._train_loop import rank_gpu

    assert [rank_gpu(k, 4, 4) for k in range(4)] == [0, 1, 2, 3]
    assert rank_gpu(1, 4, 2) == 1  # fewer processes than GPUs
    for local_rank, n_gpus, local_world in ((0, 2, 4), (2, 2, 4), (0, 1, 2), (0, 0, 1)):  # rank 0 told too
        with pytest.raises(ValueError, match=rf"^{local_world} training processes .* {n_gpus} CUDA device\(s\)"):
            rank_gpu(local_rank, n_gpus, local_world)
