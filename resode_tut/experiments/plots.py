"""The figure style of every chapter (chapters 1-6) and small matplotlib helpers.

Every figure of the book is drawn for the page's text column: at a 1280 px window
the column is about 660 px wide, and a figure of width ``W`` inches drawn at
:data:`DPI` is scaled by ``660 / (DPI * W)`` when ``W`` exceeds 6.6 in.  With every
font at least :data:`MIN_FONT_PT` points (13.9 image pixels) and every figure at most
:data:`MAX_WIDTH_IN` inches wide, the smallest text is still at least 10 px tall on
the page; on a phone the figures keep their own size and scroll sideways (the book's
CSS), so their text stays 13.9 px tall (``browser_tests/test_readability.py`` measures
both).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.ticker as mticker

__all__ = ["depth_axis", "use_style", "DPI", "MIN_FONT_PT", "MAX_WIDTH_IN"]

DPI = 100            # dots per inch of every figure (inline and saved)
MIN_FONT_PT = 10     # the smallest font of any figure text
MAX_WIDTH_IN = 9.0   # the widest figure: 900 px, shown at 0.73 of its size

_STYLE = {
    "figure.dpi": DPI, "savefig.dpi": DPI,
    "font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11,
    "xtick.labelsize": MIN_FONT_PT, "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT, "legend.title_fontsize": MIN_FONT_PT,
    "figure.titlesize": 12,
}


def use_style() -> None:
    """Set matplotlib's defaults to the book's figure style (:data:`DPI`, fonts of
    at least :data:`MIN_FONT_PT` points).  Every chapter calls it once.
    """
    matplotlib.rcParams.update(_STYLE)


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
