"""What the adjoint supports and what it refuses, each against plain backprop on the
same weights (issue 14): random functions, captured tensors, higher-order gradients,
in-place functions, dtype changes, the self-check, function transforms."""
import math
import warnings
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from resode_tut import ReconstructionError, ResidualStack, tanh_stack
from resode_tut.adjoint import ReconstructionWarning

SCHEMES = ["euler", "heun"]
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class NoisyCoupling(nn.Module):
    """f(x) = (0, g(x_a)) with dropout and additive noise inside g: the reversal is exact
    when, and only when, every evaluation sees the mask and noise it saw in forward."""

    def __init__(self, d=3, width=16, p=0.5):
        super().__init__()
        self.d = d
        self.lin1, self.drop, self.lin2 = nn.Linear(d, width), nn.Dropout(p), nn.Linear(width, d)
        self.noise = True

    def forward(self, x):
        a = x[:, :self.d]
        hidden = self.drop(torch.tanh(self.lin1(a)))
        if self.noise:
            hidden = hidden + 0.3 * torch.randn_like(hidden)
        return torch.cat([torch.zeros_like(a), self.lin2(hidden)], dim=1)


def run(stack, x, seed, create_graph=False):
    """Seed, forward, backward of a fixed linear loss: output, gradients, RNG state after."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    x = x.clone().requires_grad_(True)
    out = stack(x)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device)
    loss = (out * w.reshape(out.shape)).sum()
    params = [p for p in stack.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params], create_graph=create_graph)
    states = [torch.get_rng_state()]
    if x.is_cuda:
        states.append(torch.cuda.get_rng_state(x.device))
    return out.detach(), grads, states


# -- 1. randomness ----------------------------------------------------------------------

@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dropout_and_noise_are_replayed_and_the_generators_end_as_after_backprop(scheme,
                                                                                  device):
    torch.manual_seed(0)
    fs = [NoisyCoupling().double().to(device) for _ in range(6)]
    x = torch.randn(8, 6, dtype=torch.float64, device=device)
    out_p, g_p, rng_p = run(ResidualStack(fs, scheme=scheme), x, seed=11)
    adjoint = ResidualStack(fs, scheme=scheme, adjoint=True)
    out_a, g_a, rng_a = run(adjoint, x, seed=11)
    assert torch.equal(out_a, out_p)          # same masks in forward
    # every reconstruction evaluation had its forward mask and noise: x_0 comes back exactly
    # (the gradients alone would not show a wrong mask in the reconstruction: g sees x_a)
    assert adjoint.last_reconstruction_error < 1e-13
    for a, b in zip(g_a, g_p):               # and in backward: exact reversal, same gradients
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(rng_a, rng_p):           # the backward consumed no random numbers
        assert torch.equal(a, b)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_without_replay_the_masks_differ_which_is_what_the_option_is_for(scheme):
    torch.manual_seed(0)
    fs = [NoisyCoupling().double() for _ in range(6)]
    x = torch.randn(8, 6, dtype=torch.float64)
    _, g_p, _ = run(ResidualStack(fs, scheme=scheme), x, seed=11)
    stack = ResidualStack(fs, scheme=scheme, adjoint=True, preserve_rng_state=False)
    with pytest.warns(ReconstructionWarning):   # the self-check notices the fresh masks
        _, g_a, _ = run(stack, x, seed=11)
    err = max(((a - b).norm() / b.norm()).item() for a, b in zip(g_a, g_p))
    assert err > 0.05


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_replay_costs_a_state_per_random_evaluation_and_none_for_a_deterministic_stack(
        scheme):
    import resode_tut.adjoint as adjoint
    from resode_tut import SavedTensorsCounter
    state = torch.get_rng_state().numel()
    assert state == 5056 and "5,056 bytes" in adjoint.__doc__   # the documented cost
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    two_states = 2 * x.numel() * 8                       # x_0 and x_N, for the self-check
    M = 6
    evaluations = M if scheme == "euler" else 2 * (M - 1)
    for functions, replay, expected in (
            ([NoisyCoupling().double() for _ in range(M)], True, evaluations * state),
            ([nn.Linear(6, 6).double() for _ in range(M)], True, 0),
            ([NoisyCoupling().double() for _ in range(M)], False, 0)):
        stack = ResidualStack(functions, scheme=scheme, adjoint=True,
                              preserve_rng_state=replay)
        with SavedTensorsCounter(stack) as saved:
            stack(x)
        assert saved.bytes == two_states + expected


@pytest.mark.parametrize("scheme", SCHEMES)
def test_replay_follows_the_stack_from_random_to_deterministic_and_back(scheme):
    """The first forward of a random stack finds out after the fact and records by
    running again; later ones record directly; eval mode (no dropout) records
    nothing; every call's gradients and generator states equal backprop's."""
    torch.manual_seed(0)
    fs = [NoisyCoupling().double() for _ in range(5)]
    x = torch.randn(4, 6, dtype=torch.float64)
    plain = ResidualStack(fs, scheme=scheme)
    adjoint = ResidualStack(fs, scheme=scheme, adjoint=True)
    for call, mode in enumerate(["train", "train", "eval", "train"]):
        for f in fs:
            f.train(mode == "train")
            f.noise = mode == "train"
        out_p, g_p, rng_p = run(plain, x, seed=call)
        out_a, g_a, rng_a = run(adjoint, x, seed=call)
        assert torch.equal(out_a, out_p)
        for a, b in zip(g_a, g_p):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert all(map(torch.equal, rng_a, rng_p))
        assert adjoint.adjoint_state.rng_seen == (mode == "train")


# -- 2. captured tensors ----------------------------------------------------------------

class Conditioned(nn.Module):
    """Uses a tensor it does not own: ``cond`` set from outside (a conditioning vector)."""

    def __init__(self, d=4):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.cond = None

    def forward(self, x):
        return torch.tanh(self.lin(x) + self.cond)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("leaf", [True, False])
def test_a_captured_tensor_requiring_grad_is_refused_by_name(scheme, leaf):
    torch.manual_seed(1)
    fs = [Conditioned() for _ in range(4)]
    z = torch.randn(1, 4, requires_grad=True)
    cond = z if leaf else 2 * z                       # a leaf, or computed upstream
    for f in fs:
        f.cond = cond
    x = torch.randn(5, 4, requires_grad=True)
    # backprop gives z a gradient ...
    (g_z,) = torch.autograd.grad(ResidualStack(fs, scheme=scheme)(x).sum(), [z])
    assert g_z.abs().sum() > 0
    # ... the adjoint cannot: it says so instead of returning None
    out = ResidualStack(fs, scheme=scheme, adjoint=True)(x)
    with pytest.raises(RuntimeError, match=r"shape \(1, 4\).*nn\.Parameter"):
        torch.autograd.grad(out.sum(), [x, z], allow_unused=True)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_weight_of_another_layer_of_the_stack_reached_by_closure_gets_its_gradient(scheme):
    """Registered in the stack, used elsewhere: the gradient goes to the right parameter."""
    torch.manual_seed(2)
    owners = [nn.Linear(4, 4).double() for _ in range(4)]

    class Borrowing(nn.Module):
        def __init__(self, other):
            super().__init__()
            self.other = [other]          # not a submodule: its weight is captured

        def forward(self, x):
            return torch.tanh(x @ self.other[0].weight.T)

    fs = owners + [Borrowing(owners[0]), Borrowing(owners[2])]
    x = torch.randn(5, 4, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        stack = ResidualStack(fs, scheme=scheme, adjoint=adjoint)
        grads[adjoint] = run(stack, x, seed=0)[1]
    # 6 layers, not in the ODE regime: compare with the adjoint's O(h) error in mind, but
    # a missing contribution (the borrowed weight's) would be off by far more
    for a, b in zip(grads[True], grads[False]):
        assert ((a - b).norm() / b.norm()) < 0.2
    plain = ResidualStack([owners[0]], adjoint=True)
    assert plain.last_reconstruction_error is None


# -- 3. higher-order gradients ------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_create_graph_is_refused_as_first_order_only(scheme):
    torch.manual_seed(3)
    stack = tanh_stack(8, "smooth", seed=0, scheme=scheme)
    stack.adjoint = True
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(stack(x).pow(2).sum(), [x], create_graph=True)
    # first order still works on the same stack
    (g,) = torch.autograd.grad(stack(x).pow(2).sum(), [x])
    assert torch.isfinite(g).all()


# -- 4. in-place residual functions --------------------------------------------------------

@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_function_that_modifies_its_input_in_place_is_refused(scheme, adjoint):
    fs = [nn.Sequential(nn.ReLU(inplace=True), nn.Linear(3, 3)) for _ in range(4)]
    stack = ResidualStack(fs, scheme=scheme, adjoint=adjoint)
    x = torch.randn(5, 3) + 0.0                     # not a leaf: torch itself would allow it
    with pytest.raises(ValueError, match="residual function 0 .* in place"):
        stack(x)
    # an in-place op on a hidden tensor (not the input) is fine, and the output is kept intact
    ok = [nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 3))
          for _ in range(4)]
    stack = ResidualStack(ok, scheme=scheme, adjoint=adjoint)
    out = stack(x.requires_grad_(False).clone().requires_grad_(True))
    kept = out.detach().clone()
    out.sum().backward()
    assert torch.equal(out.detach(), kept)


# -- 5. the self-check --------------------------------------------------------------------

def euler_reversal(stack, out):
    """Independent reconstruction of x_0: x_n = x_{n+1} - h f_n(x_{n+1}), written out."""
    x = out.detach()
    with torch.no_grad():
        for n in reversed(range(stack.num_steps)):
            x = x - stack.h * stack.functions[n](x)
    return x


def test_the_self_check_equals_an_independent_reconstruction_and_falls_with_depth():
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    errors = []
    for N in (8, 32, 128):
        stack = tanh_stack(N, "smooth", seed=2)
        stack.adjoint = True
        _, _, _ = run(stack, x, seed=0)
        out = stack(x)
        expected = ((euler_reversal(stack, out) - x).norm() / (out - x).norm()).item()
        assert stack.last_reconstruction_error == pytest.approx(expected, rel=1e-9)
        errors.append(stack.last_reconstruction_error)
    assert errors[0] > errors[1] > errors[2] > 0


def far_from_invertible(scheme, strict=False):
    """A few layers with large weights: the reversal is finite but wrong."""
    torch.manual_seed(5)
    fs = [nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double() for _ in range(3)]
    with torch.no_grad():
        for f in fs:
            f[0].weight.mul_(8)
    return ResidualStack(fs, scheme=scheme, adjoint=True, strict=strict)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_finite_but_wrong_reconstruction_warns_once_and_strict_raises(scheme):
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    stack = far_from_invertible(scheme)
    plain = ResidualStack(list(stack.functions), scheme=scheme)
    _, g_p, _ = run(plain, x, seed=0)
    with pytest.warns(ReconstructionWarning, match="reconstruction_tol=0.1"):
        _, g_a, _ = run(stack, x, seed=0)
    grad_err = max(((a - b).norm() / b.norm()).item() for a, b in zip(g_a, g_p))
    assert grad_err > 0.5                      # the gradient really is wrong ...
    assert stack.last_reconstruction_error > 0.1   # ... and the self-check saw it
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # once per stack: no second warning
        run(stack, x, seed=0)
    with pytest.raises(ReconstructionError, match="off by"):
        run(far_from_invertible(scheme, strict=True), x, seed=0)
    quiet = far_from_invertible(scheme)
    quiet.reconstruction_tol = math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(quiet, x, seed=0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "0.1x", None])
def test_reconstruction_tol_and_flags_are_validated(bad):
    with pytest.raises(ValueError, match="reconstruction_tol"):
        ResidualStack([nn.Linear(2, 2)], reconstruction_tol=bad)
    with pytest.raises(TypeError, match="preserve_rng_state"):
        ResidualStack([nn.Linear(2, 2)], preserve_rng_state=1)
    with pytest.raises(TypeError, match="strict"):
        ResidualStack([nn.Linear(2, 2)], strict="yes")


# -- 6. dtype changes ---------------------------------------------------------------------

class Upcast(nn.Module):
    """float32 weights, float64 output (a last layer handing over to float64 code)."""

    def __init__(self, d=3):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return torch.tanh(self.lin(x)).double()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_function_that_changes_the_dtype_works_as_under_backprop(scheme):
    torch.manual_seed(7)
    fs = [nn.Sequential(nn.Linear(3, 3), nn.Tanh()) for _ in range(31)] + [Upcast()]
    x = torch.randn(6, 3)                         # float32 in, float64 out
    out_p, g_p, _ = run(ResidualStack(fs, scheme=scheme), x, seed=0)
    out_a, g_a, _ = run(ResidualStack(fs, scheme=scheme, adjoint=True), x, seed=0)
    assert out_a.dtype == out_p.dtype == torch.float64
    assert torch.equal(out_a, out_p)
    for a, b in zip(g_a, g_p):
        assert a.dtype == b.dtype
        assert ((a - b).norm() / b.norm()) < 0.05   # the adjoint's O(h) error, N = 32


# -- 7. function transforms -----------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_vmap_over_a_plain_stack_equals_a_loop(scheme):
    torch.manual_seed(8)
    stack = ResidualStack([nn.Linear(3, 3) for _ in range(4)], scheme=scheme)
    xs = torch.randn(5, 2, 3)
    batched = torch.func.vmap(stack)(xs)
    torch.testing.assert_close(batched, torch.stack([stack(x) for x in xs]))
    # and over parameters, as for training several seeds at once
    params = torch.func.stack_module_state(
        [ResidualStack([nn.Linear(3, 3) for _ in range(4)], scheme=scheme)
         for _ in range(3)])[0]
    outs = torch.func.vmap(lambda p, x: torch.func.functional_call(stack, p, (x,)),
                           in_dims=(0, None))(params, xs[0])
    assert outs.shape == (3, 2, 3)


# -- autocast -------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_backward_re_enters_the_forwards_autocast(scheme, monkeypatch):
    """bf16 autocast on the CPU: the adjoint's gradients are autocast backprop's up to the
    bf16 rounding of the reconstruction; recomputing in float32 (backward outside
    autocast, as before) gives float32 gradients, about twice as far."""
    import contextlib

    import resode_tut.adjoint as adjoint
    torch.manual_seed(0)
    fs = [nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32)) for _ in range(64)]
    x = torch.randn(64, 32)

    def flat_grads(adj):
        stack = ResidualStack(fs, scheme=scheme, adjoint=adj)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stack(x)
        g = torch.autograd.grad(out.float().square().sum(), list(stack.parameters()))
        return torch.cat([t.flatten() for t in g])

    reference = flat_grads(False)
    err = lambda g: ((g - reference).norm() / reference.norm()).item()
    re_entered = err(flat_grads(True))
    monkeypatch.setattr(adjoint, "_autocast", lambda states: contextlib.nullcontext())
    float32 = err(flat_grads(True))
    assert re_entered < 2.5e-3 and float32 > 1.5 * re_entered, (re_entered, float32)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_backward_inside_autocast_keeps_the_forwards_precision(scheme):
    """Forward outside autocast, backward called inside a bf16 autocast region: the
    re-evaluations leave that region (the forward's state, autocast off), so the
    gradients are bitwise those of a backward outside it."""
    torch.manual_seed(0)
    fs = [nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)) for _ in range(6)]
    stack = ResidualStack(fs, scheme=scheme, adjoint=True)
    x = torch.randn(16, 8)

    def grads(inside):
        out = stack(x)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if inside else nullcontext()
        with context:
            return torch.autograd.grad(out.square().sum(), list(stack.parameters()))

    for a, b in zip(grads(False), grads(True)):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_torch_compile_of_an_adjoint_stack_gives_the_eager_gradients(scheme):
    """Under torch.compile the stack's forward is traced up to the adjoint (which calls
    autograd.Function's entry point directly): the gradients are the eager adjoint's, and
    on coupling layers (exact reversal) backprop's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    fs = []
    for _ in range(6):
        f = NoisyCoupling(p=0.0).double()
        f.noise = False
        fs.append(f)
    plain = ResidualStack(fs, scheme=scheme)
    stack = ResidualStack(fs, scheme=scheme, adjoint=True)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    grads = lambda s: torch.autograd.grad(s(x).pow(2).sum(), list(fs[0].parameters()) +
                                          list(fs[-1].parameters()))
    eager, backprop = grads(stack), grads(plain)
    got = grads(torch.compile(stack, backend="eager"))
    assert all(torch.equal(a, b) for a, b in zip(eager, got))
    for a, b in zip(got, backprop):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
