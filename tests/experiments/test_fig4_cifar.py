"""Paper A's Fig. 4 on CIFAR-10 (chapter 4): the run's protocol, resumption and storage."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from resode_tut import CifarResNet, ResidualStack
from resode_tut.experiments import ch04, heun_cifar
from resode_tut.experiments import shipped as shipped_mod

TINY = heun_cifar.Fig4Config("tiny", 80, 40, (2, 4), (1, 2), 2, batch=40, channels=4)


@pytest.fixture(autouse=True)
def data_and_results(cifar_and_results):
    """The shared small CIFAR-10 folder and empty results folder; the data cache cleared."""
    heun_cifar._data.cache_clear()
    return cifar_and_results


def _official_lrs(epochs, lr=0.1):
    """The learning rate of each epoch as the official ``train_tiny.py`` loop sets it:
    divided by 10 *after* training epoch ``epochs // 3`` and epoch ``2 * epochs // 3``."""
    lrs = []
    for epoch in range(epochs):
        lrs.append(lr)
        if epoch == epochs // 3 or epoch == 2 * epochs // 3:
            lr /= 10
    return lrs


def _our_lrs(config):
    return [config.lr / 10 ** sum(epoch >= m for m in config.milestones())
            for epoch in range(config.epochs)]


@pytest.mark.parametrize("epochs", [90, 15, 9, 3])
def test_the_schedule_is_the_official_codes(epochs):
    cfg = heun_cifar.Fig4Config("x", 1, 1, (2,), (1,), epochs)
    np.testing.assert_allclose(_our_lrs(cfg), _official_lrs(epochs))


def test_the_jobs_cover_every_seed_depth_scheme_and_method_once():
    jobs = heun_cifar.fig4_jobs(TINY)
    keys = {tuple(j[:4]) for j in jobs}
    assert len(jobs) == len(keys) == 2 * 2 * 2 * 2
    assert [j[1] for j in jobs[:4]] == [4] * 4          # deepest first within a seed


def test_a_run_is_the_training_it_says(data_and_results):
    """One job against the same training done by hand (cifar_training.train)."""
    from resode_tut.datasets.cifar import cifar10
    from resode_tut.experiments.cifar_training import train
    job = heun_cifar.fig4_jobs(TINY)[0]            # seed 1, N = 4, euler, backprop
    got = heun_cifar.run_one(job)
    model = heun_cifar.TinyResNet(4, channels=4, scheme="euler", seed=1)
    hist = train(model, cifar10(train=True).subset(80, 0), cifar10(train=False).subset(40, 0),
                 2, 0.1, method="backprop", milestones=(1, 2), batch=40, seed=1)
    assert got["test_accuracy"] == hist.test_accuracy
    assert got["train_loss"] == hist.train_loss and got["self_check"] == []


