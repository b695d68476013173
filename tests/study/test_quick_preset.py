"""The quick QiD preset's design (issues 19, 21): checked without training."""

from qscale.models import build_model, count_params, get_size
from qscale.study.grid import get_preset
from qscale.train.suite import SUITE_PRESETS


def test_quick_preset_is_the_standard_ladder_trained_shorter():
    preset, standard = get_preset("quick"), get_preset("standard")
    suite = SUITE_PRESETS[preset.suite]
    assert suite.sizes == SUITE_PRESETS[standard.suite].sizes
    n = [count_params(build_model(s, suite.vocab_size, 128)).non_embedding for s in suite.sizes]
    assert n == sorted(n) and n[-1] / n[0] >= 20
    cfg = suite.train_config("s")
    assert cfg.checkpoint_steps() == [64, 128, 256]  # 3 checkpoints, D over 4x, none near-random
    assert cfg.checkpoint_steps()[-1] * cfg.tokens_per_step == 524288
    g = preset.grid
    assert g.bits == (2, 3, 4) and g.group_size == 32 and g.eval_tokens == 49152
    assert all(get_size(s).d_model % 32 == 0 and get_size(s).ffn % 32 == 0 for s in suite.sizes)
    points = len(suite.sizes) * len(cfg.checkpoint_steps()) * len(g.bits)
    assert points == 36  # per method; measured: 179 CPU-s fresh on one thread


def test_quick_suite_for_qat_and_benches_is_unchanged():
    quick = SUITE_PRESETS["quick"]
    assert quick.sizes == ("xs", "s", "m", "l") and quick.train_config("l").checkpoint_steps()[-1] == 384
