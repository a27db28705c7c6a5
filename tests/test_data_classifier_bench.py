import pytest
import torch

from resode_tut import bench
from resode_tut.classifier import ResidualClassifier, accuracy, train_classifier
from resode_tut.data import digits


def test_digits_split_is_standardised_and_seeded():
    x_tr, y_tr, x_te, y_te = digits(test_fraction=0.25, seed=0)
    assert x_tr.shape[1] == 64 and len(x_tr) + len(x_te) == 1797
    assert len(x_te) == round(0.25 * 1797) and set(y_tr.tolist()) == set(range(10))
    assert x_tr.mean(0).abs().max() < 1e-4
    torch.testing.assert_close(digits(seed=0)[2], x_te)
    assert not torch.equal(digits(seed=1)[2], x_te)
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.5)


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
    assert hist.test_accuracy[-1] > max(80.0, before + 30)


def test_benchmark_rows_and_table():
    rows = bench.adjoint_benchmark([4, 8], dim=8, batch=16, repeats=1, timed=[8],
                                   errors=[4], show_progress=False)
    assert len(rows) == 2 * 4
    by = {(r["N"], r["method"]): r for r in rows}
    assert by[4, "backprop"]["grad_error"] == 0 and by[8, "adjoint"]["grad_error"] is None
    assert by[4, "adjoint"]["ms"] is None and by[8, "adjoint"]["ms"] > 0
    assert by[8, "backprop"]["mib"] == 2 * by[4, "backprop"]["mib"]
    assert "odeint_adjoint" in bench.format_table(rows)
