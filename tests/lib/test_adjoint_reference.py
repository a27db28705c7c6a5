"""The 15-line discrete adjoint of chapter 3 against the fast backward (bitwise on
float64) and against backprop."""
import pytest
import torch
from torch import nn

from resode_tut import ResidualStack, loglog_slope, tanh_stack
from resode_tut.adjoint import adjoint_gradients
from resode_tut.schemes import Coupling, Euler, Momentum, ReversibleHeun


def _fast(stack, x, p):
    stack.adjoint = True
    x = x.clone().requires_grad_(True)
    out = stack(x)
    out.backward(p)
    grads = [q.grad.clone() for q in stack.parameters()]
    stack.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


SCHEMES = ["euler", "heun", Euler(one_evaluation=True)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
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


@pytest.mark.parametrize("scheme", [Momentum(0.9), Coupling(), ReversibleHeun()], ids=repr)
def test_the_reference_loop_steps_a_stacked_state_as_the_fast_backward(scheme):
    """A several-part state: the loop runs on the state; the fast backward equals it."""
    stack = tanh_stack(12, "smooth", seed=3, dim=6, scheme=scheme)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    p = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    out, g_x, grads = _fast(stack, x, p)
    state = scheme.initial_state(x.clone().requires_grad_(True))
    with torch.no_grad():
        for n in range(stack.num_steps):
            state = stack.step(n, state)
    out_state = state.clone().requires_grad_(True)
    (p_N,) = torch.autograd.grad(scheme.output(out_state), out_state, p)
    p_0, ref = adjoint_gradients(stack, state, p_N)
    x0 = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(scheme.initial_state(x0), x0, p_0)
    torch.testing.assert_close(g_ref, g_x, rtol=1e-12, atol=1e-14)
    for a, b in zip(ref, grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_the_one_evaluation_adjoint_evaluates_once_a_step_and_keeps_order_one():
    """Half the backward evaluations of Sander et al.'s Euler adjoint; its gradient error
    against backprop falls like 1/N too (measured slope), with a larger constant."""
    class Counted(nn.Module):
        calls = 0

        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            Counted.calls += 1
            return self.f(x)
    errors = {"two": [], "one": []}
    depths = (16, 32, 64, 128, 256)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for depth in depths:
        base = tanh_stack(depth, "smooth", seed=1, dim=4)
        xr = x.clone().requires_grad_(True)
        (g_bp,) = torch.autograd.grad(base(xr).pow(2).sum(), xr)
        for name, scheme in (("two", Euler()), ("one", Euler(one_evaluation=True))):
            stack = ResidualStack([Counted(f) for f in base.functions], scheme=scheme,
                                  adjoint=True)
            xr = x.clone().requires_grad_(True)
            out = stack(xr)
            Counted.calls = 0
            (g,) = torch.autograd.grad(out.pow(2).sum(), xr)
            assert Counted.calls == (depth if name == "one" else 2 * depth)
            errors[name].append(((g - g_bp).norm() / g_bp.norm()).item())
    for name in errors:
        assert -1.5 < loglog_slope(depths, errors[name]) < -0.9, errors
    ratio = [a / b for a, b in zip(errors["one"], errors["two"])]
    assert all(1 < r < 20 for r in ratio), ratio


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
