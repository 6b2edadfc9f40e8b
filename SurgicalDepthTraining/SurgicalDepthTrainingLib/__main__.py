"""``python -m SurgicalDepthTrainingLib COMMAND ...``: the full ``surgical-depth`` CLI without relying on the
installed entry point (3D Slicer loads the packages from the module folders, where no entry point exists)."""
from SurgicalDepthLib.cli import run

from .commands import register

run(extra=(register,))
