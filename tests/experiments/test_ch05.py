"""Chapter 5's solver grid, crossings and fan."""
import pytest
import torch

from resode_tut import NeuralODE, Solver, SphereField
from resode_tut.datasets import concentric_spheres, xor
from resode_tut.experiments.ch05 import (
    crossing_pairs,
    load_task,
    shell_accuracy,
    shell_stretch,
    shells,
    solver_grid,
    train_runs,
    windermere_fan,
)


def test_crossings_found_by_geometry():
    # two segments that cross in step 0, then run parallel; a third one apart
    t = torch.tensor([[[0., 0.], [0., 1.], [5., 5.]],
                      [[1., 1.], [1., 0.], [6., 5.]],
                      [[2., 2.], [2., 1.], [7., 5.]]])
    assert crossing_pairs(t) == [(0, 1)]
    assert crossing_pairs(t, same_step=False) == [(0, 1)]
    # an exact rotation never crosses: concentric circles
    ang = torch.linspace(0, 1, 50)[:, None]
    r = torch.tensor([0.5, 1.0, 1.5])[None]
    circles = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], -1)
    assert crossing_pairs(circles) == [] and crossing_pairs(circles, same_step=False) == []
    with pytest.raises(ValueError, match="shape"):
        crossing_pairs(torch.zeros(5, 3, 3))


@pytest.mark.slow
def test_grid_runs_in_parallel_and_matches_a_serial_run():
    solvers = [Solver("euler", 1 / 2), Solver("euler", 1 / 4)]
    g1, m1 = solver_grid("spheres2d", solvers, iterations=5, processes=1)
    g2, _ = solver_grid("spheres2d", solvers, iterations=5, processes=2)
    assert g1.accuracy == g2.accuracy
    assert set(g1.accuracy[solvers[0]]) >= {("own", 1), ("rk4", "ref"), ("midpoint", 2.0)}
    (model, hist, log), = train_runs([dict(task="spheres2d", solver=Solver("euler", 1 / 2),
                                           adapt="step", iterations=100)], processes=1)
    assert len(log) == 2 and hist.iteration[-1] == 100 and hist.mean_nfe > 0
    with pytest.raises(ValueError, match="unknown adapt"):
        train_runs([dict(task="spheres2d", solver=Solver("euler", 1), adapt="grid",
                         iterations=1)])
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mnist")


@pytest.mark.slow
def test_fan_starts_on_the_euler_points():
    torch.manual_seed(1)
    model = NeuralODE(SphereField(8), (2,), 2, Solver("euler", 1 / 4))
    x = xor()[0]
    euler, exact = windermere_fan(model, x, 1 / 4)
    assert euler.shape == (5, 4, 2) and len(exact) == 4
    for n, curve in enumerate(exact):
        torch.testing.assert_close(curve[0], euler[n])
    torch.testing.assert_close(exact[0][-1], model.flow(x, Solver("dopri5", tol=1e-8))[-1],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="integer"):
        windermere_fan(model, x, 0.3)


