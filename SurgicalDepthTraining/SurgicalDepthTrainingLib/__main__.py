"""``python -m SurgicalDepthTrainingLib COMMAND ...``: the full ``surgical-depth`` CLI without relying on the
installed entry point (3D Slicer loads the packages from the module folders, where no entry point exists)."""
import sys

from SurgicalDepthLib.cli import main

from .commands import register

sys.exit(main(extra=(register,)))
