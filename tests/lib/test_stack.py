"""ResidualStack against independent computations: hand-written recursions,
matrix powers and the matrix exponential (closed forms for linear layers)."""
import pytest
import torch
from helpers import Linear
from torch import nn

from resode_tut import ResidualStack, loglog_slope

pytestmark = pytest.mark.usefixtures("float64")


def random_mlps(M, d=3, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, d)) for _ in range(M)]


@pytest.mark.parametrize("M", [1, 2, 7])
def test_euler_forward_matches_handwritten_recursion(M):
    fs = random_mlps(M)
    x = torch.randn(4, 3)
    expected = x.clone()
    for f in fs:
        expected = expected + f(expected) / M
    stack = ResidualStack(fs)
    torch.testing.assert_close(stack(x), expected)
    traj = stack.trajectory(x)
    assert traj.shape == (M + 1, 4, 3)
    torch.testing.assert_close(traj[-1], expected)
    torch.testing.assert_close(stack.times, torch.arange(M + 1) / M)


@pytest.mark.parametrize("M", [2, 3, 9])
def test_heun_forward_matches_handwritten_recursion(M):
    fs = random_mlps(M, seed=1)
    x = torch.randn(4, 3)
    h = 1 / (M - 1)
    expected = x.clone()
    for n in range(M - 1):
        k1 = fs[n](expected)
        k2 = fs[n + 1](expected + h * k1)
        expected = expected + h / 2 * (k1 + k2)
    stack = ResidualStack(fs, scheme="heun")
    torch.testing.assert_close(stack(x), expected)
    assert stack.num_steps == M - 1 and stack.times[-1] == 1.0
    torch.testing.assert_close(stack.function_times, torch.arange(M) / (M - 1))


def test_tied_linear_euler_is_a_matrix_power():
    A = torch.randn(3, 3) / 2
    M = 10
    f = Linear(A)
    stack = ResidualStack([f] * M)
    x = torch.randn(5, 3)
    closed = x @ torch.linalg.matrix_power(torch.eye(3) + A / M, M).T
    torch.testing.assert_close(stack(x), closed)
    assert len(list(stack.parameters())) == 1  # tied weights: one shared parameter


def test_linear_stacks_converge_to_matrix_exponential_at_scheme_order():
    """Tied linear layers: Euler and Heun tend to exp(A) at rates 1/N and 1/N^2."""
    A = torch.tensor([[0.0, -2.0], [2.0, -0.3]])
    x = torch.randn(6, 2)
    exact = x @ torch.linalg.matrix_exp(A).T
    depths = [8, 16, 32, 64, 128]
    errs = {s: [] for s in ("euler", "heun")}
    for N in depths:
        for scheme in errs:
            stack = ResidualStack([Linear(A)] * N, scheme=scheme)
            errs[scheme].append((stack(x) - exact).norm().item())
    assert loglog_slope(depths, errs["euler"]) == pytest.approx(-1, abs=0.1)
    assert loglog_slope(depths, errs["heun"]) == pytest.approx(-2, abs=0.1)


def test_gradients_reach_every_parameter_including_tied():
    fs = random_mlps(3)
    shared = fs[0]
    stack = ResidualStack([shared, fs[1], shared, fs[2]])
    x = torch.randn(2, 3, requires_grad=True)
    stack(x).square().sum().backward()
    for p in stack.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # autograd accumulates the shared module's gradient over its two layers:
    # compare with a finite difference on one shared weight.
    w = shared[0].weight
    g = w.grad[0, 0].item()
    eps = 1e-6
    with torch.no_grad():
        w[0, 0] += eps
        up = stack(x).square().sum().item()
        w[0, 0] -= 2 * eps
        down = stack(x).square().sum().item()
        w[0, 0] += eps
    assert g == pytest.approx((up - down) / (2 * eps), rel=1e-5)


@pytest.mark.parametrize("bad, message", [
    ([], "at least 1"),
    ([nn.Identity(), "relu"], "functions\\[1\\] is a str"),
    (nn.Linear(2, 2), "single Linear"),
    (5, "sequence of torch.nn.Module"),
])
def test_bad_functions_are_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        ResidualStack(bad)


