"""The ODE-regime checker on models whose answer is known."""
import torch
from helpers import LinearField

from resode_tut import ode_regime


def test_plain_field_with_readout_and_linear_model_is_an_ode():
    A = torch.tensor([[-1.0, 0.5], [0.0, -0.5]])
    field = LinearField(A)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    readout = lambda z: torch.stack([-z[:, 0], z[:, 0]], 1)
    report = ode_regime(field, x, y, readout=readout)
    assert report.in_ode_regime and report.own is None
