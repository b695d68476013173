"""The law plots as figure objects: several labelled log ticks on a short range, one distinct colour per
group, and the parity plot (observed vs predicted) in every ``fit --plot`` figure."""

import numpy as np
import pytest
from matplotlib.colors import to_hex

from qscale.laws import fit_law, get_law, plot_law_curves, plot_observed_vs_predicted
from qscale.laws.plot_style import distinct_colors, short_number

TRUE = {"k": 0.017, "alpha": 0.2261, "beta": 0.5251, "gamma": 5.4967}
D_SHORT = np.geomspace(16_384, 102_400, 5)  # the tiny study's checkpoints: less than one decade


def _grid():
    N, D, P = (a.ravel() for a in np.meshgrid([1e5, 4e5], D_SHORT, [2.0, 4.0], indexing="ij"))
    qid = get_law("qid").predict(TRUE, {"N": N, "D": D, "P": P})
    return {"N": N, "D": D, "P": P, "qid": qid * np.exp(0.02 * np.random.default_rng(0).standard_normal(len(N)))}


def labelled(ax, which: str = "x") -> list[str]:
    """The non-empty major tick labels inside the visible range after drawing."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    ticks = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
    pos = 0 if which == "x" else 1
    return [t.get_text() for t in ticks if t.get_text() and lo <= t.get_position()[pos] <= hi]


def test_grid_figure_has_readable_ticks_distinct_colours_and_the_parity_plot():
    data = _grid()
    fig = plot_observed_vs_predicted(fit_law("qid", data), data)
    lines_ax, parity_ax = fig.axes
    x_labels = labelled(lines_ax)
    assert len(x_labels) >= 3, x_labels  # matplotlib's default labels only 1e5 on 16K–102K
    assert "20K" in x_labels and "50K" in x_labels
    colours = {to_hex(line.get_color()) for line in lines_ax.lines}
    assert len(lines_ax.lines) == 4 and len(colours) == 4  # (N, P) groups: one distinct colour each
    assert (parity_ax.get_xlabel(), parity_ax.get_ylabel()) == ("predicted qid", "observed qid")
    assert len(parity_ax.collections) == 4 and len(labelled(parity_ax)) >= 2 and len(labelled(parity_ax, "y")) >= 2


def test_many_groups_still_give_the_parity_plot(qid_data):
    data = qid_data(0, 24)  # 24 distinct (N, P) pairs: no grid to draw lines through
    fig = plot_observed_vs_predicted(fit_law("qid", data), data)
    [ax] = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted qid", "observed qid")
    assert ax.lines and ax.get_xscale() == "log"


def test_law_curves_get_distinct_colours_and_short_ranges_get_labels():
    fig = plot_law_curves("qid", TRUE, "D", D_SHORT, [{"N": 1e5, "P": p} for p in (2.0, 3.0, 4.0, 8.0)])
    ax = fig.axes[0]
    assert len({to_hex(line.get_color()) for line in ax.lines}) == 4
    assert len(labelled(ax)) >= 3


def test_short_numbers_and_colours():
    assert [short_number(v) for v in (16_384, 2e5, 1e6, 2.5e9, 0.05, 3.0)] == [
        "16.4K",
        "200K",
        "1M",
        "2.5B",
        "0.05",
        "3",
    ]
    assert len({to_hex(c) for c in distinct_colors(10)}) == 10 and len({to_hex(c) for c in distinct_colors(20)}) == 20


@pytest.mark.parametrize("lo,hi,at_least", [(16_384, 102_400, 4), (1e3, 5e5, 5), (1e5, 1e11, 3)])
def test_log_locator_labels_every_range(lo, hi, at_least):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([lo, hi], [1, 2])
    ax.set_xscale("log")
    from qscale.laws.plot_style import readable_log_axes

    readable_log_axes(ax)
    assert len(labelled(ax)) >= at_least
    plt.close(fig)
