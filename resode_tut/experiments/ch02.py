r"""Chapter 2 (implicit regularisation): linear ResNets ``x -> prod_n (I + A_n / N) x``
and their training by gradient descent.

Chapter 2 reproduces the implicit regularisation of Sander et al. (2022):
full-batch gradient descent started from smooth weights (``A_n = 0``) with a
small initial loss keeps ``max_n ||A_{n+1} - A_n|| = O(1/N)`` during the whole
training, so the trained ResNet stays within ``O(1/N)`` of a limit Neural ODE.

Step size and depth.  The gradient with respect to one ``A_n`` carries the
factor ``1/N`` of its layer, so plain gradient descent with a fixed ``lr``
slows down as ``N`` grows.  We use ``lr = lr_scale * N`` (``lr = 100`` at
``N = 100`` is the paper's setting): one iteration then moves the network's
function by the same amount at every depth, and "training time" is the
iteration count whatever ``N``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..limit import ode_distance
from ..progress import progress as progress_bar
from ..stack import ResidualStack
from .plots import depth_axis, use_style

__all__ = ["use_style", "LinearResidual", "LinearResNet", "GDHistory", "train_gd", "smoothness",
           "paper_target", "LinearSweep", "linear_sweep", "depth_axis"]


class LinearResidual(nn.Module):
    """``f(x) = A x`` for one layer; input (B, d) -> output (B, d)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for each row of ``x``, shape (B, d) -> (B, d)."""
        return x @ self.A.T


class LinearResNet(nn.Module):
    r"""``x_{n+1} = x_n + A_n x_n / N``, n = 0..N-1, with all ``A_n`` in one tensor.

    Parameters
    ----------
    A : torch.Tensor, shape (N, d, d)
        Initial weights (copied).

    Attributes
    ----------
    A : torch.nn.Parameter, shape (N, d, d)
    """

    def __init__(self, A: torch.Tensor):
        super().__init__()
        if A.dim() != 3 or A.shape[1] != A.shape[2]:
            raise ValueError(f"A must have shape (N, d, d), got {tuple(A.shape)}")
        self.A = nn.Parameter(A.detach().clone())

    @property
    def depth(self) -> int:
        """``N``, the number of residual layers."""
        return self.A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output ``x_N``; x of shape (B, d)."""
        N = self.depth
        for A_n in self.A:
            x = x + x @ A_n.T / N
        return x

    def matrix(self) -> torch.Tensor:
        """``prod_n (I + A_n / N)`` (last layer leftmost), shape (d, d)."""
        d = self.A.shape[1]
        return self(torch.eye(d, dtype=self.A.dtype, device=self.A.device)).T

    def to_stack(self) -> ResidualStack:
        """The same network as a :class:`ResidualStack` of :class:`LinearResidual`
        (Euler, ``h = 1/N``), e.g. for :func:`resode_tut.ode_distance`.
        """
        return ResidualStack([LinearResidual(A_n) for A_n in self.A])


def smoothness(A: torch.Tensor) -> float:
    r"""``N * max_n ||A_{n+1} - A_n||_F`` of weights ``A`` of shape (N, d, d).

    Bounded in ``N`` for weights that sample a Lipschitz path ``A(t)``
    (it tends to ``max |A'(t)|``); grows like ``N`` for i.i.d. weights.
    """
    if A.dim() != 3 or A.shape[0] < 2:
        raise ValueError(f"need weights of shape (N >= 2, d, d), got {tuple(A.shape)}")
    return float(A.shape[0] * (A[1:] - A[:-1]).flatten(1).norm(dim=1).max())


