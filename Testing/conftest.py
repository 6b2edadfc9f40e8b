"""Shared pytest fixtures. ``SAMPLES`` is ../shared/samples beside the checkout (tests using it skip when absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"


@pytest.fixture
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"real dataset samples not available ({SAMPLES})")
    return SAMPLES


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
