"""Several seeds trained at once: the same models as one at a time, and the lean Euler
forward equals torchdiffeq's Euler."""
import copy

import pytest
import torch

from resode_tut import ImageField, NeuralODE, Solver, SphereField, train_node
from resode_tut.adaptation import StepSizeAdapter, ToleranceAdapter
from resode_tut.datasets.small import concentric_spheres
from resode_tut.ensemble import euler_grid, euler_logits, train_euler_ensemble


def _spheres(seed):
    torch.manual_seed(seed)
    return NeuralODE(SphereField(8), (2,), 2, Solver("euler", 1 / 4))


def _images(seed):
    torch.manual_seed(seed)
    return NeuralODE(ImageField(1, 4), (1, 6, 6), 3, Solver("euler", 1 / 4))


@pytest.mark.parametrize("make, shape", [(_spheres, (2,)), (_images, (1, 6, 6))])
def test_the_stacked_euler_forward_is_torchdiffeqs_euler_for_each_model(make, shape):
    from torch.func import stack_module_state
    models = [make(s) for s in range(3)]
    x = torch.randn(3, 5, *shape)
    params, _ = stack_module_state(models)
    got = euler_logits(models[0], params, x, dt=4)
    for k, m in enumerate(models):
        want = m(x[k], Solver("euler", 1 / 4))      # torchdiffeq's fixed-grid Euler
        assert torch.allclose(got[k], want, atol=1e-6, rtol=1e-5)


def test_an_ensemble_trains_each_model_as_train_node_would_alone():
    """Same batches (each model's own seed), same Adam: after 5 steps the weights equal
    five lone trainings to float32 rounding."""
    x, y = concentric_spheres(300, 2, seed=0)
    models = [_spheres(s) for s in range(4)]
    alone = [copy.deepcopy(m) for m in models]
    hists = train_euler_ensemble(models, (x, y), 1 / 4, 5, lr=1e-3, batch_size=32,
                                 seeds=[10, 11, 12, 13], log_every=5)
    for k, m in enumerate(alone):
        train_node(m, (x, y), 5, lr=1e-3, batch_size=32, seed=10 + k, log_every=5)
        for p, q in zip(models[k].parameters(), m.parameters()):
            assert torch.allclose(p, q, atol=1e-6), k
    assert [h.iteration for h in hists] == [[5]] * 4
    assert all(m.solver == Solver("euler", 1 / 4) for m in models)