def test_stored_loaded_and_resumed(monkeypatch, data_and_results, tmp_path):
    sweep, result = ch04.cifar_fig4(TINY, processes=1)
    assert result.path.exists()
    assert result.provenance["command"].endswith("fig4 --config tiny")
    again, loaded = ch04.cifar_fig4(TINY, processes=1)
    for scheme in heun_cifar.SCHEMES:
        for method in heun_cifar.METHODS:
            np.testing.assert_array_equal(again.accuracy[scheme][method],
                                          sweep.accuracy[scheme][method])
    # the best epoch, as the official figure takes it, from the stored runs themselves
    runs = json.loads(result.path.read_text())["data"]["runs"]
    r = next(r for r in runs if (r["seed"], r["depth"], r["scheme"], r["method"])
             == (2, 4, "heun", "adjoint"))
    assert sweep.accuracy["heun"]["adjoint"][1, 1] == max(r["test_accuracy"])
    assert sweep.self_check["heun"][1, 1] == r["self_check"][-1] and r["self_check"][-1] > 0

    # a run stopped after its third training resumes with the others and equal numbers
    calls = []
    real = heun_cifar.run_one

    def stop_after_three(job, root=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(job[:4])
        return real(job, root)

    monkeypatch.setattr(heun_cifar, "run_one", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        ch04.cifar_fig4(TINY, processes=1, force=True)
    calls.clear()
    monkeypatch.setattr(heun_cifar, "run_one", lambda job, root=None: (calls.append(job[:4]),
                                                                        real(job, root))[1])
    resumed, _ = ch04.cifar_fig4(TINY, processes=1, force=True)
    assert len(calls) == 16 - 3
    for scheme in heun_cifar.SCHEMES:
        for method in heun_cifar.METHODS:
            np.testing.assert_array_equal(resumed.accuracy[scheme][method],
                                          sweep.accuracy[scheme][method])
    assert not any((tmp_path / "results" / ".partial").iterdir())


def test_an_incomplete_result_is_refused_and_named():
    data = {"runs": [dict(seed=1, depth=2, scheme="euler", method="backprop",
                          test_accuracy=[0.1, 0.2], train_loss=[1, 1], self_check=[])]}
    with pytest.raises(ValueError, match="no complete run for seed 2, N = 2, euler, backprop"):
        ch04.fig4_sweep(TINY, data)
    data["runs"][0]["test_accuracy"] = [0.1]              # one epoch of two
    with pytest.raises(ValueError, match="no complete run for seed 1, N = 2, euler, backprop"):
        ch04.fig4_sweep(TINY, data)


def test_unknown_configuration_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown Fig. 4 configuration 'huge'.*'cpu'"):
        ch04.cifar_fig4("huge")


def test_the_shipped_configuration_is_the_papers_protocol_at_cpu_scale():
    cpu, paper = heun_cifar.FIG4_CONFIGS["cpu"], heun_cifar.FIG4_CONFIGS["gpu-full"]
    for field in ("lr", "batch", "weight_decay", "channels"):
        assert getattr(cpu, field) == getattr(paper, field)
    assert (paper.lr, paper.batch, paper.weight_decay, paper.channels) == (0.1, 256, 5e-4, 16)
    assert paper.epochs == 90 and paper.train_images == 0 and max(paper.depths) == 64
    assert set(cpu.depths) <= set(paper.depths)


def test_the_cli_runs_and_stores(capsys):
    heun_cifar.FIG4_CONFIGS["tiny"] = TINY
    try:
        assert ch04.main(["fig4", "--config", "tiny", "--processes", "1"]) == 0
    finally:
        del heun_cifar.FIG4_CONFIGS["tiny"]
    out = capsys.readouterr().out
    assert "euler adjoint - backprop" in out
    assert shipped_mod.read("ch04-fig4-tiny") is not None


class _Tanh(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(5, 5, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(x @ self.W.T)


def test_official_heun_is_the_official_loop_forward_and_reversed():
    """HeunFwd of resnet_cifar: M - 1 steps, f_i and f_{i+1}, every step divided by M;
    its inverse evaluates f_{i+1} first."""
    M = 5
    fs = [_Tanh(i) for i in range(M)]
    x = torch.randn(3, 5, dtype=torch.float64)
    out = x
    for i in range(M - 1):
        f1 = fs[i](out)
        out = out + (f1 + fs[i + 1](out + f1 / M)) / 2 / M
    stack = ResidualStack(fs, scheme=heun_cifar.OfficialHeun())
    torch.testing.assert_close(stack(x), out, rtol=0, atol=1e-15)
    back = out
    for i in reversed(range(M - 1)):
        f2 = fs[i + 1](back)
        back = back - (f2 + fs[i](back - f2 / M)) / 2 / M
    state = out
    for n in reversed(range(stack.num_steps)):
        state = stack.scheme.reverse_step(stack.evaluate, n, state, stack.h)
    torch.testing.assert_close(state, back, rtol=0, atol=1e-15)


def test_official_heun_adjoint_converges_to_backprop():
    x = torch.randn(3, 5, dtype=torch.float64)
    errors = []
    for M in (4, 16, 64):
        fs = [_Tanh(0) for _ in range(M)]            # weights constant in depth: smooth
        grads = {}
        for adjoint in (False, True):
            stack = ResidualStack(fs, scheme=heun_cifar.OfficialHeun(), adjoint=adjoint)
            stack.zero_grad()
            stack(x).square().sum().backward()
            grads[adjoint] = torch.cat([f.W.grad.flatten() for f in fs[:1]])
        errors.append(float((grads[True] - grads[False]).norm() / grads[False].norm()))
    assert errors[0] > 0 and errors[2] < errors[1] < errors[0]
    assert errors[2] < errors[0] / 100          # at least second order between 4 and 64


def test_tiny_resnet_is_the_official_network():
    net = heun_cifar.TinyResNet(3, channels=16, seed=2)
    ref = CifarResNet(3, channels=16, seed=2)
    for a, b in zip(net.stage.parameters(), ref.stage.parameters()):
        assert torch.equal(a, b)                 # the same residual functions
    conv = net.stem[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((5, 5), (3, 3), (1, 1))
    assert net.head.in_features == 4 * 16        # a 2x2 pooled map
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(heun_cifar.TinyResNet(3, scheme="heun").stage.scheme,
                      heun_cifar.OfficialHeun)
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 3, 28, 28))


def test_the_page_shows_the_current_cpu_result_else_a_smoke_run(monkeypatch):
    """Quick mode never starts the hours-long run: without a current result it runs the
    smoke configuration and says it has no result; with one, it loads it."""
    monkeypatch.setitem(heun_cifar.FIG4_CONFIGS, "smoke", TINY)
    monkeypatch.setitem(ch04.FIG4_CONFIGS, "smoke", TINY)
    monkeypatch.setitem(ch04.FIG4_CONFIGS, "cpu", dataclasses.replace(TINY, name="cpu"))
    monkeypatch.setattr(heun_cifar, "default_processes", lambda: 1)
    sweep, cfg, result = ch04.fig4_for_page(quick=True)
    assert result is None and cfg is TINY and list(sweep.depths) == [2, 4]
    assert not list(shipped_mod.results_dir().glob("ch04-fig4-*.json"))
    ch04.cifar_fig4("cpu", processes=1)                   # now a current "cpu" result exists
    sweep, cfg, result = ch04.fig4_for_page(quick=True)
    assert cfg.name == "cpu" and result is not None and result.name == "ch04-fig4-cpu"
