"""Counting the bytes autograd keeps, against what each op is known to save."""
import torch
from torch import nn

from resode_tut import SavedTensorsCounter


def test_counter_counts_exactly_what_autograd_keeps():
    x = torch.randn(10, 4, requires_grad=True)          # 160 bytes in float32
    with SavedTensorsCounter() as c:
        y = x.exp()                                     # exp saves its output: 160 bytes
    assert c.bytes == 160
    lin = nn.Linear(4, 3)
    with SavedTensorsCounter(lin) as c:
        lin(x)                                          # saves x (160), weight excluded
    assert c.bytes == 160
    with SavedTensorsCounter() as c:
        z = x * x                                       # x saved twice, counted once
    assert c.bytes == 160
    del y, z
