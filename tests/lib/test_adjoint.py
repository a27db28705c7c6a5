"""The memory-free discrete adjoint against backpropagation (autograd)."""
import copy

import pytest
import torch
from torch import nn

from resode_tut import ReconstructionError, ResidualStack, loglog_slope, tanh_stack


class Coupling(nn.Module):
    """f(x) = (0, g(x_a)): a step only changes x_b, from x_a alone, so the Euler
    reversal x_n = x_{n+1} - h f(x_{n+1}) and the reversed Heun step are exact."""

    def __init__(self, d=2, width=8):
        super().__init__()
        self.d = d
        self.g = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d))

    def forward(self, x):
        a = x[:, :self.d]
        return torch.cat([torch.zeros_like(a), self.g(a)], dim=1)


def grads(stack, x, weight=None):
    x = x.clone().requires_grad_(True)
    out = stack(x)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    (out * w).sum().backward()
    g = [x.grad.clone()] + [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    return out.detach(), g


def twin(functions, **kw):
    return ResidualStack(functions, **kw), ResidualStack(functions, adjoint=True, **kw)


@pytest.mark.parametrize("scheme", ["euler", "heun"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_identical_and_exact_case_matches_backprop(dtype, scheme):
    torch.manual_seed(0)
    fs = [Coupling().to(dtype) for _ in range(12)]
    plain, adj = twin(fs, scheme=scheme)
    x = torch.randn(5, 4, dtype=dtype)
    out_p, g_p = grads(plain, x)
    out_a, g_a = grads(adj, x)
    assert torch.equal(out_p, out_a)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for gp, ga in zip(g_p, g_a):
        torch.testing.assert_close(ga, gp, rtol=tol, atol=tol)


def rel_error(g_ref, g):
    num = sum((a - b).square().sum() for a, b in zip(g_ref, g))
    return (num / sum(a.square().sum() for a in g_ref)).sqrt().item()


def adjoint_errors(scheme, depths, weights="smooth"):
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errs = []
    for N in depths:
        plain = tanh_stack(N, weights, seed=2, scheme=scheme)
        adj = ResidualStack(list(plain.functions), scheme=scheme, adjoint=True)
        errs.append(rel_error(grads(plain, x)[1], grads(adj, x)[1]))
    return errs


def test_gradient_error_falls_like_one_over_depth():
    depths = [16, 64, 256]
    errs = adjoint_errors("euler", depths)
    assert errs[-1] < 1e-2
    assert loglog_slope(depths, errs) <= -0.9


def test_heun_gradient_error_is_second_order_with_smooth_weights():
    depths = [16, 64, 256]
    heun = adjoint_errors("heun", depths)
    euler = adjoint_errors("euler", depths)
    assert loglog_slope(depths, heun) <= -1.8
    assert all(a < b for a, b in zip(heun, euler))


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_tied_weights_receive_the_sum_over_layers(scheme):
    torch.manual_seed(3)
    f = Coupling().double()
    plain, adj = twin([f] * 10, scheme=scheme)
    x = torch.randn(4, 4, dtype=torch.float64)
    _, g_p = grads(plain, x)
    _, g_a = grads(adj, x)
    assert len(g_a) == 1 + len(list(f.parameters()))   # one shared set of parameters
    for gp, ga in zip(g_p, g_a):
        torch.testing.assert_close(ga, gp, rtol=1e-12, atol=1e-12)


def conv_bn_block(c=3):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh(),
                         nn.Conv2d(c, c, 3, padding=1))


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_batchnorm_statistics_and_modes_end_as_after_a_plain_forward(scheme):
    torch.manual_seed(4)
    fs = [conv_bn_block() for _ in range(32)]
    fs_copy = [conv_bn_block() for _ in range(32)]
    for a, b in zip(fs, fs_copy):
        b.load_state_dict(a.state_dict())
    plain = ResidualStack(fs_copy, scheme=scheme)
    adj = ResidualStack(fs, scheme=scheme, adjoint=True)
    x = torch.randn(6, 3, 8, 8)
    _, g_p = grads(plain, x)
    _, g_a = grads(adj, x)
    for a, b in zip(fs, fs_copy):
        assert a.training and b.training and a[1].training
        for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
            torch.testing.assert_close(ba, bb, msg=f"buffer {name} differs")
    assert rel_error(g_p, g_a) < 0.05   # train-mode BN, approximate reversal, N = 32
    adj.eval()
    _, g_eval = grads(adj, x)
    assert not any(f.training for f in fs)


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_non_finite_reconstruction_raises(scheme):
    class Blowup(nn.Module):
        def forward(self, x):
            return -1e10 * x ** 2

    stack = ResidualStack([Blowup(), Blowup()], scheme=scheme, adjoint=True)
    x = torch.ones(2, 1, dtype=torch.float32, requires_grad=True)  # overflows on reversal
    out = stack(x)
    assert torch.isfinite(out).all()
    with pytest.raises(ReconstructionError, match="not finite"):
        out.sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(5)
    fs = [Coupling().double() for _ in range(8)]
    x = torch.randn(3, 4, dtype=torch.float64)
    for scheme in ("euler", "heun"):
        _, g_cpu = grads(ResidualStack(fs, scheme=scheme, adjoint=True), x)
        fs_gpu = [copy.deepcopy(f).cuda() for f in fs]
        _, g_gpu = grads(ResidualStack(fs_gpu, scheme=scheme, adjoint=True), x.cuda())
        for a, b in zip(g_cpu, g_gpu):
            torch.testing.assert_close(b.cpu(), a)


class Scaled(nn.Module):
    def __init__(self, f, eps):
        super().__init__()
        self.f, self.eps = f, eps

    def forward(self, x):
        return self.eps * self.f(x)


def test_reversal_error_matches_the_taylor_expansion():
    """One step of size eps forward and back: Euler leaves -eps^2 f'f, Heun
    eps^2/4 (b' - a')(a - b), both up to O(eps^3) (chapter 4, eq. reversal-error)."""
    from resode_tut import TanhLayer, reverse_step
    torch.manual_seed(6)
    a, b = TanhLayer(3).double(), TanhLayer(3).double()
    x = torch.randn(3, dtype=torch.float64)
    jac = lambda f: torch.func.jacrev(f)(x)
    eps = 1e-3
    predicted = {"euler": -eps ** 2 * jac(a) @ a(x),
                 "heun": eps ** 2 / 4 * (jac(b) - jac(a)) @ (a(x) - b(x))}
    for scheme, functions in (("euler", [Scaled(a, eps)]),
                              ("heun", [Scaled(a, eps), Scaled(b, eps)])):
        stack = ResidualStack(functions, scheme=scheme)   # h = 1: the step is eps
        with torch.no_grad():
            back = reverse_step(stack, 0, stack(x[None]))[0]
        err = back - x
        assert (err - predicted[scheme]).norm() < 1e-2 * predicted[scheme].norm()


def textbook_adjoint(stack, x, w):
    """The recursion as written in chapter 3, with autograd on the whole step:
    p_n = VJP of x_{n+1} = Phi_n(x_n) at the reconstructed x~_n (buffers kept)."""
    from resode_tut import reverse_step
    params = [q for q in stack.parameters() if q.requires_grad]
    grads = [torch.zeros_like(q) for q in params]
    with torch.no_grad():
        for n in range(stack.num_steps):
            x = stack.step(n, x)
    p, x_rec = w, x
    for n in reversed(range(stack.num_steps)):
        with torch.no_grad():
            x_rec = reverse_step(stack, n, x_rec)
        saved = [b.clone() for b in stack.buffers()]
        x_req = x_rec.detach().requires_grad_(True)
        vjp = torch.autograd.grad(stack.step(n, x_req), [x_req, *params], p, allow_unused=True)
        with torch.no_grad():
            for b, v in zip(stack.buffers(), saved):
                b.copy_(v)
        p = vjp[0]
        grads = [a if g is None else a + g for a, g in zip(grads, vjp[1:])]
    return [p] + grads


@pytest.mark.parametrize("scheme", ["euler", "heun"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["tanh", "tied", "batchnorm"])
def test_gradients_equal_the_textbook_recursion_bitwise(scheme, dtype, case):
    """The VJP is taken of the residual part alone, the plan built once: the numbers
    are still those of the recursion on whole steps, to the last bit."""
    torch.manual_seed(7)
    if case == "tanh":
        stack = tanh_stack(23, "smooth", seed=1, dim=5, scheme=scheme, dtype=dtype)
        x = torch.randn(6, 5, dtype=dtype)
    elif case == "tied":
        f = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 5)).to(dtype)
        stack = ResidualStack([f] * 13, scheme=scheme)
        x = torch.randn(6, 5, dtype=dtype)
    else:
        stack = ResidualStack([conv_bn_block().to(dtype) for _ in range(11)], scheme=scheme)
        x = torch.randn(4, 3, 6, 6, dtype=dtype)
    w = torch.randn_like(x)
    expected = textbook_adjoint(stack, x, w)
    stack.adjoint = True
    xr = x.clone().requires_grad_(True)
    params = [q for q in stack.parameters() if q.requires_grad]
    got = torch.autograd.grad((stack(xr) * w).sum(), [xr, *params])
    for a, b in zip(got, expected):
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("scheme", ["euler", "heun"])
@pytest.mark.parametrize("entry", ["_run_backward", "_apply_c"])
def test_the_public_autograd_fallback_gives_the_same_bits(scheme, entry, monkeypatch):
    """The backward calls the autograd engine's entry point directly where torch has
    it, torch.autograd.grad otherwise; the forward calls autograd.Function's C entry
    point, Function.apply otherwise: both give the same outputs and gradients."""
    import resode_tut.adjoint as adjoint
    stack = tanh_stack(9, "iid", seed=3, dim=4, scheme=scheme)
    stack.adjoint = True
    x = torch.randn(5, 4, dtype=torch.float64)
    out, direct = grads(stack, x)
    assert getattr(adjoint, entry) is not None
    monkeypatch.setattr(adjoint, entry, None)
    out_fallback, fallback = grads(stack, x)
    assert torch.equal(out, out_fallback)
    assert all(torch.equal(a, b) for a, b in zip(direct, fallback))


class Drift(nn.Module):
    """f_n(x) = b_n: a residual function that ignores its input (a field of time alone)."""

    def __init__(self, d):
        super().__init__()
        self.b = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return self.b.expand_as(x)


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_residual_functions_that_ignore_their_input_get_backprops_gradients(scheme):
    """The VJP of such an f_n with respect to x is None (not reached), not zero: the
    adjoint keeps p_n = p_{n+1} there (it once failed on None).  Both kinds of layer
    invert exactly, so the gradients are backprop's to rounding."""
    torch.manual_seed(0)
    functions = [Drift(4) if n % 2 else Coupling(d=2).double() for n in range(8)]
    plain, adjoint = twin(functions, scheme=scheme)
    x = torch.randn(5, 4, dtype=torch.float64)
    for a, b in zip(grads(plain, x)[1], grads(adjoint, x)[1]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    only_drift = ResidualStack([Drift(4) for _ in range(5)], scheme=scheme, adjoint=True)
    g = grads(only_drift, x)[1]
    assert torch.equal(g[0], torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(5, 4))


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_parameters_frozen_and_unfrozen_between_backwards(scheme):
    """The backward's per-step plan is kept between backwards: it must follow which
    parameters require grad (a frozen layer gets no gradient, the others backprop's)."""
    functions = list(tanh_stack(10, "smooth", seed=2, dim=3, scheme=scheme).functions)
    plain, adjoint = twin(functions, scheme=scheme)
    x = torch.randn(4, 3, dtype=torch.float64)
    for frozen in ([], [0, 3, 9], [], list(range(1, 10))):
        for n, f in enumerate(functions):
            f.requires_grad_(n not in frozen)
        got = {}
        for stack in (plain, adjoint):
            stack.zero_grad(set_to_none=True)
            stack(x.clone().requires_grad_(True)).pow(2).sum().backward()
            got[stack] = [[p.grad for p in f.parameters()] for f in functions]
        for n in range(10):
            for a, b in zip(got[adjoint][n], got[plain][n]):
                if n in frozen:
                    assert a is None and b is None
                else:
                    assert ((a - b).norm() / b.norm()) < 0.05


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_a_deep_copy_after_a_backward_has_gradients_of_its_own(scheme):
    """The adjoint keeps per-stack caches of parameters; a copy made after a backward
    must not use the original's (found by chapter 6's copies of trained networks)."""
    import pickle
    stack = tanh_stack(6, "iid", seed=4, dim=3, scheme=scheme)
    stack.adjoint = True
    x = torch.randn(4, 3, dtype=torch.float64)
    grads(stack, x)                                  # fills the caches
    for twin in (copy.deepcopy(stack), pickle.loads(pickle.dumps(stack))):
        with torch.no_grad():
            for p in twin.parameters():
                p.mul_(0.5)
        got = grads(twin, x)[1]          # before any module is built or registered
        plain = ResidualStack(list(twin.functions), scheme=scheme)
        for a, b in zip(got, grads(plain, x)[1]):
            assert ((a - b).norm() / b.norm()) < 0.5
        assert all(p.grad is None for p in stack.parameters())   # the original untouched


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_evaluations_per_step_in_backward(scheme):
    """Euler: two evaluations of f_n per step in backward (reconstruction, re-evaluation).
    Heun: four per step, less one after the first: f_{n+1}(x~_{n+1}) is reused from the
    previous step's re-evaluation (bitwise the same value: the textbook test above)."""
    calls = []

    class Counted(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n, self.lin = n, nn.Linear(3, 3).double()

        def forward(self, x):
            calls.append(self.n)
            return torch.tanh(self.lin(x))

    M = 7
    stack = ResidualStack([Counted(n) for n in range(M)], scheme=scheme, adjoint=True)
    out = stack(torch.randn(4, 3, dtype=torch.float64, requires_grad=True))
    calls.clear()
    out.sum().backward()
    steps = stack.num_steps
    assert len(calls) == (2 * steps if scheme == "euler" else 4 + 3 * (steps - 1))
    assert sorted(set(calls)) == list(range(M))
