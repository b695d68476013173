"""What a uniform integer quantizer is: bit width, symmetry and granularity (SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass

from qscale.errors import QscaleError, require

GRANULARITIES = ("tensor", "channel", "group", "token")
GRIDS = ("full", "restricted")


@dataclass(frozen=True)
class QuantSpec:
    """A uniform integer quantizer ``q = clamp(round(x/s + z), qmin, qmax)``, ``x̂ = (q - z)·s``.

    bits:        1..8.
    symmetric:   True: ``z = 0`` and ``q ∈ [-2^(b-1), 2^(b-1) - 1]`` (for ``b = 1``: ``q ∈ {-1, 0}``
                 with ``z = -1/2``, i.e. ``x̂ = ±s/2``, a sign quantizer). False: ``q ∈ [0, 2^b - 1]``.
    grid:        symmetric scale for ``b >= 2`` (SPEC §6). "full" (default): the ecosystem's grid of
                 GPTQ/AutoGPTQ ``sym=True`` and compressed-tensors ``symmetric: true``,
                 ``s = 2·absmax/(2^b - 1)``, all 2^b codes used (2 bits = 4 levels). "restricted": the
                 "absmax" grid ``s = absmax/(2^(b-1) - 1)`` that never produces ``-2^(b-1)`` (2 bits =
                 ternary), kept for the QAT recipes whose papers use it (Chen et al. 2025's AbsMax).
    granularity: "tensor" (one scale), "channel" (one per output row of a ``[out, in]`` weight),
                 "group" (one per row per ``group_size`` consecutive input columns), "token"
                 (activations ``[..., features]``: one per row over the last dimension).
    group_size:  G, used by "group" only (ignored otherwise). A last group shorter than G is
                 allowed (ragged), see ``qscale.quant.core``.
    """

    bits: int
    symmetric: bool = True
    granularity: str = "group"
    group_size: int | None = 128
    grid: str = "full"

    def __post_init__(self) -> None:
        require(
            isinstance(self.bits, int) and not isinstance(self.bits, bool) and 1 <= self.bits <= 8,
            f"bits must be an integer in 1..8, got {self.bits!r}",
        )
        require(isinstance(self.symmetric, bool), f"symmetric must be a bool, got {self.symmetric!r}")
        require(
            self.granularity in GRANULARITIES,
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}",
        )
        require(self.grid in GRIDS, f"grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        if self.granularity == "group":
            require(
                isinstance(self.group_size, int) and not isinstance(self.group_size, bool) and self.group_size > 0,
                f"group_size must be a positive integer for granularity 'group', got {self.group_size!r}",
            )

    @property
    def G(self) -> int:
        """The group size of a "group" spec (a positive integer, checked at construction)."""
        if self.granularity != "group" or self.group_size is None:
            raise QscaleError(f"granularity {self.granularity!r} has no group size")
        return self.group_size

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def label(self) -> str:
        """Short name, e.g. ``w4g128-sym``."""
        gran = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        grid = "-r" if self.symmetric and self.grid == "restricted" else ""
        return f"w{self.bits}{gran}-{'sym' if self.symmetric else 'asym'}{grid}"
