"""The ODE-regime checker on models whose answer is known."""
import pytest
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


def test_bad_labels_and_an_empty_solver_list_are_refused():
    field = LinearField(torch.tensor([[-1.0, 0.5], [0.0, -0.5]]))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    readout = lambda z: torch.stack([-z[:, 0], z[:, 0]], 1)
    with pytest.raises(ValueError, match=r"labels of shape \(16, 1\).*\(16,\)"):
        ode_regime(field, x, y[:, None], readout=readout)     # would broadcast to (16, 16)
    with pytest.raises(ValueError, match="integer class indices"):
        ode_regime(field, x, y.float(), readout=readout)
    with pytest.raises(ValueError, match="solvers is empty"):
        ode_regime(field, x, y, solvers=[], readout=readout)
