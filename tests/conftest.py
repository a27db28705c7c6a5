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


sys.path.insert(0, str(Path(__file__).parent))

# The tests' tensors are small: one thread is as fast, and does not crawl when the cores
# are shared (two spinning threads took 9x longer on a busy 2-core machine).
torch.set_num_threads(1)
