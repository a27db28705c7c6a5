"""The scheme's one piece of arithmetic, ``x + h k``, without a temporary."""
from __future__ import annotations

import torch


def add_scaled(x: torch.Tensor, h: float, k: torch.Tensor) -> torch.Tensor:
    """``x + h * k`` with the same bits and autograd graph, one allocation fewer.

    The sum is written in place into the product ``h * k``, a tensor made here,
    never into ``k`` (a residual function may return a view of its input or a
    tensor it keeps).  Where ``x`` has another dtype than the product (autocast,
    a function that changes the dtype), the sum is made out of place, so the
    result has the promoted dtype as ``x + h * k`` would.
    """
    t = torch.mul(k, h)
    return t.add_(x) if t.dtype == x.dtype and t.shape == x.shape else x + t
