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
(tested), without its per-step bookkeeping: the same grid of steps (:func:`euler_grid`;
``h`` need not divide 1, the last step is then shorter), so the models may each have
their own step.  That is what step-size adaptation needs: with one
:class:`~resode_tut.StepSizeAdapter` per model, each model's step is checked and
adapted as :func:`resode_tut.train_node` would, while the models train together (a
model with fewer steps than another idles, ``dt = 0``, for the rest).  Each model
draws its batches from its own seeded generator exactly as
:func:`resode_tut.train_node` does, so model ``k`` sees the batches a lone
``train_node(seed=seeds[k])`` would see, and ends with the same weights up to
floating-point rounding (tested).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import stack_module_state

from .node import NeuralODE
from .node_training import NodeHistory, check_training_data, epoch_batches
from .progress import progress as progress_bar
from .solvers import Solver

__all__ = ["euler_grid", "euler_logits", "train_euler_ensemble"]


def euler_grid(step_size: float, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The steps ``dt_n`` that torchdiffeq's fixed-grid Euler takes on [0, 1].

    The grid is ``0, h, 2h, ...`` up to the first point at or past 1, which is replaced
    by 1 (torchdiffeq's construction, in the dtype of the time points).

    Parameters
    ----------
    step_size : float
        ``h`` in (0, 1].
    dtype : torch.dtype
        The dtype of the time points (torchdiffeq takes the state's).
    device : torch.device or str, optional
        Where the steps live (the state's device; default: the CPU).

    Returns
    -------
    torch.Tensor, shape (N,)
        ``N = 1/h`` steps of ``h`` when ``1/h`` is an integer, else ``ceil(1/h)`` steps,
        the last one shorter.
    """
    Solver("euler", step_size)          # names a step outside (0, 1]
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    niters = int(torch.ceil((t[1] - t[0]) / step_size + 1).item())
    grid = torch.arange(0, niters, dtype=dtype) * step_size + t[0]
    grid[-1] = t[-1]
    return grid.diff().to(device)


def _grids(step_sizes, dtype, device=None) -> torch.Tensor:
    """Per-model Euler steps, (K, N_max), zero-padded: a model with fewer steps idles."""
    grids = [euler_grid(h, dtype) for h in step_sizes]
    out = torch.zeros(len(grids), max(len(g) for g in grids), dtype=dtype)
    for k, g in enumerate(grids):
        out[k, :len(g)] = g
    return out.to(device)


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


def euler_logits(model: NeuralODE, params: dict, x: torch.Tensor, dt) -> torch.Tensor:
    """Logits of ``K`` models with stacked weights, Euler on [0, 1].

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
    dt : int or torch.Tensor
        The number of steps ``N`` (steps ``1/N``), the same for every model; or each
        model's step lengths, shape (K, N_max), zero after a model's last step (as
        :func:`euler_grid` gives them), moved to ``x``'s device and dtype.

    Returns
    -------
    torch.Tensor, shape (K, B, num_classes)
    """
    if not isinstance(dt, torch.Tensor):
        dt = euler_grid(1 / dt, x.dtype).expand(x.shape[0], -1)
    if dt.ndim != 2 or dt.shape[0] != x.shape[0]:
        raise ValueError(f"dt of shape {tuple(dt.shape)}: expected (K = {x.shape[0]}, "
                         "N_max)")
    layers = _stacked_layers(model.field, params)
    dts = dt.to(device=x.device, dtype=x.dtype).T.reshape(dt.shape[1], -1,
                                                          *[1] * (x.ndim - 1))
    z = x
    for dt in dts:                                  # (K, 1, ...): one step of each model
        z = z + dt * _stacked_field(layers, z)
    w, b = params["head.weight"], params["head.bias"]          # (K, C, D), (K, C)
    return torch.baddbmm(b.unsqueeze(1), z.flatten(2), w.transpose(1, 2))


def train_euler_ensemble(models, data, step_size, iterations: int, lr: float = 1e-4,
                         batch_size: int = 128, seeds=None, adapters=None, log_every: int = 50,
                         progress: bool = True) -> list[NodeHistory]:
    """Train ``K`` Neural ODEs of one architecture together: Adam on cross-entropy,
    gradients by backpropagation through Euler, each model at its own step.

    Parameters
    ----------
    models : sequence of NeuralODE
        Same architecture, different initial weights (e.g. seeds); trained in
        place, and each one's ``solver`` set to its final Euler solver.
    data : tuple
        ``(x_train, y_train, ...)``.
    step_size : float or sequence of float or None
        ``h`` in (0, 1] for every model, or one per model; None with ``adapters``.
    iterations : int
        Optimizer steps.
    lr : float
        Adam's learning rate (the paper: 1e-4).
    batch_size : int
        Inputs per step and model.
    seeds : sequence of int, optional
        Batch seeds, one per model (default ``0 ... K-1``); batches come from shuffled
        epochs, as in :func:`resode_tut.train_node`.
    adapters : sequence of StepSizeAdapter, optional
        One per model: started on a first batch of the model's generator and
        updated every ``adapter.every`` iterations on the model's current batch,
        before the optimizer step, exactly as :func:`resode_tut.train_node` calls it;
        the adapter's ``step_size`` is then the model's step.
    log_every : int
        Iterations between entries of each history.
    progress : bool
        Show a progress bar (tqdm; off where ``TQDM_DISABLE=1``, as in the book's builds
        and the tests).

    Returns
    -------
    list of NodeHistory
        One per model (``nfe``: the model's Euler steps per iteration, i.e. its
        forward field evaluations; the backward's are not field calls here).
    """
    models = list(models)
    seeds, adapters = _check_ensemble(models, step_size, seeds, adapters)
    x_train, y_train = check_training_data(data, models[0].head.out_features, iterations,
                                           batch_size, log_every)
    batches = [epoch_batches(len(x_train), batch_size, torch.Generator().manual_seed(s))
               for s in seeds]
    hs = _initial_steps(models, x_train, batches, step_size, adapters)
    grids = _grids(hs, x_train.dtype, x_train.device)
    params, _ = stack_module_state(models)          # (K, ...) leaves that require grad
    opt = torch.optim.Adam(params.values(), lr=lr)
    classes = models[0].head.out_features
    hists = [NodeHistory() for _ in models]
    window, nfe_window = [], []
    for it in progress_bar(range(1, iterations + 1), "iterations", enabled=progress):
        idx = torch.stack([next(b) for b in batches])
        logits = euler_logits(models[0], params, x_train[idx], grids)     # (K, B, C)
        losses = nn.functional.cross_entropy(logits.reshape(-1, classes), y_train[idx].flatten(),
                                             reduction="none").view(len(models), -1).mean(1)
        if not torch.isfinite(losses).all():
            raise FloatingPointError(f"a training loss became non-finite at iteration {it} "
                                     f"(h = {hs}): lower lr")
        opt.zero_grad()
        losses.sum().backward()       # each model's loss reaches only its own slice
        window.append(losses.detach())
        nfe_window.append((grids > 0).sum(1))
        if adapters is not None and it % adapters[0].every == 0:
            hs = _adapt(adapters, models, params, x_train[idx], y_train[idx])
            grids = _grids(hs, x_train.dtype, x_train.device)
        opt.step()
        if it % log_every == 0 or it == iterations:
            _log(hists, it, window, nfe_window, hs)
            window, nfe_window = [], []
    _copy_back(models, params)
    for m, h in zip(models, hs):
        m.solver = Solver("euler", h)
    return hists


def _initial_steps(models, x_train, batches, step_size, adapters) -> list[float]:
    """Each model's first step size: its adapter's, started on the model's first batch
    (drawn from ``batches``, so not trained on), or ``step_size`` (one, or one a model).
    """
    if adapters is not None:
        for a, m, b in zip(adapters, models, batches):
            a.start(m, x_train[next(b)])
        return [a.step_size for a in adapters]
    hs = ([float(step_size)] * len(models) if isinstance(step_size, (int, float))
          else [float(h) for h in step_size])
    if len(hs) != len(models):
        raise ValueError(f"{len(hs)} step sizes for {len(models)} models: give one each")
    return hs


def _adapt(adapters, models, params, x, y) -> list[float]:
    """Update each model's adapter on its current batch ``x[k], y[k]`` (shapes
    ``(K, B, ...)``, ``(K, B)``) with the ensemble's current weights copied back into the
    models first; returns the new step sizes.
    """
    _copy_back(models, params)
    for k, (a, m) in enumerate(zip(adapters, models)):
        a.update(m, x[k], y[k])
    return [a.step_size for a in adapters]


def _check_ensemble(models, step_size, seeds, adapters):
    """The seeds and adapters of :func:`train_euler_ensemble`, checked against its models
    (one architecture, a seed and an adapter each, adapters that step Euler together, a
    step from the caller or from the adapters but not both).
    """
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
    if adapters is not None:
        adapters = list(adapters)
        if len(adapters) != len(models) or len({id(a) for a in adapters}) != len(adapters):
            raise ValueError(f"{len(adapters)} adapters for {len(models)} models: give each "
                             "model an adapter of its own")
        if not all(hasattr(a, "step_size") and hasattr(a, "update") for a in adapters):
            raise ValueError("the ensemble trains with Euler: its adapters must be "
                             "StepSizeAdapters (adapt a tolerance with train_node)")
        if len({a.every for a in adapters}) != 1:
            raise ValueError("the adapters check at different intervals (every): give them "
                             "one, the ensemble updates them together")
        if step_size is not None:
            raise ValueError("with adapters the step comes from them: pass step_size=None")
    elif step_size is None:
        raise ValueError("step_size is None: give a step (or adapters that choose it)")
    return seeds, adapters


def _log(hists, it, window, nfe_window, hs) -> None:
    """One history entry per model: mean loss and Euler steps over the window."""
    mean = torch.stack(window).mean(0)
    nfe = torch.stack(nfe_window).double().mean(0)
    for k, hist in enumerate(hists):
        hist.iteration.append(it)
        hist.loss.append(float(mean[k]))
        hist.solver.append(Solver("euler", hs[k]))
        hist.nfe.append(float(nfe[k]))


def _copy_back(models, params) -> None:
    """Write each model's slice of the stacked weights into the model."""
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][k])
