""""""
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


def test_setup_fixes_the_thread_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("RESODE_THREADS", raising=False)
        assert setup().threads == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("RESODE_THREADS", "2")
        assert setup().threads == 2 and torch.get_num_threads() == 2
        assert setup(threads=1).threads == 1
        monkeypatch.setenv("RESODE_THREADS", "two")
        with pytest.raises(ValueError, match="RESODE_THREADS='two'"):
            setup()
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            setup(threads=0)
    finally:
        torch.set_num_threads(before)
