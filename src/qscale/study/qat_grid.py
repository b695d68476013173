"""The QAT study grid and its presets (Chen et al. 2025, arXiv 2505.14302; SPEC §2 protocol).

A grid cell is (model size N, training steps -> tokens D, scheme WxAy, group size G). Every cell trains
a model FROM SCRATCH with the same initialisation seed and the same data order as the full-precision
model of its (N, D), so the only difference is quantization: δ = loss_QAT − loss_fp (held-out windows)
and the paper's metric, the smoothed final training loss difference.

Schemes follow the paper: STE AbsMax fake quantization, weights per group of G input columns and
activations per token per group of G features (G = 0: one scale per output channel / per token);
``-fc2a8`` keeps the input of every ``*.down_proj`` (FC2) at 8 bits.

The QAT-vs-PTQ comparison (:class:`PtqCompare`) takes the final checkpoints of the QiD suite and compares
GPTQ W4 with a short QAT fine-tune per recipe, and with a full-precision fine-tune of the same steps
(the control: more training alone lowers the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qscale.errors import require
from qscale.models.ladder import get_size
from qscale.ptq import PTQConfig
from qscale.qat import RECIPES, LayerRule, QATRecipeConfig
from qscale.qat.config import UNQUANTIZED
from qscale.quant import QuantSpec
from qscale.train.suite import SUITE_PRESETS

FC2 = "*.down_proj"


@dataclass(frozen=True)
class Scheme:
    """Bit widths of weights and linear-layer inputs (16 = not quantized); ``fc2_a8``: FC2 input at 8 bits."""

    name: str
    w_bits: int
    a_bits: int
    fc2_a8: bool = False

    def recipe(self, group_size: int, recipe: str = "ste", group_acts: bool = True) -> QATRecipeConfig:
        """The ``QATRecipeConfig`` of this scheme at group size G (0 = per channel / per token).

        group_acts: activations per token per G features (Chen et al.; ``ste`` only), else per token.
        """
        g = group_size or None
        rules = (LayerRule(FC2, a_bits=8),) if self.fc2_a8 else ()
        act_g = g if group_acts and recipe == "ste" and self.a_bits != UNQUANTIZED else None
        return QATRecipeConfig(
            recipe, w_bits=self.w_bits, a_bits=self.a_bits, group_size=g, act_group_size=act_g, rules=rules
        )


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("W4A4", 4, 4),
        Scheme("W4A16", 4, 16),
        Scheme("W16A4", 16, 4),
        Scheme("W4A4-fc2a8", 4, 4, fc2_a8=True),
        Scheme("W16A4-fc2a8", 16, 4, fc2_a8=True),
        Scheme("W8A8", 8, 8),
    )
}
CONTROL = "W8A8"  # near-lossless: its δ measures the run-to-run (trajectory) noise of training, not quantization
MAIN_SCHEMES = ("W4A4", "W4A16", "W16A4")


def get_scheme(name: str) -> Scheme:
    require(name in SCHEMES, f"unknown QAT scheme {name!r} (choose from {', '.join(SCHEMES)})")
    return SCHEMES[name]


@dataclass(frozen=True)
class QatGrid:
    """From-scratch training grid and how losses are measured.

    steps: training lengths (D = steps · batch_size · seq_len tokens), each its own cosine run.
    groups: G values (0 = per channel weights / per token activations).
    fc2_steps: the training lengths at which the ``-fc2a8`` schemes are also run (subset of ``steps``).
    attribution: (size, steps, G) of the models whose per-layer input statistics are measured.
    control: also train W8A8 at the first G of every (N, D): the training-noise control.
    """

    sizes: tuple[str, ...] = ("xs", "s", "m")
    steps: tuple[int, ...] = (48, 96, 192)
    groups: tuple[int, ...] = (16, 32, 0)
    schemes: tuple[str, ...] = MAIN_SCHEMES
    fc2_steps: tuple[int, ...] = (192,)
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 1e-3  # 3e-3 learns faster but makes δ of these tiny runs swing by ±0.1 between neighbour cells
    warmup_steps: int = 8
    weight_decay: float = 0.1
    eval_windows: int = 128
    eval_batch_size: int = 32
    attribution: tuple[str, int, int] = ("m", 192, 16)
    attribution_windows: int = 8
    control: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        require(len(self.sizes) >= 1 and len(set(self.sizes)) == len(self.sizes), f"bad model sizes {self.sizes}")
        for s in self.sizes:
            get_size(s)
        require(
            len(self.steps) >= 1
            and all(isinstance(s, int) and s >= 1 for s in self.steps)
            and len(set(self.steps)) == len(self.steps),
            f"training steps must be distinct integers >= 1, got {self.steps}",
        )
        require(
            len(self.groups) >= 1
            and all(isinstance(g, int) and g >= 0 for g in self.groups)
            and len(set(self.groups)) == len(self.groups),
            f"group sizes must be distinct integers >= 0, got {self.groups}",
        )
        require(all(g != 1 for g in self.groups), "group size 1 has log2 G = 0 and cannot enter the QAT law")
        require(len(self.schemes) >= 1, "at least one scheme is needed")
        for s in self.schemes:
            require(
                not get_scheme(s).fc2_a8 and s != CONTROL,
                f"scheme {s!r} is run through fc2_steps / control, not listed in schemes",
            )
        require(set(self.fc2_steps) <= set(self.steps), f"fc2_steps {self.fc2_steps} must be among steps {self.steps}")
        for name in ("batch_size", "seq_len", "eval_batch_size", "attribution_windows"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        require(self.eval_windows >= 2, f"need >= 2 evaluation windows for a noise estimate, got {self.eval_windows}")
        require(self.lr > 0 and self.warmup_steps >= 0 and self.weight_decay >= 0, "bad optimiser settings")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        size, steps, g = self.attribution
        require(
            size in self.sizes and steps in self.steps and g in self.groups,
            f"attribution cell {self.attribution} must be in the grid (size, steps, G)",
        )

    def fc2_schemes(self) -> tuple[str, ...]:
        return tuple(f"{s}-fc2a8" for s in self.schemes if f"{s}-fc2a8" in SCHEMES)

    def tokens(self, steps: int) -> int:
        return steps * self.batch_size * self.seq_len


@dataclass(frozen=True)
class PtqCompare:
    """QAT fine-tuning vs GPTQ on the final checkpoints of a QiD training suite.

    suite: key of ``qscale.train.suite.SUITE_PRESETS``; sizes: which of its sizes (>= 2 for the criterion).
    steps x batch_size x seq_len: the fine-tune (train split, continuing the data order after the checkpoint).
    group_size: G of GPTQ and of the QAT weights (0 = per channel).
    """

    suite: str = "quick"
    sizes: tuple[str, ...] = ("xs", "s")
    recipes: tuple[str, ...] = ("ste", "lsq", "quest")
    schemes: tuple[str, ...] = ("W4A16", "W4A4")
    steps: int = 32
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 1e-3
    warmup_steps: int = 4
    group_size: int = 128
    eval_windows: int = 64
    eval_batch_size: int = 16
    n_calib: int = 32
    calib_seq_len: int = 128

    def __post_init__(self) -> None:
        require(self.suite in SUITE_PRESETS, f"unknown suite {self.suite!r} (choose from {', '.join(SUITE_PRESETS)})")
        suite = SUITE_PRESETS[self.suite]
        require(
            len(self.sizes) >= 1 and set(self.sizes) <= set(suite.sizes),
            f"compare sizes {self.sizes} must be sizes of suite {self.suite!r} ({', '.join(suite.sizes)})",
        )
        for r in self.recipes:
            require(r in RECIPES, f"unknown QAT recipe {r!r} (choose from {', '.join(sorted(RECIPES))})")
        for s in self.schemes:
            get_scheme(s)
        for name in ("steps", "batch_size", "seq_len", "eval_batch_size", "n_calib", "calib_seq_len"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        require(self.eval_windows >= 2, f"need >= 2 evaluation windows, got {self.eval_windows}")
        require(self.group_size >= 0 and self.group_size != 1, f"bad group size {self.group_size}")
        require(
            self.seq_len <= suite.base.seq_len and self.calib_seq_len <= suite.base.seq_len,
            f"compare windows must not be longer than the suite's sequences ({suite.base.seq_len})",
        )

    def gptq_config(self):
        spec = (
            QuantSpec(4, symmetric=True, granularity="group", group_size=self.group_size)
            if self.group_size
            else QuantSpec(4, symmetric=True, granularity="channel", group_size=None)
        )
        return PTQConfig(method="gptq", spec=spec, n_calib=self.n_calib, calib_seq_len=self.calib_seq_len)


@dataclass(frozen=True)
class QatPreset:
    """A named QAT study: grid, QAT-vs-PTQ comparison (None = skip), the grid's tokenizer size and corpus cap.
    The comparison uses the data settings of the QiD preset of its suite."""

    grid: QatGrid
    compare: PtqCompare | None = field(default_factory=PtqCompare)
    vocab_size: int = 4096
    max_files: int | None = None
    n_boot: int = 200


QAT_PRESETS: dict[str, QatPreset] = {
    # tests: seconds on one core
    "tiny": QatPreset(
        grid=QatGrid(
            sizes=("xs", "s"),
            steps=(2, 4),
            groups=(16, 0),
            fc2_steps=(4,),
            batch_size=2,
            seq_len=16,
            warmup_steps=1,
            eval_windows=6,
            attribution=("s", 4, 16),
            attribution_windows=2,
        ),
        compare=PtqCompare(
            suite="tiny",
            sizes=("xs", "s"),
            recipes=("ste", "lsq", "quest"),
            steps=2,
            batch_size=2,
            seq_len=16,
            warmup_steps=1,
            group_size=16,
            eval_windows=6,
            n_calib=2,
            calib_seq_len=16,
        ),
        vocab_size=512,
        max_files=60,
        n_boot=10,
    ),
    # < 15 minutes on 2 CPU cores: 3 sizes x 3 D x 3 G = 27 points per scheme. A 512-token vocabulary makes
    # the tiny models learn far enough in 25k-100k tokens for δ to stand above the run-to-run noise.
    "quick": QatPreset(grid=QatGrid(), compare=PtqCompare(), vocab_size=512),
    # further into the paper's regime on 2 CPU cores: the QiD standard suite's three smallest sizes (N 13K-107K)
    # trained from scratch to 262K-1.05M tokens (D/N 20-78 at xxxs, 2.5-9.8 at xs), G 8 and 32, the fc2a8
    # variants at every budget so their laws are fitted and still have two budgets with the largest D held out.
    # Pilot (one thread): 64 steps of xxxs/xxs/xs take 1.3/3.0/4.3 s per QAT run. Measured fresh on one thread
    # with fc2a8 at the two longest budgets (30.7K steps): 21 min 2 s; the 128-step fc2a8 cells add 1,536 steps
    # (125 CPU-s): ~23 min. γD > 0 shows, γG > 0 for W16A4; γN < 0 (δ grows with N: at these sizes it tracks how
    # far a model has learned; docs/reference/presets.md). No QAT-vs-PTQ part (its suite would be the QiD
    # standard one: run `study qat --preset quick` for that comparison).
    "standard": QatPreset(
        grid=QatGrid(
            sizes=("xxxs", "xxs", "xs"),
            steps=(128, 256, 512),
            groups=(8, 32),
            fc2_steps=(128, 256, 512),
            batch_size=16,
            seq_len=128,
            lr=2e-3,
            warmup_steps=16,
            eval_windows=512,
            attribution=("xs", 512, 8),
        ),
        compare=None,
        vocab_size=512,
    ),
    # one GPU (bf16 autocast): larger models, longer runs; sized for ~20 minutes of one H100 (estimated, not
    # yet measured): 4 sizes x 3 D x (3 schemes x 3 G + fp + control) + the fc2 fix at the longest D is
    # ~104k steps of 32 x 256 tokens, ~17-35 min at 10-20 ms a step for these launch-bound models
    "gpu": QatPreset(
        grid=QatGrid(
            sizes=("s", "m", "l", "xl"),
            steps=(256, 512, 1024),
            groups=(32, 128, 0),
            fc2_steps=(1024,),
            batch_size=32,
            seq_len=256,
            lr=2e-3,
            warmup_steps=50,
            eval_windows=256,
            attribution=("xl", 1024, 32),
            attribution_windows=32,
        ),
        compare=PtqCompare(
            suite="gpu",
            sizes=("m", "xl"),
            steps=256,
            batch_size=32,
            seq_len=256,
            lr=5e-4,
            warmup_steps=20,
            eval_windows=256,
            n_calib=128,
            calib_seq_len=256,
        ),
        n_boot=500,
    ),
}


def get_qat_preset(name: str) -> QatPreset:
    require(name in QAT_PRESETS, f"unknown QAT study preset {name!r} (choose from {', '.join(QAT_PRESETS)})")
    return QAT_PRESETS[name]
