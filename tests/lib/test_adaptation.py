"""Step-size and tolerance adaptation: the heuristic by hand, the adapters' reactions."""
import math

import pytest
import torch

from resode_tut import (
    NeuralODE,
    Solver,
    SphereField,
    StepSizeAdapter,
    ToleranceAdapter,
    initial_step_size,
    ode_regime,
    train_node,
)
from resode_tut.experiments.ch05 import (
    load_task,
)


def test_initial_step_size_follows_the_heuristic():
    # f(z) = -2 z: d0 = mean|x|, d1 = 2 d0, h0 = 0.005, d2 = 4 d0 -> h1 = (0.01/(4 d0))^(1/2)
    field = lambda t, z: -2 * z
    x = torch.full((4, 1), 3.0, dtype=torch.float64)
    h = initial_step_size(field, x, order=1)
    assert math.isclose(h, min(100 * 0.005, math.sqrt(0.01 / 12)), rel_tol=1e-9)


def test_coarse_model_fails_the_regime_check_and_adapter_reacts():
    """A field trained to exploit one Euler step differs from its exact flow."""
    torch.manual_seed(0)
    data = load_task("spheres2d")
    model = NeuralODE(SphereField(8), (2,), 2, Solver("euler", 1 / 2))
    train_node(model, data, iterations=300, lr=1e-2)
    report = ode_regime(model, data[2], data[3])
    assert report.own == Solver("euler", 1 / 2)
    assert report.max_gap == pytest.approx(
        100 * (max(report.accuracy.values()) - min(report.accuracy.values())))
    assert "ODE regime" in str(report)
    # the adapter halves h when the training and test solvers disagree on a batch
    adapter = StepSizeAdapter(gap_limit=0.0)
    adapter.step_size = 1 / 2
    x, y = data[2][:256], data[3][:256]
    gap = abs(model.accuracy(x, y, Solver("euler", 1 / 2))
              - model.accuracy(x, y, adapter.test_solver(1 / 2)))
    adapter.update(model, x, y)
    assert (adapter.step_size == 1 / 4) == (gap > 0)
    with pytest.raises(ValueError, match="readout"):
        ode_regime(model.field, data[2], data[3])


def _small_model():
    torch.manual_seed(1)
    return NeuralODE(SphereField(8), (2,), 2, Solver("fehlberg2", tol=1e-2))


def test_the_tolerance_test_is_made_more_accurate_than_training():
    """The paper's code: test at tol/factor, lowered by the factor until the test solver
    takes more evaluations than the training solver (here dopri5 against itself, with a
    small factor, so the first candidate is as cheap as training)."""
    data = load_task("spheres2d")
    x, y = data[0][:128], data[1][:128]
    model = _small_model()
    model.nfe = 0
    model.accuracy(x, y, Solver("dopri5", tol=1e-2))
    train_cost = model.nfe
    model.nfe = 0
    model.accuracy(x, y, Solver("dopri5", tol=1e-2 / 1.2))
    assert model.nfe <= train_cost            # the first candidate checks nothing
    adapter = ToleranceAdapter("dopri5", tol=1e-2, test_method="dopri5", test_factor=1.2)
    adapter.start(model, x)
    adapter.update(model, x, y)
    entry = adapter.log[-1]
    assert entry["nfe_train"] == train_cost
    assert entry["nfe_test"] > entry["nfe_train"] and entry["test_tol"] < 1e-2 / 1.2


def _fake_solves(monkeypatch, acc, nfe):
    """The adapter's solves replaced: ``acc(solver)`` and ``nfe(solver)`` decide."""
    monkeypatch.setattr(ToleranceAdapter, "_accuracy_and_nfe",
                        lambda self, model, x, y, solver: (acc(solver), nfe(solver)))


