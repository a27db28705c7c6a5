"""Small matplotlib helpers shared by the chapters' figures (chapters 1-4)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.ticker as mticker

__all__ = ["depth_axis"]


def depth_axis(ax, depths: Sequence[int], label: str = "depth $N$") -> None:
    """Log-scale x axis with one plain tick label per depth (no 3x10^1 clutter).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    depths : sequence of int
        The depths to label.
    label : str
        Axis label.
    """
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(mticker.FixedLocator(list(depths)))
    ax.xaxis.set_major_formatter(mticker.FixedFormatter([str(d) for d in depths]))
    ax.xaxis.set_minor_locator(mticker.NullLocator())
    ax.set_xlabel(label)
