"""Chapter 2's linear ResNets and gradient descent, against closed forms and autograd."""
import math

import pytest
import torch

from resode_tut import loglog_slope, ode_distance
from resode_tut.experiments.ch02 import LinearResNet, paper_target, smoothness, train_gd

pytestmark = pytest.mark.usefixtures("float64")


def product(A):
    N, d, _ = A.shape
    P = torch.eye(d)
    for A_n in A:
        P = (torch.eye(d) + A_n / N) @ P
    return P


def test_matrix_is_the_ordered_product():
    A = torch.randn(7, 3, 3)
    torch.testing.assert_close(LinearResNet(A).matrix(), product(A))


def test_layer_gradient_formula_against_autograd_and_finite_differences():
    N, d = 6, 2
    A = 0.5 * torch.randn(N, d, d)
    B = torch.randn(d, d)
    model = LinearResNet(A)
    loss = (model.matrix() - B).square().mean()
    auto, = torch.autograd.grad(loss, model.A)
    # closed form: grad_{A_n} = (1/N) L_n^T G R_n^T with G = dloss/dP
    G = 2 * (product(A) - B) / B.numel()
    for n in range(N):
        L = product_slice(A, n + 1, N)
        R = product_slice(A, 0, n)
        torch.testing.assert_close(auto[n], L.T @ G @ R.T / N)
    # finite differences on a few entries
    for n, i, j in [(0, 0, 1), (3, 1, 1), (5, 1, 0)]:
        eps = 1e-6
        Ap, Am = A.clone(), A.clone()
        Ap[n, i, j] += eps
        Am[n, i, j] -= eps
        fd = ((product(Ap) - B).square().mean() - (product(Am) - B).square().mean()) / (2 * eps)
        assert auto[n, i, j].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-10)


def product_slice(A, start, stop):
    N, d, _ = A.shape
    P = torch.eye(d)
    for n in range(start, stop):
        P = (torch.eye(d) + A[n] / N) @ P
    return P


def test_commuting_weights_tend_to_exp_of_integral_at_rate_one_over_n():
    C = torch.tensor([[0.3, -1.0], [1.0, 0.3]])
    a = lambda t: 1.0 + math.sin(2 * math.pi * t) + t
    integral = 1.0 + 0.0 + 0.5
    exact = torch.linalg.matrix_exp(integral * C)
    depths = [16, 32, 64, 128, 256]
    errs = []
    for N in depths:
        A = torch.stack([a(n / N) * C for n in range(N)])
        errs.append((LinearResNet(A).matrix() - exact).norm().item())
    assert loglog_slope(depths, errs) == pytest.approx(-1.0, abs=0.1)


def test_smoothness_of_a_linear_path_and_of_noise():
    C = torch.tensor([[1.0, 2.0], [0.0, -2.0]])
    for N in (10, 100):
        A = torch.stack([n / N * C for n in range(N)])
        assert smoothness(A) == pytest.approx(C.norm().item())
    noise = [smoothness(torch.randn(N, 2, 2, generator=torch.Generator().manual_seed(0)))
             for N in (50, 500)]
    assert noise[1] > 5 * noise[0]


def test_gd_reaches_the_target_and_the_trained_net_is_near_its_ode():
    B = paper_target(2, seed=3)
    I = torch.eye(2)
    model = LinearResNet(torch.zeros(50, 2, 2))
    hist = train_gd(model, I, B.T.clone(), record=(5,))
    assert hist.converged and hist.loss[-1] < 1e-5 and hist.loss[0] > 0.1
    torch.testing.assert_close(model.matrix(), B, atol=1e-2, rtol=0)
    assert ode_distance(model.to_stack(), I).max() < 0.01
    assert hist.snapshots[5].shape == (50, 2, 2)


def test_bad_inputs():
    model = LinearResNet(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        train_gd(model, torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        train_gd(model, torch.full((3, 2), float("nan")), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="\\(N, d, d\\)"):
        LinearResNet(torch.zeros(4, 2, 3))
    with pytest.raises(FloatingPointError, match="lower lr_scale"):
        train_gd(LinearResNet(torch.zeros(4, 2, 2)), torch.eye(2), 50 * torch.eye(2),
                 lr_scale=100.0, max_iter=200)
