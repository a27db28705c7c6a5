r"""The four-stage Bottleneck ResNet of paper A's Table 2 on CIFAR-10 (its official
``is_ode_like_CIFAR.py``: ``IResNetAuto2`` trained tied, ``ResNetMemoryCustom`` untied).

Each stage is a down-sampling Bottleneck block (unscaled, ReLU after the sum) followed by a
:class:`~resode_tut.stack.ResidualStack` of ``N - 1`` pre-activation Bottleneck functions
added with weight ``1/(N - 1)`` (Euler), where ``N`` is the stage's entry of ``layers``
(the official ``[4, 4, 32, 4]``); a ReLU follows every stage. Tied (``tied=True``), a
stage's functions are one module used at every step, as the official ``ImplicitNet``;
:func:`untie_stage` copies it into ``N - 1`` independent ones for fine-tuning.

``width`` scales the official channels (64, 128, 256, 512 planes, four times as many
outputs): ``width=64`` is the paper's network, smaller ones fit a CPU.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .cifar_resnet import untie
from .stack import ResidualStack

__all__ = ["Bottleneck", "PreActBottleneck", "BottleneckResNet", "untie_stage"]

EXPANSION = 4


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class Bottleneck(nn.Module):
    """A stage's first block: ``ReLU(BN(conv1x1(ReLU(BN(conv3x3/s(ReLU(BN(conv1x1(x)))))))) +
    shortcut(x))``, the stride on the 3x3 convolution (torchvision's v1.5).

    Shapes
    ------
    (B, inplanes, H, W) -> (B, 4 planes, H / stride, W / stride)
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            _conv(inplanes, planes, 1), nn.BatchNorm2d(planes), nn.ReLU(),
            _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes), nn.ReLU(),
            _conv(planes, EXPANSION * planes, 1), nn.BatchNorm2d(EXPANSION * planes))
        self.shortcut = nn.Identity()
        if stride != 1 or inplanes != EXPANSION * planes:
            self.shortcut = nn.Sequential(_conv(inplanes, EXPANSION * planes, 1, stride),
                                          nn.BatchNorm2d(EXPANSION * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, (B, inplanes, H, W) -> (B, 4 planes, H / s, W / s)."""
        return torch.relu(self.body(x) + self.shortcut(x))


class PreActBottleneck(nn.Module):
    """A residual function of a stage (the official ``MBottleneck``):
    ``f(x) = BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(ReLU(x)))))))))``, channels and size
    kept.

    Shapes
    ------
    (B, 4 planes, H, W) -> (B, 4 planes, H, W)
    """

    def __init__(self, planes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), _conv(EXPANSION * planes, planes, 1), nn.BatchNorm2d(planes), nn.ReLU(),
            _conv(planes, planes, 3), nn.BatchNorm2d(planes), nn.ReLU(),
            _conv(planes, EXPANSION * planes, 1), nn.BatchNorm2d(EXPANSION * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``, shape kept."""
        return self.body(x)


class BottleneckResNet(nn.Module):
    """Stem, four stages (a :class:`Bottleneck` block then a :class:`ResidualStack` of
    :class:`PreActBottleneck` functions, ReLU after), average pooling and a linear head.

    Parameters
    ----------
    layers : sequence of 4 int
        ``N`` per stage, each at least 2: the first block and ``N - 1`` residual functions
        (the paper's Table 2: ``(4, 4, 32, 4)``).
    width : int
        Planes of the first stage (the paper: 64); stage ``s`` has ``width * 2**s`` planes
        and ``4 * width * 2**s`` channels.
    tied : bool
        One residual function per stage, used at each of its ``N - 1`` steps.
    adjoint : bool or sequence of 4 bool
        Which stages differentiate their residual functions with the memory-free adjoint
        (a bool: all of them). Paper A fine-tunes the third stage with it; the official
        code silently uses backprop for stages of at most 10 functions.
    classes : int
    seed : int
        Seeds the initial weights (convolutions Kaiming-normal, fan out; BatchNorm scale 1,
        shift 0, as the official code).

    Shapes
    ------
    (B, 3, 32, 32) -> logits (B, classes)
    """

    def __init__(self, layers=(4, 4, 32, 4), width: int = 64, tied: bool = False,
                 adjoint: bool = False, classes: int = 10, seed: int = 0):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 2 or width < 1:
            raise ValueError(f"need four stage depths >= 2 and width >= 1, got layers "
                             f"{layers}, width {width}")
        adjoint = (adjoint,) * 4 if isinstance(adjoint, bool) else tuple(adjoint)
        if len(adjoint) != 4 or not all(isinstance(a, bool) for a in adjoint):
            raise ValueError(f"adjoint must be a bool or four bools, got {adjoint!r}")
        self.layers, self.width, self.tied = layers, width, tied
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(_conv(3, width, 3), nn.BatchNorm2d(width), nn.ReLU())
            blocks, stages, inplanes = [], [], width
            for s, n in enumerate(layers):
                planes = width * 2 ** s
                blocks.append(Bottleneck(inplanes, planes, stride=1 if s == 0 else 2))
                inplanes = EXPANSION * planes
                fs = ([PreActBottleneck(planes)] * (n - 1) if tied
                      else [PreActBottleneck(planes) for _ in range(n - 1)])
                stages.append(ResidualStack(fs, adjoint=adjoint[s]))
            self.blocks, self.stages = nn.ModuleList(blocks), nn.ModuleList(stages)
            self.head = nn.Linear(inplanes, classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (B, 3, H, W) -> (B, classes)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BottleneckResNet expects images of shape (B, 3, H, W), got "
                             f"{tuple(x.shape)}")
        z = self.stem(x)
        for block, stage in zip(self.blocks, self.stages):
            z = torch.relu(stage(block(z)))
        return self.head(z.mean(dim=(2, 3)))


def untie_stage(model: BottleneckResNet, stage: int, depth: int) -> BottleneckResNet:
    """A copy of ``model`` whose stage ``stage`` has ``depth - 1`` independent residual
    functions (:func:`resode_tut.cifar_resnet.untie` of that stage's stack: a tied stage's
    one function copied to every step, the official fine-tuning start); the other stages
    are copied as they are.

    Parameters
    ----------
    model : BottleneckResNet
    stage : int
        0 to 3 (the paper: 2, the third).
    depth : int
        The stage's new ``N``, at least 2 (the paper: 32).
    """
    if stage not in range(4):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
    new = copy.deepcopy(model)
    new.stages[stage] = untie(model.stages[stage], depth - 1)
    new.layers = tuple(depth if s == stage else n for s, n in enumerate(model.layers))
    new.tied = False
    return new
