"""The QiD study grid and its presets: which suite to train, which PTQ cells to measure on each checkpoint.

A cell is (model size, checkpoint D, method, bits P, group size G, seed). Evaluation windows are
fixed (evenly spaced over the validation split) and shared by the full-precision and quantized
models, so QiD's noise is that of paired differences (:mod:`qscale.evaluate.noise`); calibration windows
come from the training split with a fixed seed (Frantar et al. 2022; SPEC §1 protocol, §6 GPTQ).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qscale.errors import QscaleError, require
from qscale.ptq import PTQ_METHODS, PTQConfig
from qscale.ptq.config import GPTQ_ORDERS
from qscale.quant import GRIDS, QuantSpec
from qscale.report.qid import DEFAULT_THRESHOLDS, ReportConfig
from qscale.train.suite import SUITE_PRESETS


@dataclass(frozen=True)
class QidGrid:
    """PTQ cells measured on every checkpoint, and how losses are measured.

    group_size: G input columns per scale; 0 means one scale per output channel.
    grid: the symmetric grid, "full" (GPTQ / compressed-tensors: s = 2·absmax/(2^b − 1), all 2^b codes; the
    default) or "restricted" (s = absmax/(2^(b−1) − 1), 2^b − 1 codes), to measure what the grid costs.
    eval_windows x eval_seq_len held-out tokens per loss; n_calib x calib_seq_len calibration tokens.
    min_tokens: checkpoints trained on fewer tokens are not measured (the first log-spaced steps of a
    small suite are near-random models, and skipping them keeps the quick preset inside its budget).
    gptq_order: GPTQ's calibration order, "sequential" or "block" (:class:`qscale.ptq.PTQConfig`).
    """

    methods: tuple[str, ...] = ("rtn", "gptq")
    bits: tuple[int, ...] = (2, 3, 4, 8)
    group_size: int = 128
    grid: str = "full"
    eval_windows: int = 64
    eval_seq_len: int = 256
    eval_batch_size: int = 16
    n_calib: int = 32
    calib_seq_len: int = 256
    seed: int = 0
    min_tokens: int = 0
    gptq_order: str = "sequential"

    def __post_init__(self) -> None:
        require(len(self.methods) > 0, "at least one PTQ method is needed")
        require(len(set(self.methods)) == len(self.methods), f"repeated PTQ method in {self.methods}")
        require(
            len(self.bits) > 0 and all(isinstance(b, int) and 1 <= b <= 8 for b in self.bits),
            f"bit widths must be integers in 1..8, got {self.bits}",
        )
        require(len(set(self.bits)) == len(self.bits), f"repeated bit width in {self.bits}")
        require(self.group_size >= 0, f"group size must be >= 0 (0 = per channel), got {self.group_size}")
        require(self.grid in GRIDS, f"unknown grid {self.grid!r} (choose from {', '.join(GRIDS)})")
        require(self.eval_windows >= 2, f"need >= 2 evaluation windows for a noise estimate, got {self.eval_windows}")
        require(self.eval_seq_len >= 2, f"evaluation sequence length must be >= 2, got {self.eval_seq_len}")
        require(self.eval_batch_size >= 1, f"evaluation batch size must be >= 1, got {self.eval_batch_size}")
        require(self.n_calib >= 1, f"need >= 1 calibration window, got {self.n_calib}")
        require(self.calib_seq_len >= 2, f"calibration sequence length must be >= 2, got {self.calib_seq_len}")
        require(self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        require(
            self.gptq_order in GPTQ_ORDERS,
            f"GPTQ order (--gptq-order) must be one of {', '.join(GPTQ_ORDERS)}, got {self.gptq_order!r}",
        )

    def check_methods(self) -> None:
        """Fail early, naming the problem, if a method is not in the PTQ registry."""
        unknown = [m for m in self.methods if m not in PTQ_METHODS]
        if unknown:
            raise QscaleError(f"unknown PTQ method(s) {', '.join(unknown)} (choose from {', '.join(PTQ_METHODS)})")

    def ptq_config(self, method: str, bits: int):
        """The :class:`qscale.ptq.PTQConfig` of one cell (symmetric, per group or per channel)."""
        if self.group_size:
            spec = QuantSpec(bits=bits, symmetric=True, granularity="group", group_size=self.group_size, grid=self.grid)
        else:
            spec = QuantSpec(bits=bits, symmetric=True, granularity="channel", group_size=None, grid=self.grid)
        return PTQConfig(
            method=method,
            spec=spec,
            n_calib=self.n_calib,
            calib_seq_len=self.calib_seq_len,
            gptq_order=self.gptq_order,
        )

    @property
    def eval_tokens(self) -> int:
        return self.eval_windows * self.eval_seq_len


@dataclass(frozen=True)
class QidPreset:
    """A named study: the training suite preset, the PTQ grid, the report settings, the corpus cap."""

    suite: str
    grid: QidGrid
    report: ReportConfig = field(default_factory=ReportConfig)
    max_files: int | None = None

    @property
    def vocab_size(self) -> int:
        """The BPE vocabulary of the preset's suite."""
        return SUITE_PRESETS[self.suite].vocab_size


