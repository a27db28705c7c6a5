"""Chapter 3's gradient methods, classifier and benchmark."""
import numpy as np
import pytest
import torch

from resode_tut import tanh_stack
from resode_tut.datasets import digits
from resode_tut.experiments import ch03 as bench
from resode_tut.experiments.classifier import (
    ResidualClassifier,
    accuracy,
    train_classifier,
)
from resode_tut.experiments.gradient_methods import (
    METHODS,
    forward_with,
    gradients,
    relative_error,
    saved_bytes,
)


def test_classifier_twins_share_initial_weights_and_learn():
    torch.manual_seed(0)
    net = ResidualClassifier(64, 10, depth=4)
    twin = net.with_adjoint(True)
    assert twin.stage.adjoint and not net.stage.adjoint
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q) and p is not q
    data = digits()
    before = accuracy(net, data[2], data[3])
    hist = train_classifier(net, data, epochs=2)
    assert hist.test_accuracy[-1] > max(0.80, before + 0.30)


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_benchmark_rows_and_table(scheme):
    rows = bench.adjoint_benchmark([4, 8], dim=8, batch=16, repeats=3, timed=[8],
                                   errors=[4], scheme=scheme, show_progress=False)
    assert len(rows) == 2 * 4 + 1                   # the floor row at the timed depth
    by = {(r["N"], r["method"]): r for r in rows}
    assert by[4, "backprop"]["grad_error"] == 0 and by[8, "adjoint"]["grad_error"] is None
    assert by[4, "adjoint"]["ms"] is None and by[8, "adjoint"]["ms"] > 0
    assert by[8, "backprop"]["x_backprop"] == (1.0, 1.0, 1.0)
    med, q25, q75 = by[8, "adjoint"]["x_floor"]
    assert q25 <= med <= q75 and by[8, "floor"]["mib"] is None
    steps = {4: 4, 8: 8} if scheme == "euler" else {4: 3, 8: 7}   # memory per step
    growth = by[8, "backprop"]["mib"] / by[4, "backprop"]["mib"]
    assert growth == pytest.approx(steps[8] / steps[4])
    table = bench.format_table(rows)
    assert "odeint_adjoint" in table and "floor" in table
    assert max(len(line) for line in table.split("\n")) <= 80     # fits a page's column
    import re
    row = next(line for line in table.split("\n") if line.split()[:2] == ["8", "adjoint"])
    shown = [float(v) for v in re.findall(r"([\d.]+) \(([\d.]+)-([\d.]+)\)", row)[1]]
    assert shown == pytest.approx([med, q25, q75], rel=0.01, abs=0.006)  # x floor column


