"""Counting the bytes autograd keeps, against what each op is known to save."""
import torch
from torch import nn

from resode_tut import SavedTensorsCounter


def test_counter_counts_exactly_what_autograd_keeps():
    x = torch.randn(10, 4, requires_grad=True)          # 160 bytes in float32
    with SavedTensorsCounter() as c:
        y = x.exp()                                     # exp saves its output: 160 bytes
    assert c.bytes == 160
    lin = nn.Linear(4, 3)
    with SavedTensorsCounter(lin) as c:
        lin(x)                                          # saves x (160), weight excluded
    assert c.bytes == 160
    with SavedTensorsCounter() as c:
        z = x * x                                       # x saved twice, counted once
    assert c.bytes == 160
    del y, z


def test_cuda_peak_asks_the_allocator_of_its_own_device(monkeypatch):
    """No GPU here: torch.cuda's allocator queries are replaced by a fake that records
    which device each is asked about (device placement must be right without one)."""
    from resode_tut import CudaPeak

    calls, allocated = [], {"now": 3 * 2 ** 20, "peak": 11 * 2 ** 20}
    fake = {
        "synchronize": lambda d: calls.append(("sync", d)),
        "reset_peak_memory_stats": lambda d: calls.append(("reset", d)),
        "memory_allocated": lambda d: calls.append(("now", d)) or allocated["now"],
        "max_memory_allocated": lambda d: calls.append(("peak", d)) or allocated["peak"],
    }
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    with CudaPeak("cuda:1") as peak:
        pass
    assert peak.mib == 8.0
    assert {d for _, d in calls} == {torch.device("cuda:1")}
    assert [c for c, _ in calls] == ["sync", "reset", "now", "sync", "peak"]


def test_parameters_are_skipped_on_their_own_device_only(monkeypatch):
    """Storages are told apart by device as well as address (a CUDA and a CPU storage
    may share an address): a parameter's address skips nothing on another device."""
    lin = nn.Linear(4, 3)
    counter = SavedTensorsCounter(lin)
    ptr = lin.weight.untyped_storage().data_ptr()
    assert (ptr, torch.device("cpu")) in counter._skip
    assert (ptr, torch.device("meta")) not in counter._skip
