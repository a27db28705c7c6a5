"""The memory-free discrete adjoint against backpropagation (autograd)."""
import pytest
import torch
from torch import nn

from resode_tut import ResidualStack, loglog_slope, tanh_stack
from resode_tut.adjoint import ReconstructionError


class Coupling(nn.Module):
    """f(x) = (0, g(x_a)): the Euler step only changes x_b, from x_a alone, so the
    reversal x_n = x_{n+1} - h f(x_{n+1}) is exact."""

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
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    g = [x.grad.clone()] + [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    return out.detach(), g


def twin(functions, **kw):
    return ResidualStack(functions, **kw), ResidualStack(functions, adjoint=True, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_identical_and_exact_case_matches_backprop(dtype):
    torch.manual_seed(0)
    fs = [Coupling().to(dtype) for _ in range(12)]
    plain, adj = twin(fs)
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


def test_gradient_error_falls_like_one_over_depth():
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    depths, errs = [16, 64, 256], []
    for N in depths:
        plain = tanh_stack(N, "smooth", seed=2)
        adj = ResidualStack(list(plain.functions), adjoint=True)
        errs.append(rel_error(grads(plain, x)[1], grads(adj, x)[1]))
    assert errs[-1] < 1e-2
    assert loglog_slope(depths, errs) <= -0.9


def test_tied_weights_receive_the_sum_over_layers():
    torch.manual_seed(3)
    f = Coupling().double()
    plain, adj = twin([f] * 10)
    x = torch.randn(4, 4, dtype=torch.float64)
    _, g_p = grads(plain, x)
    _, g_a = grads(adj, x)
    assert len(g_a) == 1 + len(list(f.parameters()))   # one shared set of parameters
    for gp, ga in zip(g_p, g_a):
        torch.testing.assert_close(ga, gp, rtol=1e-12, atol=1e-12)


def conv_bn_block(c=3):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh(),
                         nn.Conv2d(c, c, 3, padding=1))


def test_batchnorm_statistics_and_modes_end_as_after_a_plain_forward():
    torch.manual_seed(4)
    fs = [conv_bn_block() for _ in range(32)]
    fs_copy = [conv_bn_block() for _ in range(32)]
    for a, b in zip(fs, fs_copy):
        b.load_state_dict(a.state_dict())
    plain = ResidualStack(fs_copy)
    adj = ResidualStack(fs, adjoint=True)
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


def test_non_finite_reconstruction_raises():
    class Blowup(nn.Module):
        def forward(self, x):
            return -1e20 * x ** 2

    stack = ResidualStack([Blowup()], adjoint=True)
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
    _, g_cpu = grads(ResidualStack(fs, adjoint=True), x)
    fs_gpu = [f.cuda() for f in fs]
    _, g_gpu = grads(ResidualStack(fs_gpu, adjoint=True), x.cuda())
    for a, b in zip(g_cpu, g_gpu):
        torch.testing.assert_close(b.cpu(), a)
