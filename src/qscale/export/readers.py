"""Readers of the three packed layouts: tensors of one folder → ``QuantizedLinear`` layers by module name.

Each reader checks every tensor of a layer (names, shapes, dtypes, finiteness) against the model built from
``config.json`` and the format's own config, so a corrupt or mismatched folder is an error, not a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from qscale.errors import QscaleError, require
from qscale.ptq.layers import LINEAR_TYPES, get_weight
from qscale.qat.acts import act_quantizer_from
from qscale.quant import (
    QuantizedLinear,
    QuantizedWeight,
    QuantSpec,
    default_g_idx,
    packed_words,
    unpack_rows,
)
from qscale.quant.reassembly import ChannelReassembly


def _layer_keys(tensors: dict[str, Tensor], name: str, allowed: set[str], required: set[str]) -> dict[str, Tensor]:
    prefix = name + "."
    mine = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix) and "." not in k[len(prefix) :]}
    extra, lacking = set(mine) - allowed, required - set(mine)
    if extra:
        raise QscaleError(f"layer {name}: unexpected tensor {prefix}{sorted(extra)[0]}")
    if lacking:
        raise QscaleError(f"layer {name}: missing tensor {prefix}{sorted(lacking)[0]}")
    return mine


def _shape(t: Tensor, shape: tuple, what: str) -> None:
    require(tuple(t.shape) == tuple(shape), f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise QscaleError(f"the folder quantizes layer {name}, which the model does not have") from None
    require(isinstance(mod, LINEAR_TYPES), f"layer {name} is a {type(mod).__name__}, not a linear layer")
    return mod


def _codes(words: Tensor, spec: QuantSpec, n_in: int, what: str) -> Tensor:
    require(words.dtype == torch.int32, f"{what} must be int32, got {words.dtype}")
    codes = unpack_rows(words, spec.bits, n_in) + spec.qmin
    return codes.to(torch.int8 if spec.symmetric else torch.uint8)


def _spec_from_ct(args: dict, name: str) -> QuantSpec:
    require(args.get("type", "int") == "int", f"layer {name}: only integer weights are read, got {args.get('type')}")
    strategy = args.get("strategy")
    if strategy not in ("group", "channel", "tensor"):
        raise QscaleError(f"layer {name}: unsupported weight strategy {strategy!r}")
    G = args.get("group_size") if strategy == "group" else None
    return QuantSpec(int(args["num_bits"]), bool(args.get("symmetric", True)), strategy, G)


def _ct_scheme(qcfg: dict, name: str, module: nn.Module) -> dict:
    for group in (qcfg.get("config_groups") or {}).values():
        targets = group.get("targets") or []
        if name in targets or ("Linear" in targets and type(module).__name__ == "Linear"):
            require(
                group.get("input_activations") is None,
                f"layer {name}: compressed-tensors activation quantization is not supported by qscale's reader",
            )
            require(
                group.get("format", qcfg.get("format")) == "pack-quantized",
                f"layer {name}: only the pack-quantized format is read",
            )
            return group["weights"]
    raise QscaleError(f"layer {name} holds packed weights but no config group of quantization_config targets it")


def read_compressed_tensors(model: nn.Module, qcfg: dict, tensors: dict[str, Tensor]) -> dict[str, QuantizedLinear]:
    """compressed-tensors ``pack-quantized``: ``weight_packed``, ``weight_scale``, ``weight_shape`` and, when
    asymmetric, ``weight_zero_point``."""
    require(
        qcfg.get("format") == "pack-quantized",
        f"compressed-tensors format {qcfg.get('format')!r} is not read; only pack-quantized",
    )
    layers = {}
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        mod = _module(model, name)
        spec = _spec_from_ct(_ct_scheme(qcfg, name, mod), name)
        out, n_in = get_weight(mod).shape
        allowed = {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "bias"}
        req = {"weight_packed", "weight_scale", "weight_shape"} | (set() if spec.symmetric else {"weight_zero_point"})
        t = _layer_keys(tensors, name, allowed, req)
        require(
            t["weight_shape"].tolist() == [out, n_in],
            f"layer {name}: weight_shape {t['weight_shape'].tolist()} does not match the model's [{out}, {n_in}]",
        )
        _shape(t["weight_packed"], (out, packed_words(n_in, spec.bits)), f"{name}.weight_packed")
        n_groups = math.ceil(n_in / spec.G) if spec.granularity == "group" else 1
        scale = t["weight_scale"].reshape(1, 1).expand(out, 1) if spec.granularity == "tensor" else t["weight_scale"]
        _shape(scale, (out, n_groups), f"{name}.weight_scale")
        zero = torch.zeros(out, n_groups)
        if not spec.symmetric:
            zp = t["weight_zero_point"]
            _shape(zp, (packed_words(out, spec.bits), n_groups), f"{name}.weight_zero_point")
            zero = unpack_rows(zp.t().contiguous(), spec.bits, out).t().float()
        qw = QuantizedWeight(
            _codes(t["weight_packed"], spec, n_in, f"{name}.weight_packed"),
            scale.contiguous(),
            zero,
            default_g_idx(n_in, spec),
            spec,
        )
        layers[name] = QuantizedLinear(qw, t.get("bias"), name=name, source=type(mod).__name__)
    require(bool(layers), "quantization_config says compressed-tensors but no layer has weight_packed")
    return layers


def read_gptq(model: nn.Module, qcfg: dict, tensors: dict[str, Tensor]) -> dict[str, QuantizedLinear]:
    """GPTQ v1 (or v2, without the zero − 1 offset): ``qweight``/``qzeros``/``scales``/``g_idx``."""
    b = int(qcfg.get("bits", 0))
    require(b in (2, 3, 4, 8), f"GPTQ bits {b} are not read (2/3/4/8; 5-7 are GPTQModel's planar layout)")
    fmt = str(qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq").lower()
    require(fmt in ("gptq", "gptq_v2"), f"GPTQ checkpoint_format {fmt!r} is not read")
    G = int(qcfg.get("group_size", -1))
    mask = (1 << b) - 1
    layers = {}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        mod = _module(model, name)
        out, n_in = get_weight(mod).shape
        t = _layer_keys(
            tensors, name, {"qweight", "qzeros", "scales", "g_idx", "bias"}, {"qweight", "qzeros", "scales", "g_idx"}
        )
        n_groups = math.ceil(n_in / G) if G > 0 else 1
        _shape(t["qweight"], (packed_words(n_in, b), out), f"{name}.qweight")
        _shape(t["qzeros"], (n_groups, packed_words(out, b)), f"{name}.qzeros")
        _shape(t["scales"], (n_groups, out), f"{name}.scales")
        _shape(t["g_idx"], (n_in,), f"{name}.g_idx")
        g_idx = t["g_idx"].to(torch.int32)
        require(int(g_idx.min()) >= 0 and int(g_idx.max()) < n_groups, f"layer {name}: g_idx out of range")
        unsigned = unpack_rows(t["qweight"].t().contiguous(), b, n_in)
        zeros = unpack_rows(t["qzeros"], b, out).t()
        if fmt == "gptq":
            zeros = (zeros + 1) & mask
        sym = bool(qcfg.get("sym", True)) and bool((zeros == 1 << (b - 1)).all())
        spec = QuantSpec(b, sym, "group" if G > 0 else "channel", G if G > 0 else None)
        codes = (unsigned + spec.qmin).to(torch.int8 if sym else torch.uint8)
        zero = torch.zeros(out, n_groups) if sym else zeros.float()
        qw = QuantizedWeight(codes, t["scales"].t().contiguous(), zero, g_idx, spec)
        layers[name] = QuantizedLinear(qw, t.get("bias"), name=name, source=type(mod).__name__)
    require(bool(layers), "quantization_config says gptq but no layer has qweight")
    return layers


def read_native(model: nn.Module, qcfg: dict, tensors: dict[str, Tensor]) -> dict[str, QuantizedLinear]:
    """qscale's own layout (``qscale.export.native``)."""
    require(qcfg.get("version") == 1, f"qscale packed format version {qcfg.get('version')!r} is not read (1)")
    layers = {}
    for name, c in (qcfg.get("layers") or {}).items():
        mod = _module(model, name)
        try:
            spec = QuantSpec(int(c["bits"]), bool(c["symmetric"]), c["granularity"], c["group_size"], grid=c["grid"])
            out, n_in = int(c["out_features"]), int(c["in_features"])
            act = None if c["act"] is None else act_quantizer_from(c["act"])
            extras = list(c["extras"])
            reassembled = bool(c.get("reassembly", False))
        except (KeyError, TypeError, ValueError) as e:
            raise QscaleError(f"layer {name}: malformed qscale layer config: {e}") from None
        _shape(get_weight(mod), (out, n_in), f"layer {name} of the model")
        own = {"weight_packed", "weight_scale", "weight_zero", "weight_g_idx", *(f"weight_{x}" for x in extras)}
        if reassembled:
            own |= {"input_src", "input_dst", "input_coef"}
        t = _layer_keys(tensors, name, own | {"bias"}, own)
        _shape(t["weight_packed"], (out, packed_words(n_in, spec.bits)), f"{name}.weight_packed")
        extra_t = {x: t[f"weight_{x}"] for x in extras}
        qw = QuantizedWeight(
            _codes(t["weight_packed"], spec, n_in, f"{name}.weight_packed"),
            t["weight_scale"],
            t["weight_zero"],
            t["weight_g_idx"],
            spec,
            c["layout"],
            extra_t,
        )
        reassembly = None
        if reassembled:
            reassembly = ChannelReassembly(t["input_src"], t["input_dst"], t["input_coef"], n_in)
        layer = QuantizedLinear(
            qw, t.get("bias"), act, int(c["hadamard_group"]), name=name, source=c["source"], reassembly=reassembly
        )
        if act is not None:
            prefix = f"{name}.act_quantizer."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                act.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise QscaleError(f"layer {name}: activation quantizer state: {str(e).splitlines()[0]}") from None
        layers[name] = layer
    require(bool(layers), "quantization_config says qscale but lists no layer")
    return layers


READERS: dict[str, Callable[[nn.Module, dict, dict[str, Tensor]], dict[str, QuantizedLinear]]] = {
    "compressed-tensors": read_compressed_tensors,
    "gptq": read_gptq,
    "qscale": read_native,
}
