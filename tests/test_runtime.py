import pytest
import torch

from resode_tut import get_mode, setup


def test_mode_from_environment(monkeypatch):
    monkeypatch.delenv("RESODE_MODE", raising=False)
    assert get_mode() == "full"
    monkeypatch.setenv("RESODE_MODE", "quick")
    run = setup(seed=3)
    assert run.quick and run.pick(quick=1, full=2) == 1
    assert run.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("RESODE_MODE", "fast")
    with pytest.raises(ValueError, match="RESODE_MODE='fast'.*quick"):
        get_mode()


def test_setup_seeds_everything(monkeypatch):
    monkeypatch.setenv("RESODE_MODE", "quick")
    setup(seed=11)
    a = torch.randn(3)
    setup(seed=11)
    torch.testing.assert_close(torch.randn(3), a)
