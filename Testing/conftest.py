"""Shared pytest fixtures and the import path of the test-support modules. ``SAMPLES`` is ../shared/samples beside the checkout (tests using it skip when absent)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# test-support modules (Testing/support/analytic_scene.py) are imported by name; with --import-mode=importlib
# pytest puts no test folder on sys.path itself. Only that folder: Testing/ itself would shadow the packages.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

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


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tests of tiny models and volumes: OpenMP threads on a shared 2-core CI machine only
    add contention (up to ~50x slower measured); the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
