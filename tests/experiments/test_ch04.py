"""Chapter 4's depth-training sweep and Heun distances."""
import math

import numpy as np
import pytest
import torch

from resode_tut.datasets import digits
from resode_tut.experiments.ch04 import DepthTrainingSweep, depth_training_sweep
from resode_tut.experiments.classifier import ResidualClassifier, train_classifier
from resode_tut.experiments.discretisation import distance_sweep


def test_tied_init_copies_weights_and_fixed_ends_do_not_move():
    torch.manual_seed(0)
    net = ResidualClassifier(64, 10, dim=8, width=8, depth=4, tied_init=True,
                             fixed_ends=True)
    blocks = list(net.stage.functions)
    for f in blocks[1:]:
        for p, q in zip(blocks[0].parameters(), f.parameters()):
            assert torch.equal(p, q) and p is not q     # same values, untied
    embed = net.embed.weight.clone()
    stage = [p.clone() for p in net.stage.parameters()]
    train_classifier(net, digits(), epochs=1)
    assert torch.equal(net.embed.weight, embed) and net.embed.weight.grad is None
    assert all(not torch.equal(p, q) for p, q in zip(net.stage.parameters(), stage))
    # the blocks received different gradients: they are no longer equal
    assert not torch.equal(blocks[0].net[0].weight, blocks[-1].net[0].weight)


def test_matching_depth_reads_the_gap():
    depths = np.array([2, 4, 8, 16])
    sweep = DepthTrainingSweep(depths=depths, seeds=[0])
    bp = np.array([[0.90], [0.91], [0.92], [0.92]])
    sweep.accuracy["euler"] = {"backprop": bp, "adjoint": bp - [[0.2], [0.005], [0.02], [0.002]]}
    assert sweep.matching_depth("euler", tol=1.0) == 16   # 4 matches, 8 does not
    np.testing.assert_allclose(sweep.gap("euler"), [20, 0.5, 2, 0.2])
    sweep.accuracy["heun"] = {"backprop": bp, "adjoint": bp - 0.05}
    assert sweep.matching_depth("heun") is None


def test_depth_training_sweep_runs_the_same_in_parallel():
    kw = dict(epochs=1, dim=8, width=8, seeds=(0,))
    a = depth_training_sweep([2, 4], processes=1, **kw)
    b = depth_training_sweep([2, 4], processes=2, **kw)
    for s in ("euler", "heun"):
        for m in ("backprop", "adjoint"):
            np.testing.assert_array_equal(a.accuracy[s][m], b.accuracy[s][m])
    assert a.accuracy["heun"]["adjoint"].shape == (2, 1)
    with pytest.raises(ValueError, match="unknown scheme 'rk4'"):
        depth_training_sweep([2], schemes=("rk4",))


def test_heun_distance_is_second_order_and_has_no_euler_bound():
    depths = [16, 32, 64]
    heun = distance_sweep(depths, kinds=["smooth"], seeds=[0], num_inputs=8,
                          scheme="heun", progress=False)
    euler = distance_sweep(depths, kinds=["smooth"], seeds=[0], num_inputs=8,
                           progress=False)
    assert heun.slope("smooth") < -1.8 and -1.2 < euler.slope("smooth") < -0.8
    assert all(math.isnan(b) for b in heun.mean("smooth", "bound"))
    for scheme in ("rk4", "momentum"):      # unknown, or a scheme whose state is not x alone
        with pytest.raises(ValueError, match=f"got scheme '{scheme}'"):
            distance_sweep(depths, scheme=scheme, progress=False)


def test_the_sweep_can_start_from_iid_blocks():
    from resode_tut.experiments import ch04
    tied = ch04.depth_training_sweep([4], schemes=("euler",), epochs=1, processes=1)
    iid = ch04.depth_training_sweep([4], schemes=("euler",), epochs=1, processes=1,
                                    tied_init=False)
    again = ch04.depth_training_sweep([4], schemes=("euler",), epochs=1, processes=1,
                                      tied_init=False)
    assert iid.accuracy == again.accuracy            # seeded
    assert iid.accuracy != tied.accuracy             # another start
