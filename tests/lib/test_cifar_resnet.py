"""The CIFAR ResNet, untying and BatchNorm recalibration, against independent computations."""

import numpy as np
import pytest
import torch
from helpers import write_batches

from resode_tut import CifarResNet, ResidualStack, recalibrate_batchnorm, untie
from resode_tut.datasets.cifar import cifar10, normalise


def test_untie_a_tied_network_computes_the_same_function():
    tied = CifarResNet(8, tied=True, zero_init=False, seed=1)
    untied = untie(tied, 8)
    assert len({id(p) for p in untied.stage.parameters()}) == 8 * 6
    x = torch.randn(5, 3, 32, 32)
    for mode in ("eval", "train"):
        getattr(tied, mode)(), getattr(untied, mode)()
        assert torch.allclose(tied(x), untied(x), atol=1e-6)
    # the copies are independent: changing one leaves the others
    with torch.no_grad():
        untied.stage.functions[0].conv1.weight.add_(1.0)
    assert not torch.equal(untied.stage.functions[0].conv1.weight,
                           untied.stage.functions[1].conv1.weight)


def test_untie_samples_the_old_stage_at_the_new_times():
    old = CifarResNet(4, zero_init=False, seed=2)
    new = untie(old, 8)
    for n, f in enumerate(new.stage.functions):  # t = n/8 lies in [k/4, (k+1)/4), k = n // 2
        assert torch.equal(f.conv2.weight, old.stage.functions[n // 2].conv2.weight)


@pytest.mark.slow
def test_a_tied_network_at_growing_depth_converges_like_euler():
    tied = CifarResNet(4, tied=True, zero_init=False, seed=3).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = untie(tied, 512)(x)
        errors = [(untie(tied, n)(x) - ref).norm().item() for n in (8, 16, 32, 64)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.6) & (ratios < 2.6)), ratios  # first order: halves with h


def test_cifar_resnet_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        CifarResNet(2)(torch.randn(2, 1, 32, 32))


def test_recalibration_sets_running_statistics_to_the_data_average(tmp_path):
    write_batches(tmp_path, 16)
    tr = cifar10(tmp_path, True)
    model = untie(CifarResNet(2, channels=4, tied=True, zero_init=False, seed=0), 4).eval()
    before = [p.clone() for p in model.parameters()]
    recalibrate_batchnorm(model, tr, batches=2, batch=16, seed=3)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the stem's BatchNorm sees conv(x) whatever the batch: its running mean must be the
    # mean of conv(x) over the 32 images used (same seeded order)
    idx = torch.randperm(len(tr), generator=torch.Generator().manual_seed(3))[:32]
    with torch.no_grad():
        z = model.stem[0](normalise(tr.images[idx].float() / 255))
    assert torch.allclose(model.stem[1].running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    assert model.stem[1].momentum == 0.1  # restored
    # every copy of the untied stage now has statistics of its own step
    means = [f.bn1.running_mean for f in model.stage.functions]
    assert not torch.allclose(means[0], means[-1])


def test_untie_takes_a_stack_of_any_functions_and_names_other_models():
    """A tied stack of any residual functions becomes the same ODE on a finer grid; a
    model without a stage is refused with the way out."""
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    tied = ResidualStack([f] * 4)
    deep = untie(tied, 8)
    assert isinstance(deep, ResidualStack) and deep.depth == 8
    assert len({id(g) for g in deep.functions}) == 8                  # independent copies
    assert all(torch.equal(g[0].weight, f[0].weight) for g in deep.functions)
    with pytest.raises(TypeError, match="untie its stack"):
        untie(torch.nn.Linear(3, 3), 8)
    with pytest.raises(ValueError, match="depth"):
        untie(tied, 0)
