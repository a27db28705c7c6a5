"""What a user meets when training Neural ODEs: named errors before any work, any field
counted, every device the state's.  Each case failed (or ran silently) before its fix."""
import math

import pytest
import torch
from torch import nn

import resode_tut as rt
from resode_tut import ensemble
from resode_tut.adaptation import initial_step_size


def _model(solver=None, width=8):
    torch.manual_seed(0)
    return rt.NeuralODE(rt.SphereField(width), (2,), 2, solver or rt.Solver("euler", 1 / 4))


def _data(n=64):
    return rt.datasets.concentric_spheres(n, 2, seed=0)


# -- counts and data: train_node and the ensemble agree --------------------------------------

BAD_COUNTS = [
    (dict(iterations=-5), "iterations must be an integer >= 1"),
    (dict(iterations=0), "iterations must be an integer >= 1"),
    (dict(iterations=2.5), "iterations must be an integer >= 1"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=-1), "batch_size must be an integer >= 1"),
    (dict(log_every=0), "log_every must be an integer >= 1"),
]


def _bad_data():
    x, y = _data()
    return [
        ((x, torch.cat([y, y[:3]])), "labels of shape \\(67,\\) for 64 inputs"),
        ((x, y[:10]), "labels of shape \\(10,\\) for 64 inputs"),
        ((x, y.view(-1, 1)), "labels of shape \\(64, 1\\)"),
        ((x[:0], y[:0]), "x_train is empty"),
        ((x, y.float()), "labels of dtype torch.float32"),
        ((x, y + 5), "labels from 5 to 6 for a model with 2 classes"),
        ((x.tolist(), y), "must be tensors"),
    ]


@pytest.mark.parametrize("kwargs, message", BAD_COUNTS)
def test_train_node_refuses_bad_counts(kwargs, message):
    args = dict(iterations=3, batch_size=8, log_every=1) | kwargs
    with pytest.raises(ValueError, match=message):
        rt.train_node(_model(), _data(), args.pop("iterations"), **args)


@pytest.mark.parametrize("kwargs, message", BAD_COUNTS)
def test_the_ensemble_refuses_bad_counts(kwargs, message):
    args = dict(iterations=3, batch_size=8, log_every=1) | kwargs
    with pytest.raises(ValueError, match=message):
        rt.train_euler_ensemble([_model(), _model()], _data(), 1 / 4, args.pop("iterations"),
                                **args)


@pytest.mark.parametrize("case", range(7))
def test_train_node_and_the_ensemble_refuse_the_same_bad_data(case):
    data, message = _bad_data()[case]
    error = TypeError if "tensors" in message else ValueError
    with pytest.raises(error, match=message):
        rt.train_node(_model(), data, 3, batch_size=8)
    with pytest.raises(error, match=message):
        rt.train_euler_ensemble([_model(), _model()], data, 1 / 4, 3, batch_size=8)


def test_an_untrained_model_is_never_returned_silently():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError):
        rt.train_node(model, _data(), -5)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


# -- any field is counted --------------------------------------------------------------------

class PlainField(nn.Module):
    """A user's field: no ``nfe`` attribute; counts its calls in a list the test owns."""

    def __init__(self, calls):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.calls = calls

    def forward(self, t, z):
        self.calls.append(1)
        return torch.tanh(self.lin(z))


def test_a_users_own_field_trains_and_its_evaluations_are_counted():
    calls = []
    torch.manual_seed(0)
    model = rt.NeuralODE(PlainField(calls), (2,), 2, rt.Solver("euler", 1 / 4))
    hist = rt.train_node(model, _data(), 6, batch_size=8, log_every=3)
    # Euler at 1/4: 4 forward evaluations an iteration (autograd replays none)
    assert len(calls) == 6 * 4 == model.nfe
    assert hist.nfe == [4.0, 4.0]
    calls.clear()
    rt.ode_regime(model, *_data()[:2], solvers=[rt.Solver("euler", 1 / 4),
                                              rt.Solver("rk4", 1 / 8)])
    assert len(calls) > 0


