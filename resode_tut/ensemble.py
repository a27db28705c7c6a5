"""Train several seeds of one Neural ODE classifier at once, with fixed-step Euler.

Ott et al. (2021) report every number as mean +- std over five seeds.  The
models are tiny, so one at a time a CPU spends its time in per-operation
overhead, not arithmetic.  :func:`train_euler_ensemble` stacks the ``K`` models'
parameters (:func:`torch.func.stack_module_state`) and runs the forward pass,
the backward pass and Adam once for all of them: the models' convolutions are
one grouped convolution (images) or batched matrix products (points), the heads
one batched matrix product.  This is the batched form of ``torch.vmap`` over the
models, without vmap's per-operation cost, which on these tiny layers was
larger than the arithmetic.

The forward pass is the chapter's own Euler step, written out::

    z_{n+1} = z_n + h f(z_n),   n = 0 ... 1/h - 1,   logits = head(z_N)

which is what ``torchdiffeq.odeint(..., method="euler", step_size=h)`` computes
(tested), without its per-step bookkeeping.  Each model draws its batches from
its own seeded generator exactly as :func:`resode_tut.train_node` does, so model
``k`` sees the batches a lone ``train_node(seed=seeds[k])`` would see, and ends
with the same weights up to floating-point rounding (tested).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import stack_module_state

from .node import NeuralODE
from .node_training import NodeHistory
from .progress import progress as progress_bar
from .solvers import Solver

__all__ = ["euler_logits", "train_euler_ensemble"]


def _num_steps(step_size: float) -> int:
    steps = round(1 / step_size)
    if not (0 < step_size <= 1) or not math.isclose(steps * step_size, 1.0, rel_tol=1e-9):
        raise ValueError(f"step size {step_size!r} does not divide [0, 1] into whole steps: "
                         "use h = 1/N for an integer N >= 1")
    return steps


def _stacked_layers(field: nn.Module, params: dict) -> list:
    """The field's layers for all ``K`` models at once, checked and with the weights
    reshaped once per forward pass (not once per Euler step).

    Images (Conv2d fields): ``("conv2d", weight, bias, padding)`` for one grouped
    convolution, group ``k`` holding model ``k``'s weights (a reshape of the stack).
    Points (Conv1d fields): ``("bmm", weight, bias, kernel, padding)``, a batched matrix
    product over the models with the weight as (K, kernel C_in, C_out).  ``("relu",)``.
    """
    out = []
    for name, layer in field.net.named_children():
        if isinstance(layer, nn.ReLU):
            out.append(("relu",))
            continue
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d)) or layer.groups != 1 or any(
                s != 1 for s in layer.stride) or any(d != 1 for d in layer.dilation) or \
                layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"the ensemble trainer runs fields made of ReLU and plain "
                             f"Conv1d/Conv2d layers (SphereField, ImageField), not {layer}")
        w, b = params[f"field.net.{name}.weight"], params[f"field.net.{name}.bias"]
        if isinstance(layer, nn.Conv2d):
            out.append(("conv2d", w.flatten(0, 1), b.flatten(), layer.padding))
        else:                                         # (K, C_out, C_in, kw) -> (K, kw C_in, C_out)
            out.append(("bmm", w.permute(0, 3, 2, 1).reshape(w.shape[0], -1, w.shape[1]),
                        b.unsqueeze(1), w.shape[3], layer.padding[0]))
    return out


def _stacked_field(layers: list, z: torch.Tensor) -> torch.Tensor:
    """``f_k(z_k)`` for every model ``k`` at once, ``z``: (K, B, *state).

    Images: one grouped convolution per layer.  Points (state (K, B, d): one channel on
    d positions): channels last, each position's zero-padded neighbourhood stacked along
    the channels, then a batched matrix product; on these tiny layers the grouped
    convolution took 3-4x longer on a CPU, while on the images the batched product did.
    """
    K, B = z.shape[:2]
    if any(layer[0] == "conv2d" for layer in layers):
        u = z.transpose(0, 1).reshape(B, K * z.shape[2], *z.shape[3:])
        for layer in layers:
            u = torch.relu(u) if layer[0] == "relu" else nn.functional.conv2d(
                u, layer[1], layer[2], padding=layer[3], groups=K)
        return u.reshape(B, K, *z.shape[2:]).transpose(0, 1)
    u = z.unsqueeze(-1)                                             # (K, B, d, C = 1)
    d = z.shape[2]
    for layer in layers:
        if layer[0] == "relu":
            u = torch.relu(u)
            continue
        _, wt, b, kw, pad = layer
        if kw != 1:
            padded = nn.functional.pad(u, (0, 0, pad, pad))
            d = d + 2 * pad - kw + 1
            u = torch.cat([padded[:, :, j:j + d] for j in range(kw)], dim=-1)
        u = torch.baddbmm(b, u.reshape(K, -1, wt.shape[1]), wt).view(K, B, d, -1)
    return u.squeeze(-1)


def euler_logits(model: NeuralODE, params: dict, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of ``K`` models with stacked weights, Euler with ``steps`` steps on [0, 1].

    Parameters
    ----------
    model : NeuralODE
        Gives the architecture (its own weights are not used): a
        :class:`~resode_tut.SphereField` or :class:`~resode_tut.ImageField` field.
    params : dict of str to torch.Tensor
        The models' weights stacked along a new first dimension ``K``
        (:func:`torch.func.stack_module_state`).
    x : torch.Tensor, shape (K, B, *state_shape)
        Initial states, one batch per model.
    steps : int
        ``N = 1/h``.

    Returns
    -------
    torch.Tensor, shape (K, B, num_classes)
    """
    h = 1.0 / steps
    layers = _stacked_layers(model.field, params)
    z = x
    for _ in range(steps):
        z = z + h * _stacked_field(layers, z)
    w, b = params["head.weight"], params["head.bias"]          # (K, C, D), (K, C)
    return torch.baddbmm(b.unsqueeze(1), z.flatten(2), w.transpose(1, 2))


