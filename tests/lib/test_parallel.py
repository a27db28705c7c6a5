"""Worker processes give the serial results, in order."""
import pytest
import torch

from resode_tut.parallel import default_processes, parallel_map


def _seeded_draw(seed):
    return torch.randn(3, generator=torch.Generator().manual_seed(seed)).tolist()


def test_parallel_map_keeps_order_and_values():
    jobs = list(range(7))
    serial = [_seeded_draw(s) for s in jobs]
    assert parallel_map(_seeded_draw, jobs, processes=2) == serial
    assert parallel_map(_seeded_draw, jobs, processes=1) == serial
    with pytest.raises(ValueError, match="processes"):
        parallel_map(_seeded_draw, jobs, processes=0)


def test_processes_from_environment(monkeypatch):
    monkeypatch.setenv("RESODE_PROCESSES", "3")
    assert default_processes() == 3
    monkeypatch.setenv("RESODE_PROCESSES", "many")
    with pytest.raises(ValueError, match="RESODE_PROCESSES"):
        default_processes()


def test_serial_map_restores_the_thread_count():
    before = torch.get_num_threads()
    assert parallel_map(_seeded_draw, [0, 1], processes=1) == [_seeded_draw(0), _seeded_draw(1)]
    assert torch.get_num_threads() == before


def _grad_draw(seed):
    x = torch.randn(3, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    (g,) = torch.autograd.grad(x.square().sum(), [x])
    return g.tolist()


def test_workers_start_from_a_server_where_cuda_is_available(monkeypatch):
    """On a CUDA machine torch refuses to fork after a backward (autograd's device
    threads): the workers come from a fork server there, with the same results."""
    from resode_tut import parallel
    assert parallel._start_method() == ("forkserver" if torch.cuda.is_available() else "fork")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parallel._start_method() == "forkserver"
    _grad_draw(0)                                 # autograd has run in this process
    jobs = list(range(4))
    assert parallel_map(_grad_draw, jobs, processes=2) == [_grad_draw(s) for s in jobs]