def test_interleaving_rotates_the_order_and_ratios_are_paired(monkeypatch):
    from resode_tut.experiments import gradient_methods as gm
    calls = []
    monkeypatch.setattr(gm, "backward_step", lambda stack, x, m: calls.append(m))
    times = gm.interleaved_times(tanh_stack(2), torch.zeros(1, 2), ["a", "b", "c"], repeats=3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert all(len(t) == 3 for t in times.values())
    paired = {"a": np.array([1.0, 2.0, 4.0]), "b": np.array([2.0, 4.0, 8.0])}
    assert gm.paired_ratio(paired, "b", "a") == (2.0, 2.0, 2.0)   # drift cancels


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_methods_give_the_stack_output_and_exact_ones_agree_with_backprop(scheme):
    stack = tanh_stack(20, "smooth", seed=0, dim=3, scheme=scheme)
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = stack(x)
    for m in METHODS:
        torch.testing.assert_close(forward_with(stack, x, m), expected, rtol=1e-12, atol=1e-12)
    ref = gradients(stack, x, "backprop")
    assert relative_error(ref, gradients(stack, x, "checkpoint")) < 1e-12
    for m in ("adjoint", "odeint_adjoint"):
        assert 0 < relative_error(ref, gradients(stack, x, m)) < 0.5


def test_memory_growth_backprop_linear_adjoint_flat():
    x = torch.randn(32, 8, requires_grad=True)
    small, large = (tanh_stack(N, "smooth", dim=8, dtype=torch.float32) for N in (8, 64))
    assert saved_bytes(large, x, "backprop") >= 7 * saved_bytes(small, x, "backprop")
    # x_0 and x_N (the self-check); no random state (a deterministic stack)
    assert saved_bytes(large, x, "adjoint") == saved_bytes(small, x, "adjoint") == 2 * 32 * 8 * 4


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown gradient method 'fast'"):
        forward_with(tanh_stack(4), torch.randn(2, 2, dtype=torch.float64), "fast")


def test_cuda_peak_needs_a_cuda_tensor():
    from resode_tut.experiments.gradient_methods import cuda_peak_mib
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_peak_mib(tanh_stack(4), torch.randn(2, 2, dtype=torch.float64), "adjoint")


@pytest.mark.parametrize("argv, message", [
    (["adjoint", "--repeats", "0"], "--repeats: must be a positive integer, got 0"),
    (["adjoint", "--dim", "0"], "--dim: must be a positive integer, got 0"),
    (["adjoint", "--batch", "-3"], "--batch: must be a positive integer, got -3"),
    (["adjoint", "--depths", "16", "x"], "--depths: 'x' is not an integer"),
    (["adjoint", "--device", "gpu0"], "--device: unknown device 'gpu0'"),
])
def test_command_line_names_a_bad_argument_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(bench, "adjoint_benchmark", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_command_line_runs_the_chosen_methods_with_backprop_and_the_floor(capsys):
    bench.main(["adjoint", "--depths", "4", "--dim", "4", "--batch", "8", "--repeats", "2",
                "--methods", "adjoint", "--scheme", "heun"])
    out = capsys.readouterr().out
    rows = [line.split()[1] for line in out.splitlines() if line.strip().startswith("4 ")]
    assert rows == ["backprop", "adjoint", "floor"]
    assert "N=4: adjoint" in out and "its floor" in out and "odeint_adjoint" not in out
    with pytest.raises(SystemExit):
        bench.main(["adjoint", "--methods", "fast"])


@pytest.mark.parametrize("scheme", ["euler", "heun"])
def test_the_odeint_adjoint_baseline_samples_every_layer_and_is_first_order(scheme):
    """Set up fairly, torchdiffeq's continuous adjoint gives every layer (the first one
    too) about backprop's gradient, and its error falls like 1/N."""
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for N in (16, 32, 64):
        stack = tanh_stack(N, "smooth", seed=1, dim=4, scheme=scheme)
        ref, ode = gradients(stack, x, "backprop"), gradients(stack, x, "odeint_adjoint")
        first = [torch.cat([g.flatten() for g in grads[:2]]) for grads in (ref, ode)]
        assert (first[1] - first[0]).norm() < 0.2 * first[0].norm()   # layer 0 is reached
        errors.append(relative_error(ref, ode))
    from resode_tut import loglog_slope
    assert loglog_slope([16, 32, 64], errors) <= -0.8


def test_layer_errors_group_each_functions_parameters():
    from resode_tut.experiments.gradient_methods import layer_errors
    stack = tanh_stack(8, "iid", seed=2, dim=3)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    errs = layer_errors(stack, x, ("backprop", "adjoint"))
    assert errs["backprop"].shape == (8,) and not errs["backprop"].any()
    ref, adj = gradients(stack, x, "backprop"), gradients(stack, x, "adjoint")
    for n in range(8):   # a TanhLayer has a weight and a bias, in that order
        a = torch.cat([adj[2 * n].flatten(), adj[2 * n + 1].flatten()])
        b = torch.cat([ref[2 * n].flatten(), ref[2 * n + 1].flatten()])
        assert errs["adjoint"][n] == pytest.approx(((a - b).norm() / b.norm()).item())
    tied = tanh_stack(1, "smooth", dim=3)
    with pytest.raises(ValueError, match="tied weights"):
        layer_errors(type(stack)([tied.functions[0]] * 4), x, ("adjoint",))


def test_the_command_line_names_a_heun_depth_below_two(capsys):
    with pytest.raises(SystemExit):
        bench.main(["adjoint", "--scheme", "heun", "--depths", "1", "4"])
    assert "--depths: a Heun stack needs at least 2" in capsys.readouterr().err
