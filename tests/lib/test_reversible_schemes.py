"""The schemes beyond Euler and Heun -- momentum, additive coupling, reversible Heun --
each against an independent computation: its limit ODE solved by torchdiffeq (order of
convergence, as diffrax's order tests do), backprop on the same weights (the memory-free
backward), and the contracts the adjoint keeps for Euler and Heun (random states,
BatchNorm statistics, captured tensors, the self-check, constant memory)."""
import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from resode_tut import ResidualStack, SavedTensorsCounter, loglog_slope
from resode_tut.adjoint import ReconstructionWarning
from resode_tut.schemes import (
    SCHEMES,
    Coupling,
    Euler,
    Heun,
    Momentum,
    ReversibleHeun,
    get_scheme,
)

EXACT = [Momentum(0.9), Momentum(epsilon=0.5), Coupling(), ReversibleHeun()]
IDS = [repr(s) for s in EXACT]


class Smooth(nn.Module):
    """``f(x) = tanh(x (A + t B)^T + sin(3t) c)``: a field smooth in time, sampled at t."""

    def __init__(self, t: float, d: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5)
        self.B = nn.Parameter(torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5)
        self.c = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.t = float(t)

    def field(self, t, x):
        return torch.tanh(x @ (self.A + t * self.B).T + math.sin(3 * t) * self.c)

    def forward(self, x):
        return self.field(self.t, x)


def smooth_stack(scheme, M, d=4, **kwargs):
    scheme = get_scheme(scheme)
    times = scheme.function_times(M)
    width = scheme.function_features(d)
    return ResidualStack([Smooth(float(t), width) for t in times], scheme=scheme, **kwargs)


def limit_solution(scheme, x, d=4):
    """The ODE each scheme discretises, solved to 1e-11 by torchdiffeq (dopri5)."""
    width = scheme.function_features(d)
    g = Smooth(0.0, width)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opts = dict(rtol=1e-11, atol=1e-12, method="dopri5")
    with torch.no_grad():
        if isinstance(scheme, Momentum) and scheme.epsilon is not None:
            eps = scheme.epsilon             # eps x'' + x' = g(t, x), x'(0) = 0

            def rhs(t, s):
                return torch.stack([s[1], (g.field(float(t), s[0]) - s[1]) / eps])
            return odeint(rhs, torch.stack([x, torch.zeros_like(x)]), t, **opts)[-1][0]
        if isinstance(scheme, Coupling):     # a' = g(t, b), b' = g(t, a)
            def rhs(t, s):
                a, b = s.chunk(2, dim=1)
                return torch.cat([g.field(float(t), b), g.field(float(t), a)], dim=1)
            return odeint(rhs, x, t, **opts)[-1]
        # Euler, Heun, reversible Heun, and momentum at fixed gamma: x' = g(t, x)
        return odeint(lambda t, s: g.field(float(t), s), x, t, **opts)[-1]


ORDERS = [(Euler(), 1), (Heun(), 2), (Momentum(epsilon=0.5), 1), (Momentum(0.5), 1),
          (Coupling(), 1), (ReversibleHeun(), 2)]


@pytest.mark.parametrize("scheme,order", ORDERS, ids=[repr(s) for s, _ in ORDERS])
def test_every_scheme_converges_to_its_limit_ode_at_its_order(scheme, order):
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = limit_solution(scheme, x)
    depths = [16, 32, 64, 128, 256]
    errors = []
    for M in depths:
        with torch.no_grad():
            errors.append(float((smooth_stack(scheme, M)(x) - exact).norm() / exact.norm()))
    assert loglog_slope(depths, errors) == pytest.approx(-order, abs=0.15), errors
    assert errors[-1] < 0.05


@pytest.mark.parametrize("scheme", EXACT, ids=IDS)
def test_the_reverse_step_undoes_the_step_to_rounding(scheme):
    stack = smooth_stack(scheme, 9 if isinstance(scheme, (Momentum, ReversibleHeun)) else 10)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = scheme.initial_state(x)
        for n in range(stack.num_steps):
            after = stack.step(n, state)
            back = scheme.reverse_step(stack.evaluate, n, after, stack.h)
            assert float((back - state).norm() / state.norm()) < 1e-14
            state = after


def test_euler_and_heun_reverse_steps_are_only_approximate():
    """The contrast the exact schemes are for: an O(h^2) miss a step, not rounding."""
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for scheme in (Euler(), Heun()):
        stack = smooth_stack(scheme, 9)
        with torch.no_grad():
            after = stack.step(0, x)
            miss = float((scheme.reverse_step(stack.evaluate, 0, after, stack.h) - x).norm())
        assert miss > 1e-6


