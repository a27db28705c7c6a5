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


def test_the_time_grid_of_a_plain_field_is_on_the_inputs_device(monkeypatch):
    """Checked without a GPU: inputs on the ``meta`` device, odeint replaced by a spy."""
    import sys
    module = sys.modules["resode_tut.ode_regime"]   # the package's name is the function

    seen = []

    class Stop(Exception):
        pass

    def spy(field, x, t, **kwargs):
        seen.append((x.device, t.device, t.dtype))
        raise Stop

    monkeypatch.setattr(module, "odeint", spy)
    x = torch.zeros(4, 2, device="meta", dtype=torch.float64)
    with pytest.raises(Stop):
        module.ode_regime(lambda t, z: z, x, torch.zeros(4, dtype=torch.int64, device="meta"),
                          readout=lambda z: z)
    assert seen == [(torch.device("meta"), torch.device("meta"), torch.float64)]
