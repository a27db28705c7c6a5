"""The Table 2 network (paper A's four-stage Bottleneck ResNet) against its official form."""
import pytest
import torch

from resode_tut.bottleneck_resnet import BottleneckResNet, untie_stage


def _official_forward(net, x):
    """The official ImplicitResNet / ResNetMemory forward written out: each stage's first
    block, then x + f(x) / (N - 1) for each of its N - 1 functions, a ReLU after the stage."""
    z = net.stem(x)
    for block, stage, n in zip(net.blocks, net.stages, net.layers):
        z = block(z)
        for f in stage.functions:
            z = z + f(z) / (n - 1)
        z = torch.relu(z)
    return net.head(torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


@pytest.mark.parametrize("tied", [True, False])
def test_the_network_is_the_official_one(tied):
    torch.manual_seed(0)
    net = BottleneckResNet((2, 3, 5, 2), width=4, tied=tied, seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), _official_forward(net, x), rtol=1e-5, atol=1e-6)
    assert net.head.in_features == 4 * 4 * 8                # 4 x planes of the last stage
    assert net.blocks[1].body[3].stride == (2, 2)           # the stride on the 3x3 conv
    ids = {id(f) for f in net.stages[2].functions}
    assert len(net.stages[2].functions) == 4 and len(ids) == (1 if tied else 4)


def test_the_adjoint_gradient_tends_to_backprops_with_depth():
    """The third stage differentiated by the memory-free adjoint: with weights constant
    in depth (tied) the error of its gradient against backprop's falls like 1/N."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32).double(), torch.tensor([0, 1, 2, 3])
    errors = []
    for n in (5, 41):
        grads = {}
        for adjoint in (False, True):
            net = BottleneckResNet((2, 2, n, 2), width=2, tied=True,
                                   adjoint=(False, False, adjoint, False), seed=3).double()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            grads[adjoint] = torch.cat([p.grad.flatten() for p in net.stages[2].parameters()])
        errors.append(float((grads[True] - grads[False]).norm() / grads[False].norm()))
    assert 0 < errors[1] < errors[0] / 4            # 10x the depth: at least 4x smaller


def test_untie_stage_starts_from_the_tied_function_and_keeps_the_output():
    tied = BottleneckResNet((2, 2, 3, 2), width=2, tied=True, seed=2).eval()
    x = torch.randn(2, 3, 32, 32)
    deep = untie_stage(tied, 2, 5).eval()
    assert deep.layers == (2, 2, 5, 2) and len(deep.stages[2].functions) == 4
    assert len({id(f) for f in deep.stages[2].functions}) == 4
    for f in deep.stages[2].functions:                      # copies of the tied function
        for a, b in zip(f.parameters(), tied.stages[2].functions[0].parameters()):
            assert torch.equal(a, b) and a is not b
    # the same autonomous ODE on a finer grid: close to the tied output, not equal
    gap = (deep(x) - tied(x)).norm() / tied(x).norm()
    assert gap < 0.5
    with pytest.raises(ValueError, match="depth"):
        untie_stage(tied, 2, 1)
    with pytest.raises(ValueError, match="stage"):
        untie_stage(tied, 4, 8)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="four stage depths"):
        BottleneckResNet((4, 4, 32))
    with pytest.raises(ValueError, match="four bools"):
        BottleneckResNet((2, 2, 2, 2), adjoint=(True, False))
    with pytest.raises(ValueError, match="shape"):
        BottleneckResNet((2, 2, 2, 2), width=2)(torch.randn(2, 1, 32, 32))