def train_euler_ensemble(models, data, step_size: float, iterations: int, lr: float = 1e-4,
                         batch_size: int = 128, seeds=None, log_every: int = 50,
                         progress: bool = False) -> list[NodeHistory]:
    """Train ``K`` Neural ODEs of one architecture together: Adam on cross-entropy,
    gradients by backpropagation through Euler at ``step_size``.

    Parameters
    ----------
    models : sequence of NeuralODE
        Same architecture, different initial weights (e.g. seeds); trained in
        place, and each one's ``solver`` set to ``Solver("euler", step_size)``.
    data : tuple
        ``(x_train, y_train, ...)``.
    step_size : float
        ``h = 1/N``.
    iterations : int
        Optimizer steps.
    lr : float
        Adam's learning rate (the paper: 1e-4).
    batch_size : int
        Inputs per step and model.
    seeds : sequence of int, optional
        Batch seeds, one per model (default ``0 ... K-1``); batches are drawn with
        replacement, as by :func:`resode_tut.train_node`.
    log_every : int
        Iterations between entries of each history.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of NodeHistory
        One per model (``nfe``: ``N`` field evaluations forward, as counted for
        one model; the backward's are not field calls here).
    """
    models = list(models)
    if not models:
        raise ValueError("models is empty: pass at least one NeuralODE")
    names = [[n for n, _ in m.named_parameters()] for m in models]
    if any(n != names[0] for n in names) or any(
            p.shape != q.shape for m in models for p, q in zip(m.parameters(),
                                                             models[0].parameters())):
        raise ValueError("the models differ in architecture: an ensemble needs one "
                         "architecture with different weights")
    seeds = list(range(len(models))) if seeds is None else list(seeds)
    if len(seeds) != len(models):
        raise ValueError(f"{len(seeds)} seeds for {len(models)} models: give one each")
    steps = _num_steps(step_size)
    x_train, y_train = data[0], data[1]
    params, _ = stack_module_state(models)          # (K, ...) leaves that require grad
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    opt = torch.optim.Adam(params.values(), lr=lr)
    classes = models[0].head.out_features
    hists = [NodeHistory() for _ in models]
    window = []
    for it in progress_bar(range(1, iterations + 1), "iterations", enabled=progress):
        idx = torch.stack([torch.randint(len(x_train), (batch_size,), generator=g)
                           for g in gens])
        logits = euler_logits(models[0], params, x_train[idx], steps)      # (K, B, C)
        losses = nn.functional.cross_entropy(logits.reshape(-1, classes), y_train[idx].flatten(),
                                             reduction="none").view(len(models), -1).mean(1)
        if not torch.isfinite(losses).all():
            raise FloatingPointError(f"a training loss became non-finite at iteration {it} "
                                     f"(h = {step_size}): lower lr")
        opt.zero_grad()
        losses.sum().backward()       # each model's loss reaches only its own slice
        opt.step()
        window.append(losses.detach())
        if it % log_every == 0 or it == iterations:
            mean = torch.stack(window).mean(0)
            for k, hist in enumerate(hists):
                hist.iteration.append(it)
                hist.loss.append(float(mean[k]))
                hist.solver.append(Solver("euler", step_size))
                hist.nfe.append(float(steps))
            window = []
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][k])
            m.solver = Solver("euler", step_size)
    return hists

