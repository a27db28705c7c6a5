"""The adjoint's self-check tracks its gradient error whatever the input's scale or
offset: ||x~_0 - x_0|| / ||x_N - x_0|| (the reconstruction's miss relative to how far the
stack moved its input), measured here against the true gradient error (backprop) over
varied stacks and inputs, beside the old ||x~_0 - x_0|| / ||x_0||."""
import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from resode_tut import ReconstructionWarning, ResidualStack, reconstruct, tanh_stack


def _mlp_stack(depth, dim, scale, seed, scheme="euler"):
    torch.manual_seed(seed)
    fs = [nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, dim)).double()
          for _ in range(depth)]
    with torch.no_grad():
        for f in fs:
            f[2].weight.mul_(scale)
    return ResidualStack(fs, scheme=scheme)


def _errors(stack, x):
    """(true relative gradient error, new self-check, old self-check)."""
    g = {}
    for adjoint in (False, True):
        stack.adjoint = adjoint
        xx = x.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReconstructionWarning)
            stack(xx).sum().backward()
        g[adjoint] = torch.cat([xx.grad.flatten()] + [p.grad.flatten() for p in stack.parameters()])
        stack.zero_grad(set_to_none=True)
    with torch.no_grad():
        x_rec = reconstruct(stack, stack(x))[0]
    old = ((x_rec - x).norm() / x.norm()).item()
    true = ((g[True] - g[False]).norm() / g[False].norm()).item()
    return true, stack.last_reconstruction_error, old


def test_a_feature_held_at_100_no_longer_hides_a_wrong_gradient():
    """The case that the old check missed: gradients 76% off, old check 0.022."""
    stack = _mlp_stack(2, 4, 10.0, seed=1)
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 100.0
    true, new, old = _errors(stack, x)
    assert true > 0.5 and old < 0.1 < new
    stack = _mlp_stack(2, 4, 10.0, seed=1)          # a fresh stack: it warns once
    stack.adjoint = True
    with pytest.warns(ReconstructionWarning):
        stack(x.clone().requires_grad_(True)).sum().backward()


def test_the_self_check_tracks_the_gradient_error_better_than_the_old_one():
    rows = []
    for scheme, kind, depth, inp in itertools.product(("euler", "heun"), ("tanh", "mlp"),
                                                      (4, 16, 64),
                                                      ("normal", "x10", "const100", "offset50")):
        seed = depth + len(inp)
        if kind == "tanh":
            stack = tanh_stack(depth, "iid", seed=seed, dim=4, scheme=scheme, rel_noise=4.0)
        else:
            stack = _mlp_stack(depth, 4, 3.0, seed, scheme)
        x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        x = {"normal": x, "x10": 10 * x, "offset50": x + 50}.get(inp, x)
        if inp == "const100":
            x[:, 0] = 100.0
        rows.append(_errors(stack, x))
    true, new, old = (np.log(np.array(v)) for v in zip(*rows))
    rho_new, rho_old = spearmanr(new, true).correlation, spearmanr(old, true).correlation
    assert rho_new >= 0.85 and rho_new > rho_old + 0.05, (rho_new, rho_old)
    ratio = np.exp(true - new)                   # gradient error / self-check
    assert np.percentile(ratio, 90) < 3 and np.percentile(ratio, 10) > 0.01