def test_heun_needs_two_functions_and_scheme_is_checked():
    with pytest.raises(ValueError, match="heun.*at least 2"):
        ResidualStack([nn.Identity()], scheme="heun")
    with pytest.raises(ValueError, match="unknown scheme 'rk4'"):
        ResidualStack([nn.Identity()], scheme="rk4")


def test_shape_changing_function_is_named():
    stack = ResidualStack([nn.Identity(), nn.Linear(3, 2)])
    match = "residual function 1 \\(Linear\\).*\\(4, 3\\) to \\(4, 2\\)"
    with pytest.raises(ValueError, match=match):
        stack(torch.randn(4, 3))


def test_non_finite_input_is_named():
    stack = ResidualStack([nn.Identity()])
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="NaN or infinite"):
            stack(torch.tensor([[1.0, 0.0], [bad, 2.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64, torch.int64])
def test_all_finite_agrees_with_torch_isfinite(dtype):
    """The stack's and the adjoint's finiteness check, against torch.isfinite: every
    entry position, NaN and both infinities, and the largest finite values (whose sum
    would overflow: the check must not call them infinite)."""
    from resode_tut._arith import all_finite
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, generator=gen) * 100).to(dtype)
    assert all_finite(x) and all_finite(x[:0])
    if dtype.is_floating_point:
        huge = torch.full((4096,), torch.finfo(dtype).max, dtype=dtype)
        assert all_finite(huge) and all_finite(-huge)
        for i in range(x.numel()):
            for bad in (float("nan"), float("inf"), -float("inf")):
                y = x.clone()
                y.view(-1)[i] = bad
                assert all_finite(y) == bool(torch.isfinite(y).all()) is False


def test_adjoint_must_be_a_bool():
    for value in ("no", 1, None):
        with pytest.raises(TypeError, match="adjoint must be True or False"):
            ResidualStack([nn.Identity()], adjoint=value)
    stack = ResidualStack([nn.Identity()])
    with pytest.raises(TypeError, match="adjoint must be True or False"):
        stack.adjoint = "yes"
    stack.adjoint = True
    assert stack.adjoint is True


class ReturnsKept(nn.Module):
    """A residual function whose output is a tensor it keeps, its input, or a view of
    its input: the step's in-place arithmetic must touch none of them."""

    def __init__(self, kind, shape):
        super().__init__()
        self.kind = kind
        self.register_buffer("kept", torch.full(shape, 0.5, dtype=torch.float64))

    def forward(self, x):
        if self.kind == "kept":
            return self.kept
        return x if self.kind == "input" else x.view(x.shape)


@pytest.mark.parametrize("scheme", ["euler", "heun"])
@pytest.mark.parametrize("kind", ["kept", "input", "view"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_in_place_arithmetic_never_writes_into_what_a_function_returns(scheme, kind, adjoint):
    x = torch.randn(3, 4, dtype=torch.float64)
    x_before = x.clone()
    functions = [ReturnsKept(kind, (3, 4)) for _ in range(4)]
    stack = ResidualStack(functions, scheme=scheme, adjoint=adjoint)
    out = stack(x)
    expected = x_before.clone()      # the recursion written out of place
    for n in range(stack.num_steps):
        k1 = functions[n](expected)
        if scheme == "euler":
            expected = expected + stack.h * k1
        else:
            k2 = functions[n + 1](expected + stack.h * k1)
            expected = expected + stack.h / 2 * (k1 + k2)
    assert torch.equal(out, expected)
    assert torch.equal(x, x_before)
    assert all(torch.equal(f.kept, torch.full((3, 4), 0.5, dtype=torch.float64))
               for f in functions)


def test_in_place_arithmetic_keeps_the_promoted_dtype():
    """Under autocast a layer returns bfloat16 for a float32 state: the step must stay
    float32, as x + h k does, not take the product's dtype."""
    torch.manual_seed(0)
    stack = ResidualStack([nn.Linear(8, 8, dtype=torch.float32) for _ in range(3)])
    x = torch.randn(4, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stack(x)
        k = stack.functions[0](x)
    assert k.dtype == torch.bfloat16 and out.dtype == torch.float32
