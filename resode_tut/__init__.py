"""resode_tut: residual networks as discretised Neural ODEs.

The library of the resode-tut book (``import resode_tut as rt``).  Everything
below is importable from ``rt`` directly; the chapters' sweeps, training runs
and plots live apart, in :mod:`resode_tut.experiments` (never imported here).

Residual networks as ODE solvers (Sander et al., 2022)
    :class:`ResidualStack` -- residual layers as Euler or Heun steps on [0, 1],
    optionally trained with the memory-free discrete adjoint (``adjoint=True``);
    :func:`reconstruct`, :func:`reverse_step`, :class:`ReconstructionError`,
    :class:`ReconstructionWarning` -- the adjoint's backward reconstruction and its
    self-check;
    :func:`solve_limit_ode`, :func:`ode_distance`, :class:`InterpolatedField` -- the
    Neural ODE a stack discretises and how far the stack is from it;
    :func:`euler_distance_bound` -- a computable Gronwall bound on that distance;
    :class:`TanhLayer`, :func:`tanh_stack`, :func:`weight_path` -- residual functions
    and weights that are smooth or i.i.d. in depth;
    :class:`CifarResNet`, :func:`untie`, :func:`recalibrate_batchnorm` -- a CIFAR
    ResNet whose tied stage can be untied into a deep one.

Neural ODEs and their solvers (Ott et al., 2021)
    :class:`Solver` -- one name for an ODE solver (method and step, or tolerances);
    :class:`NeuralODE`, :class:`SphereField`, :class:`ImageField` -- classifiers
    whose prediction may depend on the solver; :func:`train_node` -- their training
    loop; :func:`train_euler_ensemble` -- several seeds trained at once with Euler;
    :class:`StepSizeAdapter`, :class:`ToleranceAdapter` -- keep training in the ODE
    regime; :func:`ode_regime` -- is a trained model an ODE?

Data sets, measurement, set-up
    :mod:`resode_tut.datasets` -- concentric spheres, XOR, digits, CIFAR-10;
    :class:`SavedTensorsCounter`, :class:`CudaPeak` -- memory kept for backward and
    CUDA peaks; :func:`loglog_slope` -- convergence rates; :func:`setup` -- run mode
    (``RESODE_MODE``), device, threads and seeds.

Past one device (chapter 7)
    :mod:`resode_tut.distributed` -- ``torchrun`` process groups, DDP wrapping and
    a global batch split between processes; :mod:`resode_tut.checkpoint` -- atomic,
    safely loaded training checkpoints tied to their configuration.
"""
from . import checkpoint, datasets, distributed
from .adaptation import StepSizeAdapter, ToleranceAdapter, initial_step_size
from .adjoint import ReconstructionError, ReconstructionWarning, reconstruct, reverse_step
from .bounds import euler_distance_bound
from .cifar_resnet import CifarResNet, ConvResidual, recalibrate_batchnorm, untie
from .ensemble import train_euler_ensemble
from .limit import LIMIT_SOLVER, InterpolatedField, ode_distance, solve_limit_ode
from .memory import CudaPeak, SavedTensorsCounter
from .node import ImageField, NeuralODE, SphereField
from .node_training import NodeHistory, train_node
from .ode_regime import RegimeReport, ode_regime
from .rates import loglog_slope
from .residual_functions import TanhLayer, tanh_stack
from .runtime import Runtime, get_mode, get_threads, seed_everything, setup
from .solvers import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SOLVERS, Solver
from .stack import SCHEMES, ResidualStack
from .weights import WEIGHT_KINDS, total_variation, weight_path

__version__ = "0.2.0"

__all__ = [
    # residual networks as ODE solvers
    "ResidualStack", "SCHEMES", "reconstruct", "reverse_step", "ReconstructionError",
    "ReconstructionWarning", "solve_limit_ode", "ode_distance", "InterpolatedField",
    "LIMIT_SOLVER",
    "euler_distance_bound", "TanhLayer", "tanh_stack", "weight_path", "total_variation",
    "WEIGHT_KINDS", "CifarResNet", "ConvResidual", "untie", "recalibrate_batchnorm",
    # Neural ODEs and their solvers
    "Solver", "SOLVERS", "FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "NeuralODE",
    "SphereField", "ImageField", "train_node", "NodeHistory", "train_euler_ensemble",
    "StepSizeAdapter",
    "ToleranceAdapter", "initial_step_size", "ode_regime", "RegimeReport",
    # data, measurement, set-up
    "datasets", "SavedTensorsCounter", "CudaPeak", "loglog_slope", "setup", "Runtime",
    "get_mode", "get_threads", "seed_everything", "__version__",
    # past one device
    "distributed", "checkpoint",
]
