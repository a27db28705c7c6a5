"""resode_tut: residual networks as discretised Neural ODEs.

The library of the resode-tut book (``import resode_tut as rt``).  Everything
below is importable from ``rt`` directly; the chapters' sweeps, training runs
and plots live apart, in :mod:`resode_tut.experiments` (never imported here).

Residual networks as ODE solvers (Sander et al., 2022)
    :class:`ResidualStack` -- residual layers as Euler or Heun steps on [0, 1],
    optionally trained with the memory-free discrete adjoint (``adjoint=True``);
    :mod:`resode_tut.schemes` (:class:`Scheme`, :class:`Euler`, :class:`Heun`,
    :class:`Momentum`, :class:`Coupling`, :class:`ReversibleHeun`) -- the one-step
    schemes: grid, step, reverse step (exact for the last three);
    :func:`adjoint_gradients` -- the discrete adjoint as a 15-line loop (the reference
    for the fast backward); :func:`one_evaluation_adjoint_gradients` -- its variant with
    one evaluation a step;
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
from . import checkpoint, datasets, distributed, schemes
from .adaptation import (
    PAPER_GAP_LIMIT,
    StepSizeAdapter,
    ToleranceAdapter,
    batch_check,
    initial_step_size,
)
from .adjoint import (
    AdjointState,
    ReconstructionError,
    ReconstructionWarning,
    adjoint_gradients,
    discrete_adjoint,
    one_evaluation_adjoint_gradients,
    reconstruct,
    reverse_step,
)
from .batchnorm import recalibrate_batchnorm
from .bounds import euler_distance_bound, euler_step_terms
from .cifar_resnet import CifarResNet, ConvResidual, untie
from .ensemble import euler_grid, euler_logits, train_euler_ensemble
from .limit import (
    LIMIT_SOLVER,
    WEIGHT_PATHS,
    InterpolatedField,
    knot_position,
    max_state_distance,
    ode_distance,
    solve_limit_ode,
)
from .memory import CudaPeak, SavedTensorsCounter
from .node import ImageField, NeuralODE, SphereField
from .node_training import NodeHistory, train_node
from .ode_regime import ODE_GAP_LIMIT, RegimeReport, default_test_solvers, ode_regime
from .parallel import default_processes, parallel_map
from .progress import progress as progress_bar
from .rates import loglog_slope
from .residual_functions import TanhLayer, tanh_mean_weights, tanh_stack
from .runtime import MODES, Runtime, get_mode, get_threads, seed_everything, setup
from .schemes import Coupling, Euler, Heun, Momentum, ReversibleHeun, Scheme, get_scheme
from .solvers import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SOLVERS, Solver
from .stack import SCHEMES, ResidualStack
from .weights import WEIGHT_KINDS, total_variation, weight_path

__version__ = "0.2.0"

__all__ = [
    # residual networks as ODE solvers
    "ResidualStack", "SCHEMES", "schemes", "Scheme", "Euler", "Heun", "Momentum", "Coupling",
    "ReversibleHeun", "get_scheme", "one_evaluation_adjoint_gradients",
    "discrete_adjoint", "adjoint_gradients", "AdjointState",
    "reconstruct", "reverse_step", "ReconstructionError",
    "ReconstructionWarning", "solve_limit_ode", "ode_distance", "InterpolatedField",
    "LIMIT_SOLVER", "WEIGHT_PATHS", "knot_position", "max_state_distance",
    "tanh_mean_weights",
    "euler_distance_bound", "euler_step_terms", "TanhLayer", "tanh_stack", "weight_path",
    "total_variation",
    "WEIGHT_KINDS", "CifarResNet", "ConvResidual", "untie", "recalibrate_batchnorm",
    # Neural ODEs and their solvers
    "Solver", "SOLVERS", "FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "NeuralODE",
    "SphereField", "ImageField", "train_node", "NodeHistory", "train_euler_ensemble",
    "euler_grid", "euler_logits", "StepSizeAdapter",
    "ToleranceAdapter", "initial_step_size", "batch_check", "PAPER_GAP_LIMIT", "ode_regime",
    "RegimeReport", "default_test_solvers", "ODE_GAP_LIMIT",
    # data, measurement, set-up
    "datasets", "SavedTensorsCounter", "CudaPeak", "loglog_slope", "setup", "Runtime",
    "get_mode", "get_threads", "seed_everything", "MODES", "parallel_map",
    "default_processes", "progress_bar", "__version__",
    # past one device
    "distributed", "checkpoint",
]
