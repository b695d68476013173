import math

import pytest

from qscale.errors import QscaleError
from qscale.models.ladder import get_size
from qscale.train import TrainConfig
from qscale.train.suite import SUITE_PRESETS, SuiteConfig, width_scaled_lr


def test_log_spaced_checkpoints_like_pythia():
    cfg = TrainConfig(tokens=1000 * 8 * 4, batch_size=8, seq_len=4, ckpt_every=100)
    assert cfg.total_steps == 1000
    assert cfg.checkpoint_steps() == [1, 2, 4, 8, 16, 32, 64, *range(100, 1001, 100)]
    assert TrainConfig(tokens=8 * 4 * 10, batch_size=8, seq_len=4, ckpt_base=2).checkpoint_steps() == [2, 4, 8, 10]


def lr_at(step, cfg):
    return cfg.optim.lr_at(step, cfg.total_steps)


def test_cosine_and_wsd_shapes():
    cos = TrainConfig(tokens=100 * 16, batch_size=4, seq_len=4, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(10, cos) == pytest.approx(1.0) and lr_at(99, cos) == pytest.approx(0.1)
    mid = 10 + (99 - 10) / 2
    assert lr_at(int(mid), cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    wsd = TrainConfig(
        tokens=100 * 16,
        batch_size=4,
        seq_len=4,
        lr=1.0,
        warmup_steps=10,
        schedule="wsd",
        decay_frac=0.2,
        min_lr_ratio=0.0,
    )
    assert [lr_at(s, wsd) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_at(80, wsd) == pytest.approx(1 - 1 / 20) and lr_at(99, wsd) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": "huge"}, "unknown model size"),
        ({"tokens": -5}, "tokens must be >= 1"),
        ({"warmup_steps": -1}, "warmup"),
        ({"batch_size": 6, "grad_accum": 4}, "divisible"),
        ({"lr": -1.0}, "learning rate"),
        ({"schedule": "linear"}, "unknown schedule"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(QscaleError, match=match):
        TrainConfig(**kwargs)


def test_width_scaled_suite_learning_rates():
    """The quick suite's rule: hidden LR = lr · 64 / d_model, the embeddings at one LR for every size."""
    quick = SUITE_PRESETS["quick"]
    lrs = {s: quick.train_config(s).lr for s in quick.sizes}
    assert lrs == pytest.approx({s: 3e-3 * 64 / get_size(s).d_model for s in quick.sizes})
    assert lrs["xs"] == pytest.approx(3e-3) and lrs["l"] == pytest.approx(1e-3)
    assert {quick.train_config(s).embed_lr for s in quick.sizes} == {1e-2}
    assert width_scaled_lr(1e-3, "m", 256) == pytest.approx(2e-3)
    plain = SuiteConfig("plain", ("xs", "l"), TrainConfig(lr=2e-3))
    assert plain.train_config("l").lr == 2e-3 and plain.train_config("l").size == "l"
    with pytest.raises(QscaleError, match="reference width"):
        SuiteConfig("bad", ("xs",), TrainConfig(), lr_ref_width=0)
    with pytest.raises(QscaleError, match="vocab size"):
        SuiteConfig("bad", ("xs",), TrainConfig(), vocab_size=100)
