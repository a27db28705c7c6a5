"""Saved-tensor counting and the four gradient methods, against autograd."""
import pytest
import torch
from torch import nn

from resode_tut import ResidualStack, tanh_stack
from resode_tut.gradient_methods import (METHODS, forward_with, gradients, relative_error,
                                         saved_bytes)
from resode_tut.memory import SavedTensorsCounter


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


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_methods_give_the_stack_output_and_exact_ones_agree_with_backprop(scheme):
    stack = tanh_stack(20, "smooth", seed=0, dim=3, scheme=scheme)
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = stack(x)
    for m in METHODS:
        torch.testing.assert_close(forward_with(stack, x, m), expected, rtol=1e-12, atol=1e-12)
    ref = gradients(stack, x, "backprop")
    assert relative_error(ref, gradients(stack, x, "checkpoint")) < 1e-12
    for m in ("adjoint", "odeint_adjoint"):
        assert 0 < relative_error(ref, gradients(stack, x, m)) < 0.5


def test_memory_growth_backprop_linear_adjoint_flat():
    x = torch.randn(32, 8, requires_grad=True)
    small, large = (tanh_stack(N, "smooth", dim=8, dtype=torch.float32) for N in (8, 64))
    assert saved_bytes(large, x, "backprop") >= 7 * saved_bytes(small, x, "backprop")
    assert saved_bytes(large, x, "adjoint") == saved_bytes(small, x, "adjoint") == 32 * 8 * 4


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown gradient method 'fast'"):
        forward_with(tanh_stack(4), torch.randn(2, 2, dtype=torch.float64), "fast")


def test_cuda_peak_needs_a_cuda_tensor():
    from resode_tut.gradient_methods import cuda_peak_mib
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_peak_mib(tanh_stack(4), torch.randn(2, 2, dtype=torch.float64), "adjoint")
