"""Shared fixtures; ``tests/`` is put on ``sys.path`` so that every test folder can
``from helpers import ...``."""
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype, restoring it afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def cifar_and_results(tmp_path, monkeypatch):
    """A small CIFAR-10 folder (40 images a batch file) as the default copy, an empty
    results folder, and no progress bars: the setting of a shipped CIFAR run's tests.
    Returns the CIFAR-10 folder."""
    from helpers import write_batches

    root = tmp_path / "cifar"
    write_batches(root, 40)
    monkeypatch.setenv("RESODE_DATA", str(root))
    monkeypatch.setenv("RESODE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return root


sys.path.insert(0, str(Path(__file__).parent))

# The tests' tensors are small: one thread is as fast, and does not crawl when the cores
# are shared (two spinning threads took 9x longer on a busy 2-core machine).
torch.set_num_threads(1)
