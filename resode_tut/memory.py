"""How much memory a forward pass keeps for backward.

:class:`SavedTensorsCounter` counts, with ``torch.autograd.graph.saved_tensors_hooks``,
the bytes of every tensor that autograd (or a custom ``autograd.Function``)
saves during the forward pass.  Storages are counted once however many tensors
view them, and parameters are left out (they are held by the model anyway): what
remains is the activation memory of backpropagation.  The count is exact and
does not depend on the device, unlike process memory.

:class:`CudaPeak` measures the other quantity, on a GPU: the peak of the CUDA
allocator inside a block, above its level at entry.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SavedTensorsCounter", "CudaPeak"]


class SavedTensorsCounter:
    """Context manager: bytes saved for backward inside the ``with`` block.

    Parameters
    ----------
    model : torch.nn.Module, optional
        Its parameters (and buffers) are not counted.

    Attributes
    ----------
    bytes : int
        Bytes of distinct storages saved for backward, parameters excluded.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3)
    >>> with SavedTensorsCounter(lin) as saved:
    ...     y = lin(torch.randn(4, 3, requires_grad=True)).tanh()
    >>> saved.bytes > 0
    True
    """

    def __init__(self, model: nn.Module | None = None):
        self._skip = set()
        if model is not None:
            for t in list(model.parameters()) + list(model.buffers()):
                self._skip.add((t.untyped_storage().data_ptr(), t.device))
        self._seen = set()
        self.bytes = 0

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)   # addresses are per device
        if key not in self._skip and key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


class CudaPeak:
    """Context manager: peak CUDA memory (MiB) allocated inside the block, above the
    memory allocated when it was entered.

    Parameters
    ----------
    device : torch.device or str
        A CUDA device.

    Attributes
    ----------
    mib : float
        Set on exit.

    Raises
    ------
    ValueError
        ``device`` is not a CUDA device.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaPeak measures the CUDA allocator, got device {self.device}: "
                             "move the model and its inputs to a CUDA device first")
        self.mib = float("nan")

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20
        return False
