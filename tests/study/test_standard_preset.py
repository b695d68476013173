"""The standard QiD preset is in the papers' regime by construction (issue 19): checked without training."""

from qscale.models import build_model, count_params, get_size
from qscale.study.grid import get_preset
from qscale.train.suite import SUITE_PRESETS


def test_standard_suite_spans_20x_in_N_and_reaches_the_regime():
    preset = get_preset("standard")
    suite = SUITE_PRESETS[preset.suite]
    n = {s: count_params(build_model(s, suite.vocab_size, 128)).non_embedding for s in suite.sizes}
    assert list(n.values()) == sorted(n.values()) and max(n.values()) / min(n.values()) >= 20
    last = {s: suite.train_config(s).checkpoint_steps()[-1] * suite.train_config(s).tokens_per_step for s in n}
    ratio = {s: last[s] / n[s] for s in n}
    assert ratio[suite.sizes[0]] >= 100 and ratio[suite.sizes[-1]] >= 10
    steps = suite.train_config("s").checkpoint_steps()
    assert steps == [512, 1024, 1536, 2048]  # no near-random early checkpoints; the last D held out is 1.33x
    assert preset.grid.bits == (2, 3, 4) and preset.grid.group_size == 32 and preset.grid.eval_tokens == 131072
    assert all(get_size(s).d_model % 32 == 0 and get_size(s).ffn % 32 == 0 for s in n)  # G = 32 at every size
