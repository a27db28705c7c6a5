"""Chapter 8's benchmark, drift and training comparison: what the rows hold, that they can
fail, and the shipped-result round trip."""
import json

import numpy as np
import pytest

from resode_tut.experiments import ch08
from resode_tut.experiments import memory_benchmark as mb

TINY = mb.BenchmarkConfig("tiny", (4, 16), (8,), ("float32",), batch=4, error_batch=4,
                          repeats=1)


@pytest.fixture(scope="module")
def rows():
    return mb.run_benchmark(TINY, show_progress=False)["rows"]


def _row(rows, method, N):
    return next(r for r in rows if r["method"] == method and r["N"] == N)


def test_every_method_has_a_row_per_setting_with_its_measurements(rows):
    assert len(rows) == len(mb.BENCHMARK) * 2
    for r in rows:
        assert r["ms"] > 0 and r["x_backprop"][1] <= r["x_backprop"][0] <= r["x_backprop"][2]
        assert (r["x_floor"] is None) == (r["method"] == "backprop")
        assert r["mib"] > 0 and np.isfinite(r["grad_error"]) and not r["failed"]
        assert (r["drift"] is None) == (r["gradient"] != "adjoint")


def test_the_columns_tell_exact_approximate_and_memory_free_apart(rows):
    for m in ("coupling (RevNet)", "reversible Heun", "momentum, gamma = 1 - h"):
        r = _row(rows, m, 16)
        assert r["grad_error"] < 100 * r["backprop_error"] and r["drift"] < 1e-5, m
    for m in ("adjoint, Euler (Sander et al.)", "one-evaluation adjoint, Euler"):
        assert _row(rows, m, 16)["grad_error"] > 1e-3, m
    # the one-evaluation adjoint is torchdiffeq's Euler adjoint, to float32 rounding
    one = _row(rows, "one-evaluation adjoint, Euler", 16)["grad_error"]
    assert _row(rows, "odeint_adjoint (torchdiffeq)", 16)["grad_error"] == pytest.approx(
        one, rel=1e-3)
    memory_free = [m.label for m in mb.BENCHMARK if m.gradient in ("adjoint", "odeint_adjoint")]
    for m in memory_free:
        assert _row(rows, m, 16)["mib"] <= 1.05 * _row(rows, m, 4)["mib"], m
    assert _row(rows, "backprop", 16)["mib"] > 3.5 * _row(rows, "backprop", 4)["mib"]
    table = ch08.format_table(rows, 16, 8)
    assert all(len(line) <= 90 for line in table.splitlines())
    assert table.count("\n") == len(mb.BENCHMARK) + 2


def test_a_backward_that_keeps_activations_shows_in_the_memory_column(monkeypatch):
    """Sabotage: 'memory-free' by backprop is caught by the bytes column."""
    real = mb.saved_bytes
    monkeypatch.setattr(mb, "saved_bytes", lambda stack, x, m: real(stack, x, "backprop"))
    cfg = mb.BenchmarkConfig("t", (4, 16), (8,), ("float32",), batch=4, error_batch=4,
                             repeats=1)
    rows = mb.run_benchmark(cfg, show_progress=False)["rows"]
    r4, r16 = (_row(rows, "coupling (RevNet)", N) for N in (4, 16))
    assert r16["mib"] > 1.05 * r4["mib"]


def test_an_overflowing_reconstruction_is_marked_failed_not_timed(monkeypatch):
    from resode_tut.adjoint import ReconstructionError

    def overflow(*args, **kwargs):
        raise ReconstructionError("overflow")
    real = mb.backward_step
    monkeypatch.setattr(mb, "backward_step", lambda stack, x, m: overflow()
                        if m == "adjoint" and stack.scheme == "coupling" else real(stack, x, m))
    real_grad = mb.gradients
    monkeypatch.setattr(mb, "gradients", lambda stack, x, m: overflow()
                        if m == "adjoint" and stack.scheme == "coupling"
                        else real_grad(stack, x, m))
    cfg = mb.BenchmarkConfig("t", (4,), (8,), ("float32",), batch=4, error_batch=4, repeats=1)
    rows = mb.run_benchmark(cfg, show_progress=False)["rows"]
    r = _row(rows, "coupling (RevNet)", 4)
    assert r["failed"] and r["ms"] is None and r["grad_error"] == float("inf")
    assert not _row(rows, "reversible Heun", 4)["failed"]


def test_the_benchmark_is_stored_and_read_back_as_a_shipped_result(tmp_path, monkeypatch):
    monkeypatch.setenv("RESODE_RESULTS", str(tmp_path))
    monkeypatch.setitem(mb.BENCHMARK_CONFIGS, "tiny", TINY)
    rows, result = ch08.benchmark("tiny", show_progress=False)
    stored = json.loads((tmp_path / "ch08-benchmark-tiny.json").read_text())
    assert stored["provenance"]["command"] == ch08.SHIPPED_BENCHMARK.command(TINY)
    again, loaded = ch08.benchmark("tiny", show_progress=False)
    assert loaded.key == result.key and again == json.loads(json.dumps(rows))
    with pytest.raises(ValueError, match="unknown benchmark configuration 'nope'"):
        ch08.benchmark("nope")


def test_momentum_drift_grows_like_gamma_to_the_minus_n_and_stays_bounded_when_scaled():
    d = ch08.momentum_drift([8, 16, 32], gammas=(0.5,), epsilon=1.0)
    fixed, scaled = d["gamma = 0.5"], d["gamma = 1 - h/1"]
    rate = np.polyfit([8, 16, 32], np.log(fixed), 1)[0]
    assert 0.5 * np.log(2) < rate < 1.5 * np.log(2)
    assert scaled.max() < 1e-6


def test_the_training_comparison_trains_each_architecture_both_ways():
    rows = ch08.train_comparison(4, epochs=1, seeds=(0,), dim=8, width=8)
    assert [r["architecture"] for r in rows] == [label for label, _ in ch08.TRAINED]
    for r in rows:
        assert 0 <= r["backprop"] <= 100 and 0 <= r["memory_free"] <= 100
        if r["architecture"] in ("coupling (RevNet)", "reversible Heun"):
            assert abs(r["backprop"] - r["memory_free"]) < 0.5
