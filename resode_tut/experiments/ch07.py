"""Chapter 7 ("Scaling up"): its checks, on the CPU: data parallelism, resuming, mixed precision.

* :func:`ddp_step_check` -- one SGD step of a :class:`CifarResNet` in ``K``
  processes (DistributedDataParallel over gloo, each process its slice of the batch)
  against one process on the whole batch, with backprop and with the adjoint.
* :func:`resume_check` -- a training interrupted after an epoch and resumed from
  its checkpoint against the same training uninterrupted.
* :func:`amp_check` -- the adjoint's gradients under bf16 autocast against
  autocast backprop's, beside the size of mixed-precision rounding itself.
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from .. import distributed
from ..cifar_resnet import CifarResNet
from .cifar_training import AMP_DTYPES, METHODS, accuracy, train
from .plots import use_style

__all__ = ["use_style", "StepCheck", "ddp_step_check", "ResumeCheck", "resume_check",
           "amp_check", "plot"]


def _model(depth: int, channels: int, dtype, batchnorm: str = "eval") -> CifarResNet:
    # zero_init=False: every weight of the stage has a gradient from the first step
    model = CifarResNet(depth, channels, zero_init=False, seed=0).to(dtype)
    # four random steps are far from invertible: the adjoint's self-check would warn, but
    # these checks compare the adjoint in several processes with the adjoint in one
    model.stage.reconstruction_tol = math.inf
    return model.train(batchnorm == "train")


def _batch(n: int, dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 32, 32, generator=gen, dtype=dtype),
            torch.randint(0, 10, (n,), generator=gen))


def _one_step(method: str, depth: int, channels: int, batch: int, dtype,
              use_ddp: bool = True, batchnorm: str = "eval") -> list[torch.Tensor]:
    """Parameters after one SGD step on this process's share of the batch (the whole
    batch without a process group), its mean loss weighted as ``train()`` weights it.
    """
    model = _model(depth, channels, dtype, batchnorm)
    model.stage.adjoint = method == "adjoint"
    dist = distributed.current()
    net = distributed.wrap(model, "cpu") if use_ddp else model
    x, y = _batch(batch, dtype)
    part = distributed.shard(batch, dist) if dist.enabled else slice(None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    share = distributed.shard_weight(len(y[part]), batch, dist)
    (nn.functional.cross_entropy(net(x[part]), y[part]) * share).backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _step_worker(rank, world, init_file, out_dir, method, depth, channels, batch, dtype,
                 use_ddp, batchnorm):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    try:
        params = _one_step(method, depth, channels, batch, dtype, use_ddp, batchnorm)
        torch.save(params, Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _max_relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest ``|a - b|`` over all parameters, relative to the largest ``|b|``."""
    num = max(float((u - v).abs().max()) for u, v in zip(a, b))
    den = max(float(v.abs().max()) for v in b)
    return num / den


@dataclass
class StepCheck:
    """One SGD step in ``processes`` processes against one process.

    Attributes
    ----------
    method : str
    processes : int
    vs_one_process : float
        Largest parameter difference (rank 0 against one process on the whole
        batch), relative to the largest parameter.
    between_ranks : float
        The same between rank 0 and the last rank (DDP keeps them equal).
    moved : float
        How far the step moved the parameters, on the same scale (what a
        difference is small against).
    """

    method: str
    processes: int
    vs_one_process: float
    between_ranks: float
    moved: float