QID_PRESETS: dict[str, QidPreset] = {
    # tests: seconds on one core; a capped corpus with a small vocabulary
    "tiny": QidPreset(
        suite="tiny",
        grid=QidGrid(
            methods=("rtn", "gptq"),
            bits=(2, 4),
            group_size=32,
            eval_windows=8,
            eval_seq_len=32,
            n_calib=4,
            calib_seq_len=32,
        ),
        report=ReportConfig(thresholds=DEFAULT_THRESHOLDS, inversion_bits=(2, 4), n_boot=20),
        max_files=60,
    ),
    # the README's main command, the standard preset's sizes trained 8x shorter: 4 sizes (N 13K-332K, 24.8x) x 3
    # checkpoints (131K, 262K, 524K tokens) x 3 bit widths = 36 points per method, 49K held-out tokens per loss.
    # Measured fresh on 2 cores with the README's install (issue 21): 2 min 25 s (install 33 s; study 112 s: train 42,
    # fp_eval 4, quantize 33, report 8), GPTQ 28 of 36 points above the noise floor; see docs/reference/presets.md
    "quick": QidPreset(
        suite="qid-quick",
        grid=QidGrid(
            methods=("rtn", "gptq"),
            bits=(2, 3, 4),
            group_size=32,
            eval_windows=384,
            eval_seq_len=128,
            eval_batch_size=32,
            n_calib=32,
            calib_seq_len=128,
        ),
        report=ReportConfig(n_boot=200),
    ),
    # the papers' regime on 2 CPU cores: D/N from 313 (xxxs) to 12.6 (s) at the last checkpoint, N over 24.8x,
    # 4 checkpoints x 3 bit widths x 4 sizes = 48 points per method, 131K held-out tokens per loss. Pilot (one
    # thread): training 631 CPU-s, quantization and evaluation ~200 CPU-s; see docs/reference/presets.md
    "standard": QidPreset(
        suite="standard",
        grid=QidGrid(
            methods=("rtn", "gptq"),
            bits=(2, 3, 4),
            group_size=32,
            eval_windows=1024,
            eval_seq_len=128,
            eval_batch_size=32,
            n_calib=32,
            calib_seq_len=128,
        ),
        report=ReportConfig(n_boot=200),
    ),
    # the device: larger models, longer training, more held-out tokens
    "gpu": QidPreset(
        suite="gpu",
        grid=QidGrid(
            methods=("rtn", "gptq"),
            bits=(2, 3, 4, 8),
            group_size=32,
            eval_windows=256,
            eval_seq_len=256,
            eval_batch_size=32,
            n_calib=128,
            calib_seq_len=256,
        ),
        report=ReportConfig(n_boot=500),
    ),
}


def get_preset(name: str) -> QidPreset:
    require(name in QID_PRESETS, f"unknown study preset {name!r} (choose from {', '.join(QID_PRESETS)})")
    return QID_PRESETS[name]
