"""lora: LoRA (Hu et al. 2021) on the encoder's attention qkv, exactly the base model at the start, only adapters and
the head trained, ranks checked, and the real ``train --lora`` CLI end to end (checkpoint, loading, exact resume).

Merge equivalence and the merged export are in test_training.py (test_lora_merge_equals_unmerged_forward,
test_export_weights_merges_lora_into_a_loadable_copy); the in-process kill-and-resume with LoRA is there too.
"""
from __future__ import annotations

import copy
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from SurgicalDepthLib.checkpoints import save_checkpoint
from SurgicalDepthLib.loading import load_model
from SurgicalDepthTrainingLib.checkpointing import load_training_checkpoint
from SurgicalDepthTrainingLib.lora import LoRALinear, add_lora, has_lora
from SurgicalDepthTrainingLib.training import TrainConfig, build_model, build_optimizer
from tiny_model import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see Testing/conftest.py

QKV = (192, 576)  # vitt: attention qkv is Linear(192 -> 3 * 192)


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "SurgicalDepthLib.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_adapted_model_is_the_base_model_bit_for_bit_at_the_start():
    """Catches a LoRA start that is not exactly the pretrained function (B not zero-initialised, a scaling applied
    to the base path, or A/B swapped): Hu et al. initialise B = 0 so that W x + (α/r) B A x = W x exactly."""
    base = tiny_model(seed=1)  # perturbed weights: LayerScale no longer hides the attention path
    adapted = copy.deepcopy(base)
    assert add_lora(adapted, rank=4, alpha=8) == 12 and has_lora(adapted)
    x = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(adapted(x), base(x))
    layer = adapted.pretrained.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear) and layer.scaling == 2.0 and not bool(layer.lora_b.any())
    assert tuple(layer.lora_a.shape) == (4, QKV[0]) and tuple(layer.lora_b.shape) == (QKV[1], 4)


def test_only_the_adapters_and_the_head_are_trained(tmp_path):
    """Catches frozen weights that still train under LoRA (the encoder's norms, patch embedding or qkv base
    weights: TrainConfig documents "freezes the rest of the encoder"), adapters left out of the optimizer, or the
    head frozen with them."""
    start = save_checkpoint(tmp_path / "start.safetensors", tiny_model(seed=2))
    config = TrainConfig(model=str(start), lora_rank=2, output=str(tmp_path / "o"))
    model = build_model(config, torch.device("cpu"))
    names = dict(model.named_parameters())
    lora = {n for n in names if ".attn.qkv.lora_" in n}
    head = {n for n in names if n.startswith("depth_head.") and "refinenet4.resConfUnit1." not in n}  # unused unit
    assert len(lora) == 24 and {n for n, p in names.items() if p.requires_grad} == lora | head
    out = model(torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0)))
    out.mean().backward()
    assert {n for n, p in names.items() if p.grad is not None} == lora | head
    assert all(bool(names[n].grad.any()) for n in lora if n.endswith("lora_b"))  # B gets a gradient at B = 0
    groups = {g["name"]: {id(p) for p in g["params"]} for g in build_optimizer(model, config).param_groups}
    assert groups["encoder"] == {id(names[n]) for n in lora} and groups["decoder"] == {id(names[n]) for n in head}


@pytest.mark.parametrize("rank", [0, -1, 9, 2.0, True])
def test_rank_must_be_an_integer_from_one_to_the_layer_width(rank):
    """Catches a rank larger than the layer accepted (``--lora 100000`` trained, with 2 × 100000 × (192 + 576)
    parameters per block: memory without capacity, since B A has rank <= min(in, out)) and a non-integer rank
    reaching torch as a shape."""
    with pytest.raises(ValueError, match=r"^LoRA rank must be an integer from 1 to 8 .*got " + str(rank)):
        LoRALinear(torch.nn.Linear(8, 24), rank)
    assert LoRALinear(torch.nn.Linear(8, 24), 8).rank == 8


def test_too_large_rank_leaves_the_model_unadapted_and_alpha_is_checked():
    """Catches add_lora failing half-way (some blocks adapted, the model neither plain nor LoRA) and an α of 0, a
    negative or NaN one accepted (α = 0 silently turns the adapters off; NaN poisons every output)."""
    model = tiny_model()
    with pytest.raises(ValueError, match="from 1 to 192"):
        add_lora(model, rank=193)
    assert not has_lora(model)
    for alpha in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha"):
            LoRALinear(torch.nn.Linear(8, 24), 2, alpha)
        with pytest.raises(ValueError, match="^lora_alpha must be"):
            TrainConfig(lora_rank=2, lora_alpha=alpha)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """4 synthetic frames written by the real ``synth`` command, and a start model whose attention matters."""
    root = tmp_path_factory.mktemp("lora")
    done = _cli("synth", "--frames", 4, "--output", root / "data", "--size", "96x128", "--progress", "none")
    assert done.returncode == 0, done.stderr
    save_checkpoint(root / "start.safetensors", tiny_model(seed=3))
    return root


