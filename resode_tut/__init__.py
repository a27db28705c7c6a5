"""resode_tut: residual networks as discretised Neural ODEs.

The companion package of the resode-tut book.  Public API:

* :class:`ResidualStack` -- residual layers as Euler or Heun steps on [0, 1];
* :func:`solve_limit_ode`, :func:`ode_distance` -- the Neural ODE a stack
  discretises, and how far the stack is from it;
* :class:`TanhLayer`, :func:`tanh_stack`, :func:`weight_path` -- residual
  functions and weights that are smooth or i.i.d. in depth;
* :func:`euler_distance_bound` -- a computable Gronwall bound;
* :class:`LinearResNet`, :func:`train_gd`, :func:`smoothness`,
  :func:`linear_sweep` -- linear ResNets trained by gradient descent (chapter 2);
* :func:`setup` -- run mode (``RESODE_MODE``), device and seeds.

Chapter 6 (CIFAR-10): :func:`resode_tut.data.cifar10`, :mod:`resode_tut.cifar_resnet`
(``CifarResNet``, ``untie``), :mod:`resode_tut.cifar_training` and
:mod:`resode_tut.finetune` (the experiment, its cache and ``python -m resode_tut.finetune``).
"""
from . import cifar_resnet, cifar_training, classifier, data, gradient_methods, memory, node
from .adjoint import ReconstructionError, discrete_adjoint, reconstruct, reverse_step
from .bounds import euler_distance_bound
from .discretisation import DistanceSweep, distance_sweep
from .linear import (GDHistory, LinearResidual, LinearResNet, LinearSweep, linear_sweep,
                     paper_target, smoothness, train_gd)
from .limit import InterpolatedField, ode_distance, solve_limit_ode
from .mean_field import iid_plateau, tanh_mean_fields
from .plots import depth_axis
from .rates import loglog_slope
from .residual_functions import TanhLayer, tanh_mean_weights, tanh_stack
from .runtime import Runtime, get_mode, seed_everything, setup
from .stack import SCHEMES, ResidualStack
from .weights import WEIGHT_KINDS, total_variation, weight_path

__version__ = "0.1.0"

__all__ = [
    "ResidualStack", "SCHEMES", "discrete_adjoint", "reconstruct", "reverse_step", "ReconstructionError", "InterpolatedField", "solve_limit_ode", "ode_distance",
    "TanhLayer", "tanh_stack", "tanh_mean_weights", "iid_plateau", "tanh_mean_fields", "weight_path", "total_variation", "WEIGHT_KINDS",
    "euler_distance_bound", "DistanceSweep", "distance_sweep", "loglog_slope", "depth_axis",
    "LinearResidual", "LinearResNet", "GDHistory", "LinearSweep", "linear_sweep", "train_gd",
    "smoothness", "paper_target",
    "Runtime", "setup", "get_mode", "seed_everything", "__version__",
]


def __getattr__(name):
    # imported on first use, so that `python -m resode_tut.bench` (or .finetune) runs it fresh
    if name in ("bench", "finetune"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
