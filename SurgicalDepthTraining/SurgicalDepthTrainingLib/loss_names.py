"""The names of the training losses, torch-free: ``TrainConfig.loss``, the ``train`` command's ``--loss`` choices
and the Slicer module check a name against :data:`LOSS_NAMES` without importing torch (building a parser or a
widget must stay cheap); :data:`.losses.LOSSES` maps each of these names to its function."""
from __future__ import annotations

LOSS_NAMES = ("l1", "silog", "ssi")
