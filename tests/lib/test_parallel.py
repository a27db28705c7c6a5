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


def test_a_failing_job_raises_and_leaves_no_worker():
    with pytest.raises(ZeroDivisionError):
        parallel_map(_reciprocal, [1, 0, 2], processes=2)


def _reciprocal(x):
    return 1 / x


_INTERRUPTED = r"""
import os, signal, sys, time
from pathlib import Path
from resode_tut.parallel import parallel_map

# Ctrl-C handled as in a terminal or a kernel, even when the test runner was started
# with SIGINT ignored (a background job of a non-interactive shell): Python keeps an
# inherited SIG_IGN, and the script would then never see the interrupt
signal.signal(signal.SIGINT, signal.default_int_handler)

def job(i):
    Path(sys.argv[1], f"{i}.pid").write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    try:
        parallel_map(job, range(2), processes=2)
    except KeyboardInterrupt:
        # a Jupyter kernel lives on after the interrupt: its workers must be gone by now
        # (reaped, not zombies: os.kill(pid, 0) would find those), not at exit
        alive = []
        for p in Path(sys.argv[1]).glob("*.pid"):
            try:
                os.kill(int(p.read_text()), 0)
                alive.append(p.stem)
            except ProcessLookupError:
                pass
        print(f"workers alive after the interrupt: {alive}", file=sys.stderr)
        raise
"""


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal", "kernel-interrupt"])
def test_ctrl_c_stops_the_workers_within_seconds(tmp_path, to_group):
    """Ctrl-C to the whole process group (a terminal) or to the parent alone (Jupyter's
    interrupt): the map raises KeyboardInterrupt and no worker goes on computing (before:
    the parent waited for ProcessPoolExecutor's workers, which kept training)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "workers alive after the interrupt: []" in err
    time.sleep(1)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
