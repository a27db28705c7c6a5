"""The 15-line discrete adjoint of chapter 3 against the fast backward (bitwise on
float64) and against backprop."""
import pytest
import torch
from torch import nn

from resode_tut import ResidualStack, tanh_stack
from resode_tut.adjoint import adjoint_gradients


def _fast(stack, x, p):
    stack.adjoint = True
    x = x.clone().requires_grad_(True)
    out = stack(x)
    out.backward(p)
    grads = [q.grad.clone() for q in stack.parameters()]
    stack.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("scheme", ["euler", "heun"])
@pytest.mark.parametrize("weights", ["smooth", "iid"])
def test_the_reference_loop_is_bitwise_the_fast_backward(scheme, weights):
    stack = tanh_stack(32, weights, seed=3, dim=6, scheme=scheme)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    p = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    out, g_x, grads = _fast(stack, x, p)
    p_0, ref = adjoint_gradients(stack, out, p)
    assert torch.equal(p_0, g_x)
    assert all(torch.equal(a, b) for a, b in zip(ref, grads))


def test_the_reference_loop_approaches_backprop_with_depth():
    """An independent check: its error against autograd falls like 1/N (Euler)."""
    errors = []
    for depth in (16, 64):
        stack = tanh_stack(depth, "smooth", seed=1, dim=4)
        x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        x.requires_grad_(True)
        out = stack(x)
        (g_bp,) = torch.autograd.grad(out, x, torch.ones_like(out))
        g_ref, _ = adjoint_gradients(stack, out.detach(), torch.ones_like(out))
        errors.append(((g_ref - g_bp).norm() / g_bp.norm()).item())
    assert errors[1] < errors[0] / 3 and errors[1] < 1e-2


def test_a_zeroed_vector_jacobian_product_is_caught():
    """Sabotage: dropping the parameter term of the recursion must change the result."""
    stack = ResidualStack([nn.Sequential(nn.Linear(3, 3), nn.Tanh()) for _ in range(4)])
    stack.double()
    x = torch.randn(2, 3, dtype=torch.float64)
    out, _, grads = _fast(stack, x, torch.ones(2, 3, dtype=torch.float64))
    _, ref = adjoint_gradients(stack, out, torch.ones(2, 3, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(ref, grads))
    assert not torch.equal(ref[0], torch.zeros_like(ref[0]))
