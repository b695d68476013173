"""Readable log axes and distinct colours for every qscale plot (the law plots and the study reports).

A study's D axis often spans less than a decade (16K–102K tokens): matplotlib's default log locator labels
only the decades there, i.e. one tick. :class:`ReadableLogLocator` picks its sub-decade ticks from the
visible range at draw time (1-2-3-5-7 within ~1.5 decades, 1-2-5 within ~3, decades beyond), and
:func:`short_number` labels them plainly (``20K``, ``0.05``). Lines get a qualitative colormap (``tab10``,
``tab20`` beyond 10 groups), never a ramp of similar hues.
"""

from __future__ import annotations

import math

_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def short_number(v: float, pos: int | None = None) -> str:
    """``16384`` → ``16K``, ``2e9`` → ``2B``, ``0.05`` → ``0.05`` (three significant digits at most)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    for scale, suffix in _SUFFIXES:
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _subs(vmin: float, vmax: float) -> tuple[float, ...]:
    if vmin <= 0 or vmax <= 0:
        return (1.0,)
    decades = abs(math.log10(vmax / vmin))
    if decades <= 1.5:
        return (1.0, 2.0, 3.0, 5.0, 7.0)
    if decades <= 3:
        return (1.0, 2.0, 5.0)
    return (1.0,)


def readable_log_locator():
    """A ``LogLocator`` whose sub-decade ticks follow the visible range (several labels on short ranges)."""
    from matplotlib.ticker import LogLocator

    class ReadableLogLocator(LogLocator):
        def tick_values(self, vmin, vmax):
            self.set_params(subs=_subs(min(vmin, vmax), max(vmin, vmax)))
            return super().tick_values(vmin, vmax)

    return ReadableLogLocator(base=10.0, numticks=12)


def readable_log_axes(ax, x: bool = True, y: bool = True) -> None:
    """Labelled ticks on the log axes of ``ax`` (call after setting the log scales); minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for on, axis in ((x, ax.xaxis), (y, ax.yaxis)):
        if on and axis.get_scale() == "log":
            axis.set_major_locator(readable_log_locator())
            axis.set_major_formatter(FuncFormatter(short_number))
            axis.set_minor_formatter(NullFormatter())


def distinct_colors(n: int) -> list:
    """``n`` colours from a qualitative colormap (``tab10``; ``tab20`` for 11–20; cycled beyond)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    k = cmap.N
    return [cmap(i % k) for i in range(max(n, 0))] if n else []
