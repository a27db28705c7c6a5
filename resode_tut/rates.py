"""Convergence rates read off log-log data."""
from __future__ import annotations

import numpy as np

__all__ = ["loglog_slope"]


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``.

    Parameters
    ----------
    x : array-like, shape (K,)
        Positive values, ``K >= 2`` (e.g. depths).
    y : array-like, shape (K,)
        Positive, finite values (e.g. distances).

    Returns
    -------
    float
        ``p`` in the fit ``y ~ C x^p``; ``p = -1`` is a first-order rate in ``1/x``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-d arrays of equal length >= 2, got shapes {x.shape}, "
                         f"{y.shape}")
    if not (np.all(x > 0) and np.all(y > 0) and np.all(np.isfinite(y))):
        raise ValueError("log-log slope needs positive, finite values")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])