def test_an_adaptive_solve_that_cannot_find_a_step_is_a_floating_point_error():
    class Exploding(nn.Module):
        def forward(self, t, z):
            return torch.exp(50 * z.abs()) * 1e30

    model = rt.NeuralODE(Exploding(), (2,), 2, rt.Solver("dopri5", tol=1e-6))
    model.head = nn.Linear(2, 2)
    with pytest.raises(FloatingPointError, match="dopri5"):
        rt.train_node(model, _data(), 2, batch_size=4)


# -- the adapters ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(every=-1), "every must be an integer >= 1"),
    (dict(every=0), "every must be an integer >= 1"),
    (dict(max_steps=-4), "max_steps must be an integer >= 1"),
    (dict(max_steps=0), "max_steps must be an integer >= 1"),
    (dict(gap_limit=math.nan), "gap_limit"),
    (dict(gap_limit=-1.0), "gap_limit"),
    (dict(gap_limit=True), "gap_limit"),
])
def test_the_step_adapter_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rt.StepSizeAdapter(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(every=0), dict(gap_limit=math.nan), dict(patience=0),
                                    dict(test_factor=1.0)])
def test_the_tolerance_adapter_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        rt.ToleranceAdapter(**kwargs)


@pytest.mark.parametrize("adapter", [rt.StepSizeAdapter(), rt.ToleranceAdapter()])
def test_update_before_start_is_named(adapter):
    x, y = _data()
    with pytest.raises(RuntimeError, match="before start"):
        adapter.update(_model(), x, y)


def test_a_batch_with_nan_cannot_start_step_adaptation():
    x, _ = _data()
    x[3, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        rt.StepSizeAdapter().start(_model(), x)


def test_ensemble_adapters_must_check_together():
    models = [_model(), _model()]
    with pytest.raises(ValueError, match="every"):
        rt.train_euler_ensemble(models, _data(), None, 3, adapters=[
            rt.StepSizeAdapter(every=2), rt.StepSizeAdapter(every=3)])


# -- the state's device: tested on the meta device (no GPU needed) ---------------------------

def test_the_ensembles_steps_follow_the_state_to_its_device():
    models = [_model(), _model()]
    params, _ = torch.func.stack_module_state(models)
    params = {k: v.detach().to("meta") for k, v in params.items()}
    x = torch.zeros(2, 5, 2, device="meta")
    grid = ensemble._grids([1 / 4, 1 / 8], torch.float32)          # made on the CPU
    assert ensemble.euler_logits(models[0], params, x, grid).device.type == "meta"
    assert ensemble.euler_logits(models[0], params, x, 4).device.type == "meta"
    assert ensemble.euler_grid(1 / 4, device="meta").device.type == "meta"
    assert ensemble._grids([1 / 4], torch.float32, "meta").device.type == "meta"


def test_the_starting_step_asks_for_its_time_on_the_states_device(monkeypatch):
    """No second device here: record where the time tensor is asked for (the old code
    asked for none, i.e. the CPU, whatever the state's device)."""
    asked, real = [], torch.zeros

    def zeros(*args, **kwargs):
        asked.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    x = torch.randn(4, 2, dtype=torch.float64)
    initial_step_size(lambda t, z: -z, x)
    assert asked == [x.device]


# -- the paper's protocol (official code) -----------------------------------------------------

def test_batches_are_shuffled_epochs_without_the_last_incomplete_one():
    from resode_tut.node_training import epoch_batches
    batches = epoch_batches(10, 4, torch.Generator().manual_seed(0))
    first_epoch = [next(batches) for _ in range(2)]           # 10 // 4 = 2 full batches
    seen = torch.cat(first_epoch)
    assert len(set(seen.tolist())) == 8                      # no item twice in an epoch
    second = torch.cat([next(batches) for _ in range(2)])
    assert len(set(second.tolist())) == 8 and not torch.equal(seen, second)


@pytest.mark.parametrize("h, expected", [
    (1 / 8, 1 / 16),                  # far from the cap: halve
    (1 / 300, 2 / 300 / (500 / 300 + 1)),   # near it: 2h / (500h + 1), i.e. 1/400
    (1 / 500, 1 / 500),               # at it: keep
])
def test_a_failed_check_halves_as_the_paper_code_does_near_the_cap(h, expected):
    assert rt.StepSizeAdapter(max_steps=500).halved(h) == pytest.approx(expected)
