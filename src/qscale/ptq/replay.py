"""One decoder block's GPTQ calibration passes, recomputing only what changed since the pass before.

GPTQ's true-sequential order (Frantar et al. 2022, §4) calibrates each stage of a block's linear layers
(q/k/v, then o, then gate/up, then down) on the block with the earlier stages already quantized. Re-running
the block from its input for every stage recomputes attention and MLP parts that did not change. Here the
block's direct children that hold selected layers ("units": attention, MLP) are replayed from caches:

- a unit whose output cannot have changed since it was stored (no layer called before the unit returns was
  quantized since) returns the stored output;
- a unit whose output is its last layer's output (its "tail": attention's o_proj, the MLP's down_proj) where
  only that layer changed is the layer applied to its input, kept from the pass that calibrated it.

What a unit depends on comes from the block's call order, traced once per block class and layer set: in a
forward pass a unit's output depends only on what ran before it returned. Each reuse checks the tensors'
version counters, and a block that modified a stored tensor in place recomputes instead, so the passes give
bit for bit the tensors of re-running the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from qscale.ptq.block_io import BlockInput, Stop, release_freed_memory, run_block


@dataclass(frozen=True)
class Unit:
    """A direct child of the block that holds selected layers."""

    name: str
    before_end: frozenset[str]  # layers first called before this unit returns: what its output depends on
    tail: str | None  # the layer whose output is the unit's output (None: none, or not safely replayable)
    tuple_len: int  # 0: the unit returns a tensor; n: a tuple (tail output, None, ...) of n items


@dataclass(frozen=True)
class Trace:
    """A block's calibration structure: stages of layers reading the same input, in call order; its units."""

    stages: tuple[tuple[str, ...], ...]
    units: tuple[Unit, ...]


def trace_block(block: nn.Module, inp: BlockInput, layers: dict[str, nn.Module]) -> Trace:
    """Call order of ``layers`` (names relative to ``block``) and of the block's units in one forward pass."""
    clock = iter(range(1 << 62))
    first_call: dict[str, int] = {}
    layer_in: dict[str, Tensor] = {}
    layer_out: dict[str, Any] = {}
    ends: dict[str, list[tuple[int, Any]]] = {}

    def layer_hook(name, mod, args, out):
        if name not in first_call:
            first_call[name], layer_in[name], layer_out[name] = next(clock), args[0], out

    def unit_hook(name, mod, args, out):
        ends.setdefault(name, []).append((next(clock), out))

    children = {n: m for n, m in block.named_children() if any(k.startswith(n + ".") for k in layers)}
    handles = [m.register_forward_hook(partial(layer_hook, n)) for n, m in layers.items()]
    handles += [m.register_forward_hook(partial(unit_hook, n)) for n, m in children.items()]
    try:
        run_block(block, inp)
    finally:
        for h in handles:
            h.remove()

    order = sorted(first_call, key=first_call.__getitem__)
    stages: list[list[str]] = []
    for prev, name in zip([None, *order], order, strict=False):
        if stages and prev is not None and layer_in[name] is layer_in[prev]:
            stages[-1].append(name)
        else:
            stages.append([name])
    units = []
    for name, calls in ends.items():
        if len(calls) != 1:
            continue  # called more than once per pass: not replayed
        end, out = calls[0]
        inside = [n for n in order if n.startswith(name + ".")]
        last = inside[-1] if inside else None
        tail, tuple_len = None, 0
        if last is not None and isinstance(layer_out[last], Tensor):
            if out is layer_out[last]:
                tail = last
            elif isinstance(out, tuple) and out and out[0] is layer_out[last] and all(o is None for o in out[1:]):
                tail, tuple_len = last, len(out)
        before = frozenset(n for n in order if first_call[n] < end)
        units.append(Unit(name, before, tail, tuple_len))
    return Trace(tuple(tuple(s) for s in stages), tuple(units))


@dataclass
class _Kept:
    """A stored tensor (or tuple) with the quantized layers it was computed with and its version counters."""

    key: frozenset[str]
    value: Any
    versions: tuple[int, ...]

    @classmethod
    def of(cls, key: frozenset[str], value: Any) -> _Kept:
        return cls(key, value, tuple(t._version for t in _tensors(value)))

    def intact(self, key: frozenset[str]) -> bool:
        return key == self.key and tuple(t._version for t in _tensors(self.value)) == self.versions