def ddp_step_check(method: str = "adjoint", processes: int = 2, depth: int = 4,
                   channels: int = 4, batch: int = 9, dtype=torch.float64,
                   use_ddp: bool = True, batchnorm: str = "eval") -> StepCheck:
    """Run one training step in ``processes`` processes (gloo, CPU) and in this one.

    Parameters
    ----------
    method : {"backprop", "adjoint"}
    processes : int
        At least 2; ``batch`` is split between them (unequal slices when it does not
        divide, each process's loss weighted by its share as ``train()`` does).
    depth : int
        Depth of the :class:`CifarResNet` (untied).
    channels : int
        Its width.
    batch : int
        Global batch (random images, seeded).
    dtype : torch.dtype
    use_ddp : bool
        False skips DistributedDataParallel (each process steps on its own
        gradient): the check must then fail, which shows it can.
    batchnorm : {"eval", "train"}
        BatchNorm's mode: in eval mode the loss is a mean of per-sample terms and the
        processes' step equals one process's; in train mode each process normalises its
        slice by its own statistics, and it does not.

    Returns
    -------
    StepCheck
    """
    if method not in METHODS:
        raise ValueError(f"unknown gradient method {method!r}: choose one of {METHODS}")
    if processes < 2:
        raise ValueError(f"processes must be at least 2, got {processes}")
    if batchnorm not in ("eval", "train"):
        raise ValueError(f"batchnorm must be 'eval' or 'train', got {batchnorm!r}")
    single = _one_step(method, depth, channels, batch, dtype, False, batchnorm)
    start = [p.detach() for p in _model(depth, channels, dtype).parameters()]
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_step_worker, nprocs=processes, start_method="spawn",
                           args=(processes, str(Path(tmp) / "rendezvous"), tmp, method,
                                 depth, channels, batch, dtype, use_ddp, batchnorm))
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True)
                 for r in range(processes)]
    return StepCheck(method, processes, _max_relative(ranks[0], single),
                     _max_relative(ranks[-1], ranks[0]), _max_relative(single, start))


class _Interrupted(Exception):
    pass


@dataclass
class ResumeCheck:
    """A training killed during an epoch and resumed, against the same run uninterrupted.

    Attributes
    ----------
    epochs, interrupted_in : int
        The run's length and the epoch it was interrupted in (1-based): that
        epoch's work was lost and redone.
    parameter_difference : float
        Largest absolute difference of any parameter or buffer at the end.
    same_history : bool
        Losses, accuracies and self-checks equal, epoch by epoch.
    """

    epochs: int
    interrupted_in: int
    parameter_difference: float
    same_history: bool


def resume_check(train_data, test_data, method: str = "adjoint", epochs: int = 3,
                 interrupted_in: int = 2, depth: int = 4, channels: int = 8,
                 amp: str | None = None, checkpoint_dir=None) -> ResumeCheck:
    """Train twice from the same start: once straight through, once interrupted in
    epoch ``interrupted_in`` (after the previous epoch's checkpoint, before its own)
    and resumed by a fresh model from the checkpoint.

    Parameters
    ----------
    train_data : Cifar10
    test_data : Cifar10
    method : {"backprop", "adjoint"}
    epochs : int
        Length of the training.
    interrupted_in : int
        The epoch (1-based) the first run dies in, ``2 <= interrupted_in <= epochs``.
    depth : int
        Depth of the (untied) :class:`CifarResNet`.
    channels : int
        Its width.
    amp : {None, "bf16", "fp16"}
        Mixed precision (fp16 checkpoints its gradient scaler too).
    checkpoint_dir : path, optional
        Where the checkpoints go (default: a temporary folder).

    Returns
    -------
    ResumeCheck
    """
    if not 2 <= interrupted_in <= epochs:
        raise ValueError(f"need 2 <= interrupted_in <= epochs, got {interrupted_in}, {epochs}")
    fit = dict(epochs=epochs, lr=0.05, method=method, batch=64, seed=1, amp=amp,
               fingerprint=f"resume-check/{method}/{amp}")

    def fresh():
        return CifarResNet(depth, channels, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp if checkpoint_dir is None else checkpoint_dir)
        straight = fresh()
        hist_a = train(straight, train_data, test_data, checkpoint=folder / "a.pt", **fit)
        done = []

        def evaluate(model):   # dies in the epoch `interrupted_in`, before its checkpoint
            done.append(1)
            if len(done) == interrupted_in:
                raise _Interrupted
            return accuracy(model, test_data)

        try:
            train(fresh(), train_data, test_data, checkpoint=folder / "b.pt",
                  evaluate=evaluate, **fit)
        except _Interrupted:
            pass
        resumed = fresh()      # as a new process would: a new model, then the checkpoint
        hist_b = train(resumed, train_data, test_data, checkpoint=folder / "b.pt",
                       resume=True, **fit)
    a, b = straight.state_dict(), resumed.state_dict()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    same = (hist_a.train_loss == hist_b.train_loss and
            hist_a.test_accuracy == hist_b.test_accuracy and
            hist_a.reconstruction_error == hist_b.reconstruction_error)
    return ResumeCheck(epochs, interrupted_in, diff, same)


