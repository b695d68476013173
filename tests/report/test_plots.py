"""The study reports' plots as figure objects (captured before they become PNG bytes): several labelled ticks
across the tiny study's 16K–102K tokens, one distinct colour per model size, and the parity panels."""

from types import SimpleNamespace

import pytest
from matplotlib.colors import to_hex

from qscale.evaluate.noise import NoisePolicy
from qscale.laws import predict
from qscale.report import plots, qat_plots

D = [16_384, 32_768, 65_536, 102_400]
MODELS = [("xs", 1e5), ("s", 3e5), ("m", 9e5)]
QID = {"k": 0.017, "alpha": 0.2261, "beta": 0.5251, "gamma": 5.4967}
QAT = {"k": 2.0, "gamma_N": 0.3, "gamma_D": 0.1, "gamma_G": 0.5}


@pytest.fixture
def figures(monkeypatch):
    """The figures the report functions render (``to_png`` captured, nothing written)."""
    caught = []

    def keep(plt, fig):
        caught.append(fig)
        return b"png"

    monkeypatch.setattr(plots, "to_png", keep)
    monkeypatch.setattr(qat_plots, "to_png", keep)
    return caught


def labelled(ax) -> list[str]:
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_xlim())
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]


def _qid_rows():
    return [
        {
            "model": m,
            "N": n,
            "D": d,
            "P": p,
            "qid": float(predict("qid", QID, {"N": n, "D": d, "P": p})),
            "qid_se": 1e-6,
        }
        for m, n in MODELS
        for d in D
        for p in (2, 4)
    ]


def test_qid_vs_d_panels_have_readable_ticks_and_distinct_colours(figures):
    plots.plot_qid_vs_d(_qid_rows(), SimpleNamespace(params=QID), NoisePolicy(), "gptq")
    [fig] = figures
    for ax in fig.axes:
        assert len(labelled(ax)) >= 3, labelled(ax)  # the default log locator labels only 1e5 here
        assert len({to_hex(line.get_color()) for line in ax.lines}) == len(MODELS) == len(ax.lines)


def test_qid_parity_panel_is_drawn_with_one_colour_per_bit_width(figures):
    rows = _qid_rows()
    plots.plot_observed_vs_predicted({"gptq": rows}, {"gptq": SimpleNamespace(params=QID)}, NoisePolicy())
    [fig] = figures
    [ax] = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted QiD", "observed QiD")
    filled = [c for c in ax.collections if len(c.get_offsets())]
    assert len({to_hex(c.get_facecolor()[0]) for c in filled}) == 2


def test_qat_delta_vs_d_has_readable_ticks_and_distinct_colours(figures):
    rows = [
        {
            "model": m,
            "N": n,
            "D": d,
            "G": g,
            "G_eff": g,
            "scheme": "w4a4",
            "delta_se": 1e-6,
            "delta": float(qat_plots.predict_delta(QAT, n, d, g)),
        }
        for m, n in MODELS
        for d in D
        for g in (32, 128)
    ]
    qat_plots.delta_vs_d(rows, SimpleNamespace(params=QAT), NoisePolicy())
    qat_plots.observed_vs_predicted({"w4a4": rows}, {"w4a4": SimpleNamespace(params=QAT)}, NoisePolicy())
    delta_fig, parity_fig = figures
    for ax in delta_fig.axes:
        assert len(labelled(ax)) >= 3
        assert len({to_hex(line.get_color()) for line in ax.lines}) == len(MODELS)
    assert parity_fig.axes[0].get_xlabel() == "predicted δ"


def test_qid_vs_d_panel_with_every_qid_at_or_below_zero_renders():
    """A bit width whose QiD points are all <= 0 (a short own suite) and no fit: the PNG is still written
    (matplotlib refuses to log-scale an axis with no positive value: that was a traceback)."""
    rows = [dict(r, qid=-abs(r["qid"]) if r["P"] == 4 else r["qid"]) for r in _qid_rows()]
    png = plots.plot_qid_vs_d(rows, SimpleNamespace(params=None), NoisePolicy(), "gptq")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
