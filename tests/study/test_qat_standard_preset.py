"""The standard QAT preset covers N, D and G and fits the fc2a8 laws by construction (issue 19): no training."""

from qscale.models import build_model, count_params, get_size
from qscale.study.qat_grid import get_qat_preset


def test_standard_qat_preset_spans_N_D_G_and_fits_the_fc2a8_schemes():
    preset = get_qat_preset("standard")
    grid = preset.grid
    n = {s: count_params(build_model(s, preset.vocab_size, grid.seq_len)).non_embedding for s in grid.sizes}
    assert list(n.values()) == sorted(n.values()) and max(n.values()) / min(n.values()) >= 7.5  # xxxs-xs: 8.0x
    d = [grid.tokens(s) for s in grid.steps]
    assert max(d) / min(d) >= 4 and len(grid.groups) >= 2 and 0 not in grid.groups  # log2 G varies and is finite
    ratio = {s: max(d) / n[s] for s in n}
    assert ratio[grid.sizes[0]] >= 50 and ratio[grid.sizes[-1]] >= 5  # trained further than the quick preset
    # the fc2a8 laws are fitted, and still have two budgets when the largest D is held out
    assert len(grid.fc2_steps) >= 3 and grid.fc2_schemes() == ("W4A4-fc2a8", "W16A4-fc2a8")
    assert all(get_size(s).d_model % g == 0 and get_size(s).ffn % g == 0 for s in grid.sizes for g in grid.groups)
    assert preset.compare is None  # the QAT-vs-PTQ part is the quick preset's (see the preset's comment)
    quick = get_qat_preset("quick").grid
    assert max(d) >= 4 * quick.tokens(max(quick.steps))