def test_seed_grid_trains_each_seed_as_it_would_alone_and_summarises_over_seeds():
    """Seeds trained together (one worker per step) end as each seed trained alone;
    mean, std, per-seed gaps and the critical step come from the per-seed tests."""
    from resode_tut.experiments.ch05 import seed_grid
    kw = dict(iterations=15, lr=1e-2, batch_size=32, factors=(1.0, 2.0),
              test_methods=("euler", "rk4"), reference_step=1 / 32)
    grid, models = seed_grid("spheres2d", [1 / 2, 1 / 8], seeds=[3, 4], processes=2, **kw)
    alone, alone_models = seed_grid("spheres2d", [1 / 2], seeds=[4], processes=1, **kw)
    for p, q in zip(models[1 / 2][1].parameters(), alone_models[1 / 2][0].parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    assert grid.seeds == [3, 4] and len(models[1 / 8]) == 2
    assert models[1 / 8][0].solver == Solver("euler", 1 / 8)
    own = grid.accuracy[1 / 2][("own", 1)]
    assert len(own) == 2 and abs(own[1] - alone.accuracy[1 / 2][("own", 1)][0]) <= 0.002
    mean, std = grid.mean_std(1 / 2)
    assert mean == pytest.approx(50 * (own[0] + own[1]))
    assert std == pytest.approx(100 * abs(own[0] - own[1]) / 2 ** 0.5)
    table = grid.accuracy[1 / 8]
    for i, gap in enumerate(grid.gaps(1 / 8)):
        values = [100 * v[i] for v in table.values()]
        assert gap == pytest.approx(max(values) - min(values))
    ok, fail = grid.critical_step(tol=100.0)
    assert ok == 1 / 2 and fail is None          # every gap is within 100 points
    assert grid.critical_step(tol=-1.0) == (None, 1 / 8)     # none is
    with pytest.raises(ValueError, match="at least one"):
        seed_grid("spheres2d", [], **kw)


def test_the_grid_figure_draws_each_model_with_its_seed_range():
    """One curve per trained model and panel; for seeds, the curve is their mean and the
    band spans their range (checked against the accuracies themselves)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from resode_tut.experiments.ch05 import TEST_FACTORS, SeedGrid, plot_adaptation, plot_grid
    tests = [("own", 1)] + [(m, k) for m in ("euler", "midpoint", "rk4")
                            for k in (*TEST_FACTORS, "ref")]
    rng = np.random.default_rng(0)
    acc = {h: {t: rng.uniform(0.4, 1.0, 3).tolist() for t in tests} for h in (0.5, 0.125)}
    grid = SeedGrid("spheres2d", [0.5, 0.125], [0, 1, 2], acc, 1 / 256, 10, 1e-3)
    fig, axes = plt.subplots(1, 3)
    plot_grid(grid, axes, "t")
    line = [ln for ln in axes[2].lines if ln.get_label() == "euler, h=1/8"][0]
    want = [100 * np.mean(acc[0.125]["rk4", k]) for k in (*TEST_FACTORS, "ref")]
    assert np.allclose(line.get_ydata(), want)
    assert np.allclose(line.get_xdata()[:-1], [k * 8 for k in TEST_FACTORS])
    assert len(axes[0].collections) == 2                       # one band per step
    log = [dict(step_size=h, action=a) for h, a in ((0.5, "grow"), (0.55, "halve"),
                                                    (0.275, "grow"))]
    plot_adaptation([log], axes[0])
    plt.close(fig)


def test_shells_are_found_by_radius_and_scored_one_by_one():
    x, y = concentric_spheres(400, 2, seed=3)
    index = shells(x)
    assert index.bincount().tolist() == [100, 200, 100]       # n/4, n/2, n/4
    assert torch.equal(y, (index == 1).long())                # the middle shell is class 1
    r = x.norm(dim=1)
    assert r[index == 0].max() <= 0.15 + 1e-6 and r[index == 2].min() >= 0.40 - 1e-6

    wrong = torch.zeros(400, dtype=torch.bool)
    wrong[(index == 1).nonzero()[:50, 0]] = True              # a quarter of the middle
    wrong[(index == 2).nonzero()[:10, 0]] = True              # a tenth of the outer
    pred = torch.where(wrong, 1 - y, y)
    assert shell_accuracy(pred, x, y).tolist() == [1.0, 0.75, 0.9]
    with pytest.raises(ValueError, match="same B points"):
        shell_accuracy(pred[:-1], x, y)
    with pytest.raises(ValueError, match="none of the shells"):
        shells(torch.tensor([[0.2, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        shells(torch.zeros(3))


def test_shell_stretch_is_one_for_a_uniform_map_and_grows_when_the_middle_is_pulled_apart():
    x, _ = concentric_spheres(400, 2, seed=4)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert shell_stretch(x, 7 * x @ rot + 3) == pytest.approx(1.0, rel=1e-6)   # float32 points
    index = shells(x)
    z = x.clone()
    z[index == 1] *= 10                                       # middle diameter x10
    z[index == 0] *= 0.5                                      # inner diameter x0.5
    assert shell_stretch(x, z) == pytest.approx(20.0, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        shell_stretch(x, z[:10])


def test_official_evaluation_is_the_released_loop_over_batches():
    """The released evaluate_model: per batch, correct / batch_size (the partial last batch
    too), averaged over the batches."""
    import numpy as np

    from resode_tut.experiments import ch05
    rng = np.random.default_rng(0)
    for n, batch in ((1000, 128), (1000, 100), (300, 128), (7, 3)):
        correct = rng.random(n) < 0.9
        per_batch = [correct[i:i + batch].sum() / batch for i in range(0, n, batch)]
        assert ch05.official_evaluation(correct.mean(), n, batch) == \
            pytest.approx(np.mean(per_batch), rel=1e-12)
    assert float(ch05.official_evaluation(1.0)) == pytest.approx(1000 / 1024)
    assert float(ch05.official_evaluation(100.0, 1024, 128)) == 100.0   # no partial batch