def amp_check(depth: int = 16, channels: int = 16, batch: int = 32,
              amp: str = "bf16") -> dict:
    """How much autocast changes the gradients of a :class:`CifarResNet` (train mode),
    with backprop and with the adjoint.

    Parameters
    ----------
    depth : int
        Depth of the :class:`CifarResNet` (untied).
    channels : int
        Its width.
    batch : int
        Random images (seeded) in the batch.
    amp : {"bf16", "fp16"}
        fp16 autocast on the CPU needs a recent torch.

    Returns
    -------
    dict
        Relative errors ``||g - g_ref|| / ||g_ref||`` of the whole gradient:
        ``"amp_backprop"`` (autocast backprop against float32 backprop: the size of
        mixed-precision rounding), ``"amp_adjoint"`` (the same for the adjoint),
        ``"adjoint_float32"`` and ``"adjoint_amp"`` (the adjoint against backprop,
        both in float32, and both under autocast).
    """
    dtype = AMP_DTYPES[amp]
    model = CifarResNet(depth, channels, zero_init=False, seed=0).train()
    x, y = _batch(batch, torch.float32, seed=1)

    def grads(method, autocast):
        m = copy.deepcopy(model)
        m.stage.adjoint = method == "adjoint"
        m.stage.reconstruction_tol = math.inf
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return torch.cat([p.grad.flatten().double() for p in m.parameters()])

    g = {(m, a): grads(m, a) for m in METHODS for a in (False, True)}
    err = lambda u, v: float((u - v).norm() / v.norm())
    return {"amp_backprop": err(g["backprop", True], g["backprop", False]),
            "amp_adjoint": err(g["adjoint", True], g["adjoint", False]),
            "adjoint_float32": err(g["adjoint", False], g["backprop", False]),
            "adjoint_amp": err(g["adjoint", True], g["backprop", True])}


def plot(steps: dict, no_ddp: StepCheck, amp: dict):
    """The page's figure: left, the DDP step check (log scale); right, how much bf16
    autocast moves each method's gradient, beside the adjoint's own error.

    Parameters
    ----------
    steps : dict of str to StepCheck
        :func:`ddp_step_check` per method.
    no_ddp : StepCheck
        The same check without DDP (must fail).
    amp : dict
        :func:`amp_check`'s result.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    labels = [*steps, "adjoint,\nno DDP"]
    values = [c.vs_one_process for c in steps.values()] + [no_ddp.vs_one_process]
    colours = ["tab:blue", "tab:orange", "tab:red"]
    left.bar(labels, [max(v, 1e-18) for v in values], color=colours)
    left.axhline(no_ddp.moved, color="k", ls="--", lw=1, label="size of the step")
    left.axhline(2.2e-16, color="grey", ls=":", lw=1, label="float64 rounding")
    left.set_yscale("log")
    left.set_ylim(1e-18, 1)
    left.set_ylabel("2 processes vs 1: largest\nparameter difference (relative)")
    left.legend(loc="center left")
    keys = [("amp_backprop", "autocast vs float32:\nbackprop"),
            ("amp_adjoint", "autocast vs float32:\nadjoint"),
            ("adjoint_float32", "adjoint vs backprop:\nfloat32"),
            ("adjoint_amp", "adjoint vs backprop:\nbf16 autocast")]
    right.barh([label for _, label in keys][::-1], [100 * amp[k] for k, _ in keys][::-1],
               color=["tab:blue", "tab:orange", "tab:grey", "tab:purple"][::-1])
    right.set_xlabel("relative gradient difference (%)")
    fig.tight_layout()
    return fig