def paper_target(d: int = 2, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """The paper's target ``B = I + scale * randn(d, d)`` (fixed seed), float64.

    Parameters
    ----------
    d : int
        Dimension.
    seed : int
    scale : float
        Size of the random part.

    Returns
    -------
    torch.Tensor, shape (d, d)
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.eye(d, dtype=torch.float64) + scale * torch.randn(
        d, d, generator=gen, dtype=torch.float64)


@dataclass
class GDHistory:
    """What :func:`train_gd` recorded.

    Attributes
    ----------
    loss : list of float
        The loss before each iteration (``loss[k]`` at iteration ``k``) and
        after the last one.
    snapshots : dict[int, torch.Tensor]
        ``A`` (shape (N, d, d)) at each recorded iteration.
    iterations : int
        Iterations run.
    converged : bool
        Whether the loss went below ``tol``.
    """

    loss: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)
    iterations: int = 0
    converged: bool = False


def train_gd(model: LinearResNet, X: torch.Tensor, Y: torch.Tensor, lr_scale: float = 1.0,
             max_iter: int = 10_000, tol: float = 1e-5, record: tuple = (),
             progress: bool = False) -> GDHistory:
    r"""Full-batch gradient descent on ``mean((model(X) - Y)^2)``.

    Parameters
    ----------
    model : LinearResNet
        Trained in place.
    X : torch.Tensor, shape (B, d)
        Inputs; ``X = I`` in the paper's task (then ``model(X)^T`` is the product
        matrix).
    Y : torch.Tensor, shape (B, d)
        Targets; ``Y = B^T`` in the paper's task.
    lr_scale : float
        The step is ``lr = lr_scale * N`` (see the module's docstring).
    max_iter : int
        Most iterations.
    tol : float
        Stop once the loss is below ``tol``.
    record : tuple of int
        Iterations at which to keep a copy of the weights; a recorded
        iteration after convergence keeps the final weights.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    GDHistory
    """
    if X.shape != Y.shape or X.dim() != 2 or X.shape[1] != model.A.shape[1]:
        raise ValueError(f"X and Y must both have shape (B, {model.A.shape[1]}), "
                         f"got {tuple(X.shape)} and {tuple(Y.shape)}")
    if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
        raise ValueError("X or Y contains NaN or infinite values")
    lr = lr_scale * model.depth
    hist = GDHistory()
    record = set(record)
    bar = progress_bar(range(max_iter + 1), f"GD, N={model.depth}", enabled=progress)
    for k in bar:
        if k in record:
            hist.snapshots[k] = model.A.detach().clone()
        loss = (model(X) - Y).square().mean()
        hist.loss.append(loss.item())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at iteration {k}: lower lr_scale")
        if loss.item() < tol or k == max_iter:
            hist.converged = loss.item() < tol
            hist.iterations = k
            break
        grad, = torch.autograd.grad(loss, model.A)
        with torch.no_grad():
            model.A -= lr * grad
    for k in record:  # iterations after the stop keep the final weights
        hist.snapshots.setdefault(k, model.A.detach().clone())
    return hist


@dataclass
class LinearSweep:
    """Linear ResNets of several depths trained from the same task.

    Attributes
    ----------
    depths : list of int, length K
    times : list of int, length T
        Recorded training iterations.
    smoothness : numpy.ndarray, shape (T, K)
        ``N max_n ||A_{n+1} - A_n||`` at each recorded iteration and depth.
    distance : numpy.ndarray, shape (T, K)
        Mean over the inputs of ``max_n ||x_n - x(n/N)||`` to the limit ODE
        (``A(t)`` interpolated, solved with torchdiffeq).
    histories : dict[int, GDHistory]
        Per depth.
    """

    depths: list
    times: list
    smoothness: np.ndarray
    distance: np.ndarray
    histories: dict


def linear_sweep(depths, X: torch.Tensor, Y: torch.Tensor, times=(3, 10, 30, 100),
                 init: str = "zero", init_scale: float = 0.5, seed: int = 0,
                 lr_scale: float = 1.0, max_iter: int = 10_000, tol: float = 1e-5,
                 progress: bool = True) -> LinearSweep:
    """Train a :class:`LinearResNet` of every depth and measure it over training.

    Parameters
    ----------
    depths : sequence of int
    X : torch.Tensor, shape (B, d), float64
        Inputs (``X = I`` for the paper's task).
    Y : torch.Tensor, shape (B, d), float64
        Targets (``Y = B^T`` for the paper's task).
    times : sequence of int
        Iterations at which smoothness and ODE distance are measured (a time
        after convergence measures the final weights).
    init : {"zero", "iid"}
        ``A_n = 0`` (smooth) or ``A_n`` i.i.d. with entries ``N(0, init_scale^2)``.
    init_scale : float
        Standard deviation of the i.i.d. initialisation.
    seed : int
        Seed of the i.i.d. initialisation.
    lr_scale : float
        Passed to :func:`train_gd`.
    max_iter : int
        Passed to :func:`train_gd`.
    tol : float
        Passed to :func:`train_gd`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    LinearSweep
    """
    if init not in ("zero", "iid"):
        raise ValueError(f"unknown init {init!r}: choose 'zero' or 'iid'")
    d = X.shape[1]
    times = list(times)
    smooth = np.zeros((len(times), len(depths)))
    dist = np.zeros((len(times), len(depths)))
    histories = {}
    for j, N in enumerate(progress_bar(list(depths), f"depths ({init} init)", enabled=progress)):
        if init == "zero":
            A0 = torch.zeros(N, d, d, dtype=X.dtype)
        else:
            gen = torch.Generator().manual_seed(seed)
            A0 = init_scale * torch.randn(N, d, d, generator=gen, dtype=X.dtype)
        model = LinearResNet(A0)
        hist = train_gd(model, X, Y, lr_scale=lr_scale, max_iter=max_iter, tol=tol,
                        record=tuple(times))
        histories[N] = hist
        for i, k in enumerate(times):
            A = hist.snapshots[k]
            smooth[i, j] = smoothness(A)
            dist[i, j] = ode_distance(LinearResNet(A).to_stack(), X).mean().item()
    return LinearSweep(list(depths), times, smooth, dist, histories)