def test_the_tolerance_halves_grows_or_freezes_by_the_paper_codes_rules(monkeypatch):
    data = load_task("spheres2d")
    x, y, model = data[0][:128], data[1][:128], _small_model()
    train = lambda s: s.method == "fehlberg2"
    # the test is more accurate by 20 points: halve
    _fake_solves(monkeypatch, lambda s: 0.7 if train(s) else 0.9,
                 lambda s: 10 if train(s) else 30)
    a = ToleranceAdapter(tol=1e-3)
    a.start(model, x)
    a.update(model, x, y)
    assert a.tol == 1e-3 / 2 and a.log[-1]["action"] == "halve"
    assert model.solver == Solver("fehlberg2", tol=1e-3 / 2)
    # every solver agrees: grow to 1.1 tol ...
    _fake_solves(monkeypatch, lambda s: 0.9, lambda s: 10 if train(s) else 30)
    a = ToleranceAdapter(tol=1e-3)
    a.start(model, x)
    a.update(model, x, y)
    assert a.tol == pytest.approx(1.1e-3) and a.log[-1]["action"] == "grow"
    # ... unless the last 5 training iterations took as many evaluations as 1.1 tol would
    a = ToleranceAdapter(tol=1e-3, patience=5)
    a.start(model, x)
    for _ in range(5):
        a.observe(10)
    a.update(model, x, y)
    assert a.tol == 1e-3 and a.log[-1]["action"] == "frozen"
    # frozen blocks growth only: a failed check still halves (the paper's code)
    _fake_solves(monkeypatch, lambda s: 0.7 if train(s) else 0.9,
                 lambda s: 10 if train(s) else 30)
    a.update(model, x, y)
    assert a.log[-1]["action"] == "halve" and a.tol == 1e-3 / 2


def test_the_test_tolerance_starts_at_a_fifth_then_tightens_tenfold(monkeypatch):
    """The paper's code: tol/5, then /10 a round until the test takes more evaluations
    than training."""
    data = load_task("spheres2d")
    x, y, model = data[0][:128], data[1][:128], _small_model()
    _fake_solves(monkeypatch, lambda s: 0.9,
                 lambda s: 10 if s.method == "fehlberg2" or s.tol > 1e-5 else 40)
    a = ToleranceAdapter(tol=1e-3)
    a.start(model, x)
    a.update(model, x, y)
    assert a.log[-1]["test_tol"] == pytest.approx(1e-3 / 5 / 10 / 10)


def test_train_node_reports_each_iterations_evaluations_to_the_adapter():
    data = load_task("spheres2d")
    model = _small_model()
    adapter = ToleranceAdapter(tol=1e-3, every=1000, patience=3)
    seen = []
    adapter.observe = lambda nfe: seen.append(nfe)
    train_node(model, data, iterations=4, batch_size=32, adapter=adapter)
    assert len(seen) == 4 and all(n >= 2 for n in seen)
    with pytest.raises(ValueError, match="test_factor"):
        ToleranceAdapter(test_factor=1.0)


def test_training_with_tolerance_adaptation_learns_a_task_that_needs_the_flow():
    """XOR is not linearly separable: the linear head alone cannot fit it, the flow must
    move the points. With the tolerance adapted every 10 iterations (growths, a keep
    and freezes happen), training still fits it, and the result holds as an ODE."""
    from resode_tut.datasets import xor
    x, y = xor()
    torch.manual_seed(1)
    model = NeuralODE(SphereField(), (2,), 2, Solver("fehlberg2", tol=1e-3))
    adapter = ToleranceAdapter("fehlberg2", 1e-3, every=10)
    hist = train_node(model, (x, y), 200, lr=3e-3, batch_size=4, adapter=adapter, seed=1)
    assert hist.loss[-1] < 0.1 < hist.loss[0]
    assert model.accuracy(x, y, Solver("dopri5", tol=1e-7)) == 1.0
    assert model.solver.tol != 1e-3 and len(adapter.log) == 20
    assert {e["action"] for e in adapter.log} >= {"grow", "frozen"}
