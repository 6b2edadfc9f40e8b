"""``LOSS_NAMES``: the one torch-free list of training losses that the registry, TrainConfig and the CLI share."""
from __future__ import annotations

import subprocess
import sys

import pytest

from SurgicalDepthLib.cli import DEVICE_HELP, build_parser
from SurgicalDepthTrainingLib.loss_names import LOSS_NAMES


def _train_actions() -> dict:
    return {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}


def test_registry_config_and_cli_use_the_same_names():
    """Catches a loss added to (or renamed in) the registry but not to the names the CLI and TrainConfig check,
    or the other way round, and a ``--device`` help text of its own."""
    from SurgicalDepthTrainingLib import training
    from SurgicalDepthTrainingLib.losses import LOSSES

    assert tuple(LOSSES) == LOSS_NAMES and training.LOSS_NAMES is LOSS_NAMES
    actions = _train_actions()
    assert tuple(actions["loss"].choices) == LOSS_NAMES
    assert actions["device"].help == DEVICE_HELP
    for name in LOSS_NAMES:
        assert training.TrainConfig(loss=name).loss == name
    with pytest.raises(ValueError, match=r"^loss must be one of \('l1', 'silog', 'ssi'\), got 'l2'"):
        training.TrainConfig(loss="l2")


def test_names_and_parser_import_no_torch():
    """Catches the loss names (or the train command's parser) importing torch: building the CLI must stay cheap."""
    code = ("import sys\nfrom SurgicalDepthTrainingLib.loss_names import LOSS_NAMES\n"
            "from SurgicalDepthLib.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
