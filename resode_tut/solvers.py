"""One way to name an ODE solver: :class:`Solver`, and the one table of methods.

Every function of the package that solves an ODE (:func:`resode_tut.solve_limit_ode`,
:class:`resode_tut.NeuralODE`, :func:`resode_tut.ode_regime`, the adapters) takes a
:class:`Solver` and hands it to ``torchdiffeq.odeint`` through its public arguments
(``method``, ``rtol``, ``atol``, ``options``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "SOLVERS", "Solver"]

#: Fixed-step torchdiffeq methods and their order.
FIXED_STEP_SOLVERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
#: Adaptive torchdiffeq methods and their order.
ADAPTIVE_SOLVERS = {"adaptive_heun": 2, "fehlberg2": 2, "bosh3": 3, "dopri5": 5, "dopri8": 8}
#: Every method a :class:`Solver` accepts.
SOLVERS = (*FIXED_STEP_SOLVERS, *ADAPTIVE_SOLVERS)


def _positive(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class Solver:
    """An ODE solver on ``t`` in [0, 1]: a fixed-step method with ``step_size``, or an
    adaptive one with tolerances.

    Parameters
    ----------
    method : str
        One of :data:`SOLVERS` (torchdiffeq's names).
    step_size : float, optional
        Step of a fixed-step method, in (0, 1]; not for adaptive methods.
    tol : float, optional
        Relative tolerance ``rtol`` of an adaptive method (> 0, finite).
    atol : float, optional
        Absolute tolerance; defaults to ``tol``.

    Examples
    --------
    >>> Solver("euler", step_size=1/8), Solver("dopri5", tol=1e-7, atol=1e-9)
    """

    method: str
    step_size: float | None = None
    tol: float | None = None
    atol: float | None = None

    def __post_init__(self):
        if self.method not in SOLVERS:
            raise ValueError(f"unknown solver {self.method!r}: choose one of {SOLVERS}")
        if self.method in FIXED_STEP_SOLVERS:
            if not _positive(self.step_size) or self.step_size > 1:
                raise ValueError(f"{self.method} needs a step_size in (0, 1], "
                                 f"got {self.step_size!r}")
            if self.tol is not None or self.atol is not None:
                raise ValueError(f"{self.method} has a fixed step: give step_size, not tol")
        else:
            if not _positive(self.tol):
                raise ValueError(f"{self.method} is adaptive: give a finite tol > 0, "
                                 f"got {self.tol!r}")
            if self.atol is not None and not _positive(self.atol):
                raise ValueError(f"atol must be finite and > 0, got {self.atol!r}")
            if self.step_size is not None:
                raise ValueError(f"{self.method} is adaptive: give tol, not step_size")

    @property
    def adaptive(self) -> bool:
        """True for an adaptive method (tolerances), False for a fixed step."""
        return self.method in ADAPTIVE_SOLVERS

    @property
    def order(self) -> int:
        """The method's order of accuracy."""
        return {**FIXED_STEP_SOLVERS, **ADAPTIVE_SOLVERS}[self.method]

    def __str__(self):
        if self.step_size is not None:
            n = 1 / self.step_size
            return f"{self.method}, h=1/{n:.0f}" if abs(n - round(n)) < 1e-9 else \
                f"{self.method}, h={self.step_size:.3g}"
        atol = "" if self.atol is None else f", atol={self.atol:.0e}"
        return f"{self.method}, tol={self.tol:.0e}{atol}"

    def odeint_kwargs(self, **options) -> dict:
        """Keyword arguments for ``torchdiffeq.odeint``; ``options`` are added to its
        ``options`` (e.g. ``step_t`` for an adaptive method).
        """
        if not self.adaptive:
            return {"method": self.method, "options": {"step_size": self.step_size, **options}}
        return {"method": self.method, "rtol": self.tol,
                "atol": self.tol if self.atol is None else self.atol,
                **({"options": options} if options else {})}
