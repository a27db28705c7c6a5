"""Every private torch API the stack and the adjoint use has a public fallback: forced
here one at a time, the results must stay those of the fast path (bitwise) and of
backprop."""
import pytest
import torch
from torch import nn

from resode_tut import ResidualStack, adjoint, stack, tanh_stack

FALLBACKS = [
    (adjoint, "_run_backward"),         # autograd engine entry -> torch.autograd.grad
    (adjoint, "_apply_c"),              # Function.apply's C entry -> Function.apply
    (adjoint, "_functorch_active"),     # functorch query -> Function.apply always
    (adjoint, "_AccumulateGrad"),       # leaf node class -> its name
    (stack, "_is_functorch_wrapped"),   # wrapper query -> try the check
]


def _gradients(scheme):
    torch.manual_seed(0)
    s = tanh_stack(12, "iid", seed=4, dim=5, scheme=scheme)
    s.adjoint = True
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    s(x).square().sum().backward()
    return [x.grad] + [p.grad for p in s.parameters()]


@pytest.mark.parametrize("module, name", FALLBACKS, ids=[n for _, n in FALLBACKS])
@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_each_fallback_gives_the_fast_paths_gradients(monkeypatch, module, name, scheme):
    fast = _gradients(scheme)
    monkeypatch.setattr(module, name, None)
    forced = _gradients(scheme)
    assert all(torch.equal(a, b) for a, b in zip(fast, forced))


def test_the_captured_tensor_check_works_without_torchs_leaf_class(monkeypatch):
    monkeypatch.setattr(adjoint, "_AccumulateGrad", None)
    w = torch.randn(3, 3, requires_grad=True)

    class Captures(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return torch.tanh(self.lin(x) @ w)

    s = ResidualStack([Captures() for _ in range(3)], adjoint=True)
    with pytest.raises(RuntimeError, match="not a parameter"):
        s(torch.randn(2, 3, requires_grad=True)).sum().backward()


def test_vmap_works_without_the_functorch_query(monkeypatch):
    monkeypatch.setattr(stack, "_is_functorch_wrapped", None)
    s = tanh_stack(4, dim=3)
    xs = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(s)(xs), torch.stack([s(x) for x in xs]))
