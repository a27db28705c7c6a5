"""Weight paths (smooth vs i.i.d.) and the Gronwall bound."""
import numpy as np
import pytest
import torch

from resode_tut import (distance_sweep, euler_distance_bound, loglog_slope, solve_limit_ode,
                        tanh_stack, total_variation, weight_path)

pytestmark = pytest.mark.usefixtures("float64")


def increments(N, kind):
    theta = weight_path(kind, torch.arange(N) / N, torch.zeros(6), 1.0, seed=0)
    return (theta[1:] - theta[:-1]).norm(dim=1)


def test_smooth_increments_are_order_one_over_n_iid_are_not():
    for N in (32, 256):
        assert N * increments(N, "smooth").max() < 60          # O(1/N)
        assert increments(N, "iid").mean() > 2                  # O(1), ~ sqrt(2 * 6)
    tv = [total_variation(weight_path("smooth", torch.arange(N) / N, torch.zeros(6), 1.0, 0)).item()
          for N in (64, 512)]
    assert tv[1] == pytest.approx(tv[0], rel=0.02)   # smooth: bounded total variation


def test_smooth_path_is_the_same_at_every_depth_and_has_the_stated_law():
    a = weight_path("smooth", torch.tensor([0.0, 0.5]), torch.zeros(3), 1.0, seed=7)
    b = weight_path("smooth", torch.tensor([0.0, 0.25, 0.5, 0.75]), torch.zeros(3), 1.0, seed=7)
    torch.testing.assert_close(a, b[::2])
    draws = torch.stack([weight_path(k, torch.tensor([0.3]), torch.full((1,), 2.0), 0.5, seed=s)
                         for k in ("smooth", "iid") for s in range(2000)]).flatten()
    assert draws.mean().item() == pytest.approx(2.0, abs=0.05)
    assert draws.std().item() == pytest.approx(0.5, abs=0.03)


def test_bad_weight_kind():
    with pytest.raises(ValueError, match="unknown weight kind 'random'"):
        weight_path("random", torch.arange(3) / 3, torch.zeros(2), 1.0, 0)


@pytest.mark.parametrize("kind", ["smooth", "iid"])
def test_bound_is_above_the_measured_distance(kind):
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    for N in (8, 32):
        stack = tanh_stack(N, kind, seed=5)
        with torch.no_grad():
            dist = (stack.trajectory(x0) - solve_limit_ode(stack, x0)).norm(dim=2).amax(0)
        radius = solve_limit_ode(stack, x0).norm(dim=2).amax(0)
        assert (dist <= euler_distance_bound(stack, radius)).all()


def test_bound_rejects_other_stacks():
    with pytest.raises(ValueError, match="Euler"):
        euler_distance_bound(tanh_stack(4, scheme="heun"), torch.ones(1))


def test_sweep_separates_smooth_from_iid():
    sweep = distance_sweep([16, 64], seeds=[0, 1], num_inputs=8, progress=False)
    assert sweep.distance["smooth"].shape == (2, 2)
    assert sweep.slope("smooth") < -0.9
    assert sweep.mean("iid")[-1] > 0.5 * sweep.mean("iid")[0]
    assert sweep.bound_violations == 0


def test_loglog_slope():
    x = np.array([2.0, 4.0, 8.0])
    assert loglog_slope(x, 3 * x ** -2.0) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope(x, [1.0, 0.0, 2.0])


def test_closed_form_bound_is_above_the_recursion():
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    for kind in ("smooth", "iid"):
        stack = tanh_stack(16, kind, seed=1)
        radius = solve_limit_ode(stack, x0).norm(dim=2).amax(0)
        rec = euler_distance_bound(stack, radius)
        closed = euler_distance_bound(stack, radius, form="closed")
        assert (closed >= rec).all()
    with pytest.raises(ValueError, match="unknown form"):
        euler_distance_bound(stack, radius, form="tight")