def test_a_model_trains_the_same_with_or_without_neighbours():
    """Each model's loss reaches only its own slice of the stack, at full weight: model 0
    ends where it ends when trained alone (a mean over models, or shared weights, would
    not)."""
    x, y = concentric_spheres(300, 2, seed=0)
    together = [_spheres(0), _spheres(1), _spheres(2)]
    alone = [copy.deepcopy(together[0])]
    train_euler_ensemble(together, (x, y), 1 / 4, 5, lr=1e-2, batch_size=16)
    train_euler_ensemble(alone, (x, y), 1 / 4, 5, lr=1e-2, batch_size=16)
    moved = max(float((p - q).abs().max()) for p, q in zip(together[0].parameters(),
                                                           _spheres(0).parameters()))
    assert moved > 1e-3
    for p, q in zip(together[0].parameters(), alone[0].parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_bad_input_is_named():
    x, y = concentric_spheres(200, 2, seed=0)
    with pytest.raises(ValueError, match=r"step_size in \(0, 1\]"):
        train_euler_ensemble([_spheres(0)], (x, y), 1.5, 1)
    with pytest.raises(ValueError, match="step sizes for"):
        train_euler_ensemble([_spheres(0)], (x, y), [0.25, 0.5], 1)
    with pytest.raises(ValueError, match="StepSizeAdapter"):
        train_euler_ensemble([_spheres(0)], (x, y), None, 1,
                             adapters=[ToleranceAdapter("fehlberg2", 1e-3)])
    with pytest.raises(ValueError, match="step_size=None"):
        train_euler_ensemble([_spheres(0)], (x, y), 0.25, 1, adapters=[StepSizeAdapter()])
    with pytest.raises(ValueError, match="of its own"):
        a = StepSizeAdapter()
        train_euler_ensemble([_spheres(0), _spheres(1)], (x, y), None, 1, adapters=[a, a])
    with pytest.raises(ValueError, match="step_size is None"):
        train_euler_ensemble([_spheres(0)], (x, y), None, 1)
    with pytest.raises(ValueError, match="architecture"):
        train_euler_ensemble([_spheres(0), _images(0)], (x, y), 0.25, 1)
    with pytest.raises(ValueError, match="seeds"):
        train_euler_ensemble([_spheres(0)], (x, y), 0.25, 1, seeds=[1, 2])
    with pytest.raises(ValueError, match="empty"):
        train_euler_ensemble([], (x, y), 0.25, 1)


@pytest.mark.parametrize("h", [1 / 4, 0.3, 0.13, 1 / 7, 1.0])
def test_the_step_grid_is_torchdiffeqs(h):
    """Steps that do not divide 1 end with a shorter step, as in torchdiffeq: the Euler
    map built from ``euler_grid`` equals odeint's, and the number of steps its nfe."""
    m = _spheres(0)
    x = torch.randn(6, 2)
    z = x
    for dt in euler_grid(h):
        z = z + dt * m.field(None, z)
    m.nfe = 0
    want = m.flow(x, Solver("euler", h))[-1]
    assert m.nfe == len(euler_grid(h))
    assert torch.equal(z, want)
    assert float(euler_grid(h).sum()) == pytest.approx(1.0, abs=1e-6)


def test_models_with_different_steps_each_get_their_own_euler():
    from torch.func import stack_module_state
    models = [_spheres(s) for s in range(3)]
    hs = [1 / 4, 0.3, 0.13]
    x = torch.randn(3, 5, 2)
    params, _ = stack_module_state(models)
    grids = torch.zeros(3, 8)
    for k, h in enumerate(hs):
        grids[k, :len(euler_grid(h))] = euler_grid(h)
    got = euler_logits(models[0], params, x, grids)
    for k, m in enumerate(models):
        assert torch.allclose(got[k], m(x[k], Solver("euler", hs[k])), atol=1e-6, rtol=1e-5)


def test_adapted_models_train_together_as_each_would_alone_with_train_node():
    """One StepSizeAdapter per model: the same checks on the same batches, the same
    steps chosen (halvings and growths included) and the same weights as lone
    train_node runs with their adapters."""
    x, y = concentric_spheres(400, 2, seed=0)
    models = [_spheres(s) for s in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    adapters = [StepSizeAdapter(every=10, gap_limit=2.0) for _ in models]
    hists = train_euler_ensemble(models, (x, y), None, 60, lr=1e-2, batch_size=32,
                                 seeds=[5, 6, 7], adapters=adapters, log_every=20)
    actions = set()
    for k, m in enumerate(alone):
        lone = StepSizeAdapter(every=10, gap_limit=2.0)
        hist = train_node(m, (x, y), 60, lr=1e-2, batch_size=32, seed=5 + k, adapter=lone,
                          log_every=20)
        assert [e["step_size"] for e in lone.log] == pytest.approx(
            [e["step_size"] for e in adapters[k].log], rel=1e-12)
        assert [e["action"] for e in lone.log] == [e["action"] for e in adapters[k].log]
        actions.update(e["action"] for e in lone.log)
        assert models[k].solver == m.solver
        assert hists[k].nfe == pytest.approx(hist.nfe)     # forward steps per iteration
        for p, q in zip(models[k].parameters(), m.parameters()):
            assert torch.allclose(p, q, atol=1e-5), k
    assert {"halve", "grow"} <= actions      # the test exercises both ways