def _train_args(root: Path, output: Path, *extra) -> list:
    return ["train", "--dataset", "synthetic", "--root", root / "data", "--output", output, "--model",
            root / "start.safetensors", "--max-steps", 3, "--batch-size", 1, "--input-size", 56, "--device", "cpu",
            "--val-fraction", 0.25, "--lr", "1e-4", "--save-every", 1, "--progress", "none", *extra]


@pytest.mark.parametrize("rank", ["-1", "193"])
def test_cli_bad_rank_is_one_line_exit_2_and_writes_nothing(synth_data, tmp_path, rank):
    """Catches ``train --lora 193`` (above the 192-wide qkv of vitt) training instead of failing, and a bad rank
    failing with a traceback or after the run folder was made. ``--lora 0`` is the documented "off" value."""
    out = tmp_path / "run"
    done = _cli(*_train_args(synth_data, out, "--lora", rank))
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and f"got {rank}" in err, err
    assert ("--lora" in err or "LoRA rank" in err) and "Traceback" not in err and not out.exists()


@pytest.mark.slow
def test_a_kill_just_after_last_pt_is_written_loses_no_log_row(synth_data, tmp_path, monkeypatch):
    """A LoRA run killed right after its first ``last.pt`` (step 1) was written, then resumed. Catches
    ``TrainRun.checkpoint`` writing last.pt before log.csv: a kill between the two left a last.pt at step 1 and no
    log.csv, so the resumed run's log lacked the start weights' validation row (step 0) for good. The resumed run
    must equal the uninterrupted one: adapters, optimizer state and every log row."""
    import SurgicalDepthTrainingLib._train_run as train_run
    from SurgicalDepthTrainingLib.training import train

    def config(name: str) -> TrainConfig:
        return TrainConfig(dataset="synthetic", root=str(synth_data / "data"), val_fraction=0.25, lora_rank=2,
                           model=str(synth_data / "start.safetensors"), max_steps=3, batch_size=1, lr=1e-4,
                           input_size=(56, 56), save_every=1, device="cpu", output=str(tmp_path / name))

    class Killed(BaseException):
        pass

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if kwargs["step"] >= 1:
            raise Killed
        return path

    train(config("straight"))
    real_save = train_run.save_training_checkpoint
    monkeypatch.setattr(train_run, "save_training_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(config("killed"))
    monkeypatch.undo()
    assert load_training_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 1
    train(config("killed"), resume=True)
    assert (tmp_path / "straight" / "log.csv").read_text() == (tmp_path / "killed" / "log.csv").read_text()
    a, b = (load_training_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "killed"))
    assert all(torch.equal(a["train_state"][k], b["train_state"][k]) for k in a["train_state"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


@pytest.mark.slow
def test_cli_lora_run_loads_as_trained_and_resumes_exactly_after_a_kill(synth_data, tmp_path):
    """``train --lora 2`` in a subprocess, once straight and once SIGKILLed after its first checkpoint and resumed.
    Catches: a killed LoRA run resuming with other adapters or optimizer state (its weights or log.csv differing
    from the uninterrupted run's), and a best.safetensors that does not reproduce the trained (adapter) model's
    ``infer_image`` output or that ``load_model`` refuses (adapter keys)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _cli(*_train_args(synth_data, straight, "--lora", 2))
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen([sys.executable, "-m", "SurgicalDepthLib.cli",
                             *map(str, _train_args(synth_data, killed, "--lora", 2))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert load_training_checkpoint(killed / "last.pt")["step"] < 3  # killed before the end
    done = _cli(*_train_args(synth_data, killed, "--lora", 2, "--resume"))
    assert done.returncode == 0, done.stderr
    a, b = load_training_checkpoint(straight / "last.pt"), load_training_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 3 and sum(".lora_" in k for k in a["train_state"]) == 24
    assert a["train_state"].keys() == b["train_state"].keys()
    assert all(torch.equal(a["train_state"][k], b["train_state"][k]) for k in a["train_state"])
    assert (straight / "log.csv").read_text() == (killed / "log.csv").read_text()
    # the trained model as it was in memory: LoRA layers with the saved adapters, not merged
    trained = build_model(TrainConfig.from_json((straight / "train_config.json").read_text()), torch.device("cpu"))
    trained.load_state_dict(a["train_state"])
    assert any(bool(p.any()) for n, p in trained.named_parameters() if n.endswith("lora_b"))  # adapters trained
    best = load_model(straight / "best.safetensors", device="cpu", precision="fp32")
    assert not has_lora(best) and (straight / "best.json").read_text().find('"step": 3') >= 0
    trained.eval().config = best.config  # same inference size (the crops' 56)
    rgb = cv2.cvtColor(cv2.imread(str(synth_data / "data" / "rgb" / "000000.png")), cv2.COLOR_BGR2RGB)
    expected = trained.infer_image(rgb)
    np.testing.assert_allclose(best.infer_image(rgb), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    merged_last = load_model(straight / "last.pt", device="cpu", precision="fp32")
    np.testing.assert_array_equal(merged_last.infer_image(rgb, input_size=56), best.infer_image(rgb))
