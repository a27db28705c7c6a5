"""Several seeds trained at once: the same models as one at a time, and the lean Euler
forward equals torchdiffeq's Euler."""
import copy

import pytest
import torch

from resode_tut import ImageField, NeuralODE, Solver, SphereField, train_node
from resode_tut.datasets.small import concentric_spheres
from resode_tut.ensemble import euler_logits, train_euler_ensemble


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
    got = euler_logits(models[0], params, x, steps=4)
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
    x, y = concentric_spheres(50, 2, seed=0)
    with pytest.raises(ValueError, match="whole steps"):
        train_euler_ensemble([_spheres(0)], (x, y), 0.3, 1)
    with pytest.raises(ValueError, match="architecture"):
        train_euler_ensemble([_spheres(0), _images(0)], (x, y), 0.25, 1)
    with pytest.raises(ValueError, match="seeds"):
        train_euler_ensemble([_spheres(0)], (x, y), 0.25, 1, seeds=[1, 2])
    with pytest.raises(ValueError, match="empty"):
        train_euler_ensemble([], (x, y), 0.25, 1)