def gradients(stack, x, seed=0):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    out = stack(x)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    params = [p for p in stack.parameters() if p.requires_grad]
    return out.detach(), torch.autograd.grad((out * w).sum() + out.pow(2).sum(), [x, *params])


@pytest.mark.parametrize("scheme", EXACT, ids=IDS)
def test_the_memory_free_backward_gives_backprops_gradients(scheme):
    M = 12
    stack = smooth_stack(scheme, M)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out_p, g_p = gradients(stack, x)
    stack.adjoint = True
    out_a, g_a = gradients(stack, x)
    assert torch.equal(out_a, out_p)
    for a, b in zip(g_a, g_p):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    assert stack.last_reconstruction_error < 1e-13
    # the same on tied weights: one module at several depths sums its step gradients
    width = scheme.function_features(4)
    shared = [Smooth(0.3, width, seed=s) for s in range(2)]
    tied = [shared[k % 2] for k in range(M)]
    g = {adj: gradients(ResidualStack(tied, scheme=scheme, adjoint=adj), x)[1]
         for adj in (False, True)}
    for a, b in zip(g[True], g[False]):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_a_zeroed_reverse_step_is_caught_by_the_gradient_and_the_self_check(monkeypatch):
    """The test above can fail: a momentum reverse that forgets to divide by gamma."""
    scheme = Momentum(0.9)
    stack = smooth_stack(scheme, 12)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, g_p = gradients(stack, x)

    def wrong(f, n, state, h, first=None):
        y, v = state.unbind(0)
        y = y - h * v
        return torch.stack([y, v - 0.1 * f(n, y)])      # no division by gamma
    monkeypatch.setattr(scheme, "reverse_step", wrong)
    stack.adjoint = True
    with pytest.warns(ReconstructionWarning):
        _, g_a = gradients(stack, x)
    assert max(float((a - b).norm() / b.norm()) for a, b in zip(g_a, g_p)) > 1e-3


