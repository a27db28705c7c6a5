"""Weight paths smooth or i.i.d. in depth."""
import numpy as np
import pytest
import torch

from resode_tut import total_variation, weight_path

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


def test_tanh_stack_sizes_must_be_positive_integers():
    from resode_tut import tanh_stack
    for kwargs in (dict(depth=0), dict(depth=4, dim=0), dict(depth=4, dim=2.5),
                   dict(depth=4, num_modes=0), dict(depth=True)):
        with pytest.raises(ValueError, match="must be a positive integer"):
            tanh_stack(**kwargs)
    assert tanh_stack(np.int64(3)).depth == 3
