"""A small CIFAR ResNet whose residual part is one :class:`ResidualStack`.

Sander et al. (2022)'s CIFAR network: a stem (5 x 5 convolution with stride 3,
3 -> C channels, BatchNorm, ReLU; 32 x 32 images become 10 x 10 maps), a stage
of ``N`` residual functions ``conv3x3-BN-ReLU-conv3x3-BN`` (the last BatchNorm's
scale and shift start at 0, so every function starts as 0 and the stage as
the identity), global average pooling and a linear head.

:func:`untie` is the fine-tuning recipe's first step: a network trained with
*tied* weights (one function used at every step, a discretised autonomous ODE)
becomes a deep stage of ``N`` independent copies of that function, which
computes nearly the same thing (the same ODE on a finer grid) and can then be
fine-tuned layer by layer.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .stack import ResidualStack

__all__ = ["ConvResidual", "CifarResNet", "untie"]


class ConvResidual(nn.Module):
    """``f(x) = BN(conv(ReLU(BN(conv(x)))))``, channels and size preserved.

    Parameters
    ----------
    channels : int
    zero_init : bool
        Start the last BatchNorm's scale and shift at 0 (``f = 0`` at init).

    Shapes
    ------
    (B, channels, H, W) -> (B, channels, H, W)
    """

    def __init__(self, channels: int, zero_init: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if zero_init:
            nn.init.zeros_(self.bn2.weight)
            nn.init.zeros_(self.bn2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``, shape (B, C, H, W) -> (B, C, H, W)."""
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class CifarResNet(nn.Module):
    """Stem, one residual stage (a :class:`ResidualStack`), pooling and a linear head.

    Parameters
    ----------
    depth : int
        ``N``, the number of residual functions of the stage.
    channels : int
        ``C``, the width of the stage.
    tied : bool
        One :class:`ConvResidual` used at every step (shared weights) instead of
        ``N`` independent ones.
    scheme : {"euler", "heun"}
    adjoint : bool
        Differentiate the stage with the memory-free discrete adjoint.
    classes : int
    zero_init : bool
        Start every residual function at 0 (last BatchNorm's scale and shift 0);
        ``False`` keeps PyTorch's default initialisation (i.i.d. functions).
    seed : int
        Seeds the initial weights.

    Shapes
    ------
    (B, 3, 32, 32) -> logits (B, classes)
    """

    def __init__(self, depth: int, channels: int = 16, tied: bool = False,
                 scheme: str = "euler", adjoint: bool = False, classes: int = 10,
                 zero_init: bool = True, seed: int = 0):
        super().__init__()
        if depth < 1 or channels < 1:
            raise ValueError(f"need depth >= 1 and channels >= 1, got {depth}, {channels}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(3, channels, 5, stride=3, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU())
            if tied:
                functions = [ConvResidual(channels, zero_init)] * depth
            else:
                functions = [ConvResidual(channels, zero_init) for _ in range(depth)]
            self.stage = ResidualStack(functions, scheme=scheme, adjoint=adjoint)
            self.head = nn.Linear(channels, classes)
        self.tied = tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (B, 3, H, W) images -> (B, 10)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"CifarResNet expects images of shape (B, 3, H, W), got "
                             f"{tuple(x.shape)}")
        z = self.stage(self.stem(x))
        return self.head(z.mean(dim=(2, 3)))


def untie(model, depth: int, adjoint: bool | None = None):
    """A copy of ``model`` whose stage has ``depth`` independent residual functions.

    Function ``n`` of the new stage is a copy of the old stage's function at the
    same time ``t = n h`` (nearest earlier one), weights and BatchNorm statistics
    included: a tied stage becomes ``depth`` copies of its one function, i.e. the
    same autonomous ODE on a grid of step ``1/depth``.  Stem and head are copied.

    Parameters
    ----------
    model : CifarResNet or ResidualStack
        A network with a ``stage``, or a stack itself (any residual functions).
    depth : int
        ``N`` of the new stage.
    adjoint : bool, optional
        The new stage's ``adjoint`` flag (default: the old one's).

    Returns
    -------
    CifarResNet or ResidualStack
        The same kind as ``model``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if isinstance(model, ResidualStack):
        return _untied_stack(model, depth, adjoint)
    if not isinstance(model, CifarResNet):
        raise TypeError(f"untie takes a CifarResNet or a ResidualStack, got "
                        f"{type(model).__name__}: for a network of your own, untie its "
                        "stack (untie(net.stage, depth)) and put the copy in its place")
    new = copy.deepcopy(model)
    new.stage = _untied_stack(model.stage, depth, adjoint)
    new.tied = False
    return new


def _untied_stack(old: ResidualStack, depth: int, adjoint) -> ResidualStack:
    old.scheme.check_depth(depth)
    times = old.scheme.function_times(depth)
    source = [min(int(t * old.num_steps + 1e-9), old.depth - 1) for t in times.tolist()]
    functions = [copy.deepcopy(old.functions[k]) for k in source]
    return ResidualStack(functions, scheme=old.scheme,
                         adjoint=old.adjoint if adjoint is None else adjoint,
                         preserve_rng_state=old.preserve_rng_state,
                         reconstruction_tol=old.reconstruction_tol, strict=old.strict)