def _tensors(value: Any) -> list[Tensor]:
    items = value if isinstance(value, tuple) else (value,)
    return [t for t in items if isinstance(t, Tensor)]


class BlockReplay:
    """Calibration passes over one block's captured inputs; ``mark_quantized`` after each stage is quantized."""

    def __init__(self, block: nn.Module, inputs: list[BlockInput], trace: Trace):
        self.block, self.inputs, self.trace = block, inputs, trace
        self.quantized: set[str] = set()
        self._out: dict[str, dict[int, _Kept]] = {u.name: {} for u in trace.units}
        self._tail_in: dict[str, dict[int, _Kept]] = {u.tail: {} for u in trace.units if u.tail}
        self._folded: set[str] = set()  # units whose outputs were added into the inputs (``_fold``)
        self._unfoldable: set[str] = set()
        self._batch = 0
        self._span: list[tuple[int, int, int]] = []  # each input's tokens: start, end in its batch; batch's total
        first = start = 0
        for i, inp in enumerate(inputs):
            tokens = inp.hidden().shape[:-1].numel()
            self._span.append((start, start + tokens, 0))
            start += tokens
            if inp.ends_batch or i == len(inputs) - 1:
                self._span[first:] = [(a, b, start) for a, b, _ in self._span[first:]]
                first, start = i + 1, 0

    def _key(self, layers: frozenset[str]) -> frozenset[str]:
        return frozenset(layers & self.quantized)

    def hessians(self, firsts: list[str], stop: bool, keep: bool) -> dict[str, Tensor]:
        """``H = (2/n) Σ x xᵀ`` of the input of each layer in ``firsts`` over every calibration row.

        ``stop``: each pass ends at the first of them (its stage is next). ``keep``: store what later passes
        reuse (unit outputs, inputs of tail layers). A batch captured in chunks adds its rows to ``H`` in one
        product once its last chunk has run, as the whole batch would.
        """
        sums: dict[str, Tensor] = {}
        rows = dict.fromkeys(firsts, 0)
        pending: dict[str, Tensor] = {}  # a chunked batch's rows so far (rows = tokens), gathered in one tensor
        tails = {u.tail: u for u in self.trace.units if u.tail}
        stage_of = {n: s for s in self.trace.stages for n in s}

        def pre_hook(name, mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            start, end, total = self._span[self._batch]
            if end - start < total and x.shape[0] == end - start:  # a chunk of a batch: into the batch's rows
                if name not in pending:
                    pending[name] = torch.empty(total, x.shape[1], dtype=x.dtype, device=x.device)
                pending[name][start:end].copy_(x)
                x = pending.pop(name) if end == total else None
            if x is not None:
                if name not in sums:
                    sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                sums[name].addmm_(x.t(), x)
                rows[name] += x.shape[0]
                del x
            if keep and args[0].numel() <= self.inputs[self._batch].hidden().numel():
                # a tail input larger than the block's (down_proj's: FFN/hidden times) is recomputed instead
                for n in stage_of[name]:
                    if n in tails:
                        key = self._key(tails[n].before_end - {n})
                        self._tail_in[n][self._batch] = _Kept.of(key, args[0])
            if stop:
                raise Stop

        mods = {n: self.block.get_submodule(n) for n in firsts}
        handles = [m.register_forward_pre_hook(partial(pre_hook, n)) for n, m in mods.items()]
        try:
            self._run(keep)
        finally:
            for h in handles:
                h.remove()
        if keep:
            self._fold()
        return {n: sums[n] * (2 / rows[n]) for n in firsts}

    def advance(self) -> None:
        """The last pass: each batch's input becomes the block's output (the next block's input), in place."""

        def put(b: int, out: Tensor) -> None:
            self.inputs[b] = self.inputs[b].with_hidden(out)

        self._run(keep=False, on_output=put)

    def mark_quantized(self, names: list[str]) -> None:
        """Record that ``names`` now hold their quantized weights; drop what can no longer be reused."""
        self.quantized.update(names)
        for u in self.trace.units:
            key = self._key(u.before_end)
            self._out[u.name] = {b: k for b, k in self._out[u.name].items() if k.key == key}
            if u.tail:
                key = self._key(u.before_end - {u.tail})
                self._tail_in[u.tail] = {b: k for b, k in self._tail_in[u.tail].items() if k.key == key}

    def _unit_forward(self, unit: Unit, original: Callable, keep: bool, *args, **kwargs):
        b = self._batch
        if unit.name in self._folded:  # its output is in the block's input now: add nothing (x + -0.0 == x)
            zero = torch.full_like(self.inputs[b].hidden(), -0.0)
            return (zero, *[None] * (unit.tuple_len - 1)) if unit.tuple_len else zero
        key = self._key(unit.before_end)
        kept = self._out[unit.name].get(b) if keep else self._out[unit.name].pop(b, None)
        if kept is not None and kept.intact(key):
            return kept.value
        out = None
        if unit.tail:
            x = self._tail_in[unit.tail].pop(b, None)
            if x is not None and x.intact(self._key(unit.before_end - {unit.tail})):
                y = self.block.get_submodule(unit.tail)(x.value)
                out = (y, *[None] * (unit.tuple_len - 1)) if unit.tuple_len else y
        if out is None:
            out = original(*args, **kwargs)
        if keep:
            self._out[unit.name][b] = _Kept.of(key, out)
        return out

    def _fold(self) -> None:
        """Fold the first unit's final, kept outputs into the block's inputs: ``h + y`` replaces ``h``, and the
        unit returns ``-0.0`` (``h + y + -0.0`` is ``h + y`` bit for bit), so one tensor per batch is kept
        instead of two. Only where the block adds that unit's output to its input and reads the input nowhere
        else (attention in a pre-norm block; not GPT-NeoX's parallel residual): checked on the first batch
        with every other unit recomputed, whose output must be bit for bit the unfolded one's, else the unit
        is never folded.
        """
        unit = self.trace.units[0] if self.trace.units else None
        if not self.inputs or unit is None or unit.name in self._folded | self._unfoldable:
            return
        key = self._key(unit.before_end)
        kept = self._out[unit.name]
        if key != unit.before_end or len(kept) != len(self.inputs):
            return  # not final yet, or not kept for every batch
        ys: list[Tensor] = []
        for b in range(len(self.inputs)):
            y = kept[b].value[0] if unit.tuple_len else kept[b].value
            h = self.inputs[b].hidden()
            if not (kept[b].intact(key) and isinstance(y, Tensor) and y.shape == h.shape and y.dtype == h.dtype):
                self._unfoldable.add(unit.name)
                return
            ys.append(y)
        del y, h
        before = self._forward(self.inputs[0], unit)
        self._folded.add(unit.name)
        after = self._forward(self.inputs[0].with_hidden(self.inputs[0].hidden() + ys[0]), unit)
        if not torch.equal(after, before):
            self._folded.discard(unit.name)
            self._unfoldable.add(unit.name)
            return
        del before, after
        self._out[unit.name] = {}
        ys.reverse()
        for b in range(len(self.inputs)):  # each output popped, so freed as it goes
            self.inputs[b] = self.inputs[b].with_hidden(self.inputs[b].hidden() + ys.pop())

    def _forward(self, inp: BlockInput, unit: Unit) -> Tensor:
        """The block's output for the first batch's input ``inp``, ``unit`` replayed, every other recomputed."""
        with self._patched(keep=True, units=(unit,)):
            self._batch = 0
            return run_block(self.block, inp)

    @contextmanager
    def _patched(self, keep: bool, units: tuple[Unit, ...] | None = None) -> Iterator[None]:
        """The block's units (or ``units``) replayed (``_unit_forward``) inside the context."""
        patched = []
        for u in self.trace.units if units is None else units:
            mod = self.block.get_submodule(u.name)
            saved = mod.__dict__.get("forward")
            mod.forward = partial(self._unit_forward, u, mod.forward, keep)
            patched.append((mod, saved))
        try:
            yield
        finally:
            for mod, saved in patched:
                del mod.forward
                if saved is not None:
                    mod.forward = saved

    def _run(self, keep: bool, on_output: Callable[[int, Tensor], None] | None = None) -> None:
        """One pass over every batch (cut short where a hook raises ``Stop``), units replayed.

        ``keep``: store unit outputs for later passes; otherwise what was stored is dropped as it is used.
        """
        try:
            with self._patched(keep):
                for b, inp in enumerate(self.inputs):
                    self._batch = b
                    try:
                        out = run_block(self.block, inp)
                    except Stop:
                        continue
                    if on_output is not None:
                        on_output(b, out)
        finally:
            release_freed_memory()
