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


def _linear_case(n=32, seed=2):
    field = LinearField(torch.tensor([[-1.0, 0.5], [0.0, -0.5]]))
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    y = (x[:, 0] > 0).long()
    return field, x, y, lambda z: torch.stack([-z[:, 0], z[:, 0]], 1)


@pytest.mark.parametrize("gap_limit", [float("nan"), -1.0, "3"])
def test_a_gap_limit_that_is_not_a_gap_is_refused(gap_limit):
    field, x, y, readout = _linear_case()
    with pytest.raises(ValueError, match="gap_limit"):
        ode_regime(field, x, y, gap_limit=gap_limit, readout=readout)


def test_a_model_at_chance_is_not_called_an_ode():
    """Flat under every solver because it learned nothing: the verdict says so."""
    field, x, _, _ = _linear_case()
    y = torch.arange(len(x)) % 2                             # balanced, unrelated to x
    constant = lambda z: torch.stack([torch.ones(len(z)), torch.zeros(len(z))], 1)
    report = ode_regime(field, x, y, readout=constant)       # always class 0: 50%
    assert report.max_gap == 0 and report.chance == 0.5
    assert not report.learned and not report.in_ode_regime
    assert "NOT determined" in str(report)


def test_bad_inputs_solvers_and_labels_are_named():
    field, x, y, readout = _linear_case()
    from resode_tut import Solver
    with pytest.raises(TypeError, match="not a Solver"):
        ode_regime(field, x, y, solvers=["euler"], readout=readout)
    with pytest.raises(TypeError, match="torch.as_tensor"):
        ode_regime(field, x, y.tolist(), readout=readout)
    with pytest.raises(TypeError, match="torch.as_tensor"):
        ode_regime(field, x, y.numpy(), readout=readout)
    with pytest.raises(ValueError, match="x is empty"):
        ode_regime(field, x[:0], y[:0], readout=readout)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ode_regime(field, bad, y, readout=readout)
    with pytest.raises(ValueError, match=r"labels from 0 to 2 for a model with 2 classes"):
        ode_regime(field, x, torch.where(y == 1, 2, 0), readout=readout)
    with pytest.raises(ValueError, match="only one distinct solver"):
        ode_regime(field, x, y, solvers=[Solver("dopri5", tol=1e-7)], readout=readout)


def test_a_field_that_blows_up_is_a_named_error_under_every_solver():
    from resode_tut import Solver
    _, x, y, readout = _linear_case()
    blow = lambda t, z: z ** 3 * 50
    for solvers in ([Solver("euler", 1 / 8)], [Solver("dopri5", tol=1e-3)]):
        with pytest.raises(FloatingPointError):
            ode_regime(blow, 10 * x, y, solvers=solvers, readout=readout)
