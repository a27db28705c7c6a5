"""Chapter 1's experiments: the mean-field plateau and the distance sweep."""
import pytest
import torch

from resode_tut import (
    tanh_stack,
)
from resode_tut.experiments.ch01 import iid_plateau, tanh_mean_fields
from resode_tut.experiments.discretisation import distance_sweep
from resode_tut.residual_functions import tanh_mean_weights

pytestmark = pytest.mark.usefixtures("float64")


def test_quadrature_fields_match_monte_carlo_over_layers():
    seed, K = 4, 20000
    W_bar, b_bar, sW, sb = tanh_mean_weights(seed, dim=2, rel_noise=1.0)
    F, F_tilde = tanh_mean_fields(W_bar, b_bar, sW, sb)
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    layers = list(tanh_stack(K + 1, "iid", seed=seed).functions)   # K + 1 i.i.d. layers
    with torch.no_grad():
        outs = torch.stack([f(x) for f in layers])                   # (K + 1, 2, 2)
        torch.testing.assert_close(F(0, x), outs.mean(0), atol=0.02, rtol=0)
        # interpolated weights between consecutive (independent) layers at random s
        gen = torch.Generator().manual_seed(0)
        s = torch.rand(K, generator=gen)
        W = torch.stack([f.linear.weight for f in layers])
        b = torch.stack([f.linear.bias for f in layers])
        Ws = (1 - s)[:, None, None] * W[:-1] + s[:, None, None] * W[1:]
        bs = (1 - s)[:, None] * b[:-1] + s[:, None] * b[1:]
        interp = torch.tanh(torch.einsum("kij,bj->kbi", Ws, x) + bs[:, None, :])
        torch.testing.assert_close(F_tilde(0, x), interp.mean(0), atol=0.02, rtol=0)
    assert (F(0, x) - F_tilde(0, x)).abs().max() > 0.05   # the two limits differ


def test_plateau_is_zero_without_noise_and_positive_with_it():
    x0 = torch.randn(4, 2)
    assert iid_plateau(0, x0, rel_noise=0.0).max() < 1e-8
    assert iid_plateau(0, x0, rel_noise=1.0).min() > 0.0


def test_sweep_separates_smooth_from_iid():
    sweep = distance_sweep([16, 64], seeds=[0, 1], num_inputs=8, progress=False)
    assert sweep.distance["smooth"].shape == (2, 2)
    assert sweep.slope("smooth") < -0.9
    assert sweep.mean("iid")[-1] > 0.5 * sweep.mean("iid")[0]
    assert sweep.bound_violations == 0
