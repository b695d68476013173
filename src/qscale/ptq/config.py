"""Configuration of a post-training quantization run."""

from __future__ import annotations

from dataclasses import dataclass

from qscale.errors import require
from qscale.models.select import check_pattern
from qscale.ptq.registry import PTQ_METHODS
from qscale.quant import QuantSpec

GPTQ_ORDERS = ("sequential", "block")


@dataclass(frozen=True)
class PTQConfig:
    """Which PTQ method, which quantizer, and how to calibrate.

    method:        a name in ``qscale.ptq.PTQ_METHODS`` ("rtn", "gptq", "learned-round", "qllm").
    spec:          the weight quantizer (granularity "tensor", "channel" or "group").
    n_calib, calib_seq_len: how many calibration windows of how many tokens the caller should draw
                   from the TRAIN split (``qscale.data.batches.calibration_windows``); recorded here so a
                   result names its calibration.
    damp:          GPTQ dampening, λ = damp·mean(diag H).
    block_size:    GPTQ lazy-batch block width (columns).
    act_order:     GPTQ: quantize columns by decreasing Hessian diagonal.
    gptq_order:    GPTQ: "sequential" (each stage of a block's layers, q/k/v then o then gate/up then down, is
                   calibrated on the block with the earlier stages quantized: the authors' true-sequential) or
                   "block" (every layer of a block calibrated in one pass on the unquantized block, as
                   llm-compressor does); either way the next block's inputs come from the quantized block.
    round_steps, round_lr, learn_scale: learned-round: Adam steps per block, its learning rate, and
                   whether the per-group scales learn with the rounding variables.
    avg_bits:      learned-round only: importance-based mixed precision (``qscale.ptq.mixed``): each layer gets
                   2..8 bits (``spec.bits`` is then unused) with this average over the weights; None = ``spec.bits``
                   everywhere.
    act_bits:      bits of the dynamic per-token activation quantizer put on the input of every quantized layer
                   (absmax, the ``ste`` recipe's, ``qscale.quant.ste``; qllm: its authors' asymmetric min/max,
                   which it also calibrates with); 16 = weights only.
    qllm_rank, qllm_steps, qllm_lr: qllm: rank of the low-rank correction of each layer, Adam steps per
                   block and its learning rate (0 steps = channel reassembly only).
    skip:          linear layers left in full precision: patterns of qscale's layer-selection grammar
                   (``qscale.models.select``: globs or ``re:`` expressions on the qualified name);
                   embedding tables and heads tied to them are never quantized.
    """

    method: str
    spec: QuantSpec
    n_calib: int = 128
    calib_seq_len: int = 256
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    gptq_order: str = "sequential"
    skip: tuple[str, ...] = ("*lm_head",)
    round_steps: int = 200
    round_lr: float = 3e-2
    learn_scale: bool = False
    avg_bits: float | None = None
    act_bits: int = 16
    qllm_rank: int = 8
    qllm_steps: int = 100
    qllm_lr: float = 1e-3

    def __post_init__(self) -> None:
        require(self.method in PTQ_METHODS, f"unknown PTQ method {self.method!r}; choose from {', '.join(PTQ_METHODS)}")
        require(isinstance(self.spec, QuantSpec), "spec must be a qscale.quant.QuantSpec")
        require(self.spec.granularity != "token", "PTQ quantizes weights: granularity 'token' is for activations")
        require(self.n_calib > 0 and self.calib_seq_len > 0, "n_calib and calib_seq_len must be positive")
        require(self.damp > 0, f"damp must be positive, got {self.damp}")
        require(self.block_size > 0, f"block_size must be positive, got {self.block_size}")
        require(
            self.gptq_order in GPTQ_ORDERS,
            f"gptq_order must be one of {', '.join(GPTQ_ORDERS)}, got {self.gptq_order!r}",
        )
        require(self.round_steps >= 1 and self.round_lr > 0, "round_steps must be >= 1 and round_lr positive")
        require(isinstance(self.learn_scale, bool), "learn_scale must be a bool")
        require(
            isinstance(self.act_bits, int) and (2 <= self.act_bits <= 8 or self.act_bits == 16),
            f"act_bits must be in 2..8 or 16 (activations unquantized), got {self.act_bits!r}",
        )
        if self.avg_bits is not None:
            require(self.method == "learned-round", "avg_bits (mixed precision) applies to learned-round only")
            require(
                isinstance(self.avg_bits, (int, float)) and 2 <= self.avg_bits <= 8,
                f"avg_bits must be in 2..8, got {self.avg_bits!r}",
            )
        require(
            self.qllm_rank >= 1 and self.qllm_steps >= 0 and self.qllm_lr > 0,
            "qllm_rank must be >= 1, qllm_steps >= 0 and qllm_lr positive",
        )
        for pattern in self.skip:
            check_pattern(pattern)