class Noisy(nn.Module):
    """A residual function with dropout and additive noise."""

    def __init__(self, d, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(d, d).double()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(torch.tanh(self.lin(x))) + 0.1 * torch.randn_like(x)


@pytest.mark.parametrize("scheme", [Momentum(0.9), Coupling(), ReversibleHeun()],
                         ids=["momentum", "coupling", "reversible_heun"])
def test_random_functions_are_replayed(scheme):
    width = scheme.function_features(4)
    fs = [Noisy(width, s) for s in range(8)]
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out_p, g_p = gradients(ResidualStack(fs, scheme=scheme), x, seed=5)
    stack = ResidualStack(fs, scheme=scheme, adjoint=True)
    out_a, g_a = gradients(stack, x, seed=5)
    assert torch.equal(out_a, out_p)
    assert stack.last_reconstruction_error < 1e-13
    for a, b in zip(g_a, g_p):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reversible_heun_replays_each_function_where_its_forward_evaluated_it(monkeypatch):
    """Its reverse of step n evaluates f_n, which the forward evaluated in step n - 1:
    replaying another evaluation's masks is caught by the gradients and the self-check."""
    fs = [Noisy(4, s) for s in range(6)]
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, g_p = gradients(ResidualStack(fs, scheme="reversible_heun"), x, seed=5)
    monkeypatch.setattr(ReversibleHeun, "evaluation_index",
                        lambda self, n, k: min(k + 1, 5))     # shifted: wrong masks
    stack = ResidualStack(fs, scheme="reversible_heun", adjoint=True)
    with pytest.warns(ReconstructionWarning):
        _, g_a = gradients(stack, x, seed=5)
    assert max(float((a - b).norm() / b.norm()) for a, b in zip(g_a, g_p)) > 1e-3


class Normed(nn.Module):
    def __init__(self, d, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(d, d).double()
        self.bn = nn.BatchNorm1d(d).double()

    def forward(self, x):
        return torch.tanh(self.bn(self.lin(x)))


@pytest.mark.parametrize("scheme", EXACT, ids=IDS)
def test_batchnorm_in_train_mode_ends_as_after_backprop(scheme):
    width = scheme.function_features(4)
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    results = {}
    for adjoint in (False, True):
        fs = [Normed(width, s) for s in range(6)]
        stack = ResidualStack(fs, scheme=scheme, adjoint=adjoint)
        results[adjoint] = gradients(stack, x), [b.clone() for b in stack.buffers()]
    (out_p, g_p), buf_p = results[False]
    (out_a, g_a), buf_a = results[True]
    assert torch.equal(out_a, out_p)
    for a, b in zip(buf_a, buf_p):
        assert torch.equal(a, b)
    for a, b in zip(g_a, g_p):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("scheme", EXACT, ids=IDS)
def test_a_captured_tensor_requiring_grad_is_refused(scheme):
    width = scheme.function_features(4)
    z = torch.randn(width, dtype=torch.float64, requires_grad=True)

    class Captures(nn.Module):
        def forward(self, x):
            return torch.tanh(x + z)
    stack = ResidualStack([Captures() for _ in range(6)], scheme=scheme, adjoint=True)
    out = stack(torch.randn(5, 4, dtype=torch.float64, requires_grad=True))
    with pytest.raises(RuntimeError, match="nn.Parameter"):
        out.sum().backward()


@pytest.mark.parametrize("scheme", EXACT, ids=IDS)
def test_memory_saved_for_backward_does_not_grow_with_depth(scheme):
    x = torch.randn(32, 4, dtype=torch.float64, requires_grad=True)
    saved = {}
    for M in (8, 64):
        stack = smooth_stack(scheme, M, adjoint=True)
        with SavedTensorsCounter(stack) as counter:
            stack(x)
        saved[M] = counter.bytes
        plain = smooth_stack(scheme, M)
        with SavedTensorsCounter(plain) as counter:
            plain(x)
        assert counter.bytes > 4 * saved[M] or M == 8      # backprop keeps every step
    assert saved[64] == saved[8]


def test_fixed_momentum_amplifies_rounding_as_gamma_to_the_minus_n_and_the_check_sees_it():
    """Reversing divides v by gamma every step: float32 rounding grows like gamma^-N.
    With gamma = 1 - h/epsilon the growth stays below e^(1/epsilon)."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(6))
    drift = {}
    for scheme in (Momentum(0.5), Momentum(epsilon=0.5)):
        for M in (8, 32):
            stack = smooth_stack(scheme, M).float()
            with torch.no_grad():
                state = scheme.initial_state(x)
                for n in range(stack.num_steps):
                    state = stack.step(n, state)
                for n in reversed(range(stack.num_steps)):
                    state = scheme.reverse_step(stack.evaluate, n, state, stack.h)
            drift[repr(scheme), M] = float((state[0] - x).norm() / x.norm())
    fixed = [drift["Momentum(gamma=0.5)", M] for M in (8, 32)]
    scaled = [drift["Momentum(epsilon=0.5)", M] for M in (8, 32)]
    assert fixed[1] > 1e3 * max(fixed[0], 1e-7)       # 2^24 more amplification at M = 32
    assert max(scaled) < 1e-4                         # e^2 at most: float32 rounding stays small
    stack = smooth_stack(Momentum(0.5), 32, adjoint=True).float()
    with pytest.warns(ReconstructionWarning):
        stack(x.clone().requires_grad_(True)).sum().backward()


def test_bad_scheme_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\)"):
        Momentum(1.5)
    with pytest.raises(ValueError, match="one of gamma .* not both"):
        Momentum(0.9, epsilon=0.1)
    with pytest.raises(ValueError, match="finite number"):
        Momentum(float("nan"))
    with pytest.raises(ValueError, match="h = 1/M < epsilon.*more than 10"):
        ResidualStack([nn.Linear(2, 2)] * 5, scheme=Momentum(epsilon=0.1))
    with pytest.raises(ValueError, match="even number, got 5"):
        ResidualStack([nn.Linear(2, 2)] * 5, scheme="coupling")
    with pytest.raises(ValueError, match="even size there, got shape \\(3, 5\\)"):
        ResidualStack([nn.Linear(2, 2)] * 4, scheme="coupling")(torch.randn(3, 5))
    with pytest.raises(ValueError, match="stacks 3 tensors.*got shape \\(2, 2\\)"):
        ReversibleHeun().output(torch.zeros(2, 2))
    assert set(SCHEMES) == {"euler", "heun", "momentum", "coupling", "reversible_heun"}
    assert get_scheme("momentum") == Momentum(0.9) != Momentum(0.8)
    assert "momentum" in repr(ResidualStack([nn.Linear(2, 2)], scheme="momentum"))
