"""Which loader reads which written folder: format × symmetric/asymmetric × architecture × loader.

Every cell is either *tested* (``tested: NAME``: the test ``NAME`` in ``tests/export/test_compat.py``, or the
named file in ``tests/export/``, loads a folder qscale wrote, with the versions below, on CPU) or *documented*
(``documented: KEY``: the peer's own documentation or source, :data:`SOURCES`; not run here: vLLM and TensorRT
need a GPU), or *by design*. ``qscale quantize`` prints :func:`notes` for the folders it wrote;
``docs/reference/compatibility.md`` is :func:`table_markdown` (a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass

VERSIONS = {
    "transformers": "5.25.0",
    "compressed-tensors": "0.20.0",
    "optimum": "2.3.0",
    "gptqmodel": "7.7.0",
    "onnxruntime": "1.32.0",
}
ARCHITECTURES = {"llama": "Llama", "gpt_neox": "GPT-NeoX", "gpt2": "GPT-2"}
FORMATS = ("compressed-tensors", "gptq", "qscale", "onnx")

QSCALE = "qscale (`qscale.load_quantized`, `qscale eval`)"
HF_CT = f"transformers {VERSIONS['transformers']} + compressed-tensors {VERSIONS['compressed-tensors']}"
HF_GPTQ = f"transformers {VERSIONS['transformers']} + optimum {VERSIONS['optimum']} + gptqmodel {VERSIONS['gptqmodel']}"
GPTQMODEL = f"gptqmodel {VERSIONS['gptqmodel']} (`GPTQModel.load`)"
ORT = f"ONNX Runtime {VERSIONS['onnxruntime']} (CPU)"
VLLM = "vLLM"
TRT = "TensorRT"
HF = f"transformers {VERSIONS['transformers']} (any loader)"
LOADERS = {
    "compressed-tensors": (QSCALE, HF_CT, VLLM),
    "gptq": (QSCALE, HF_GPTQ, GPTQMODEL, VLLM),
    "qscale": (QSCALE, HF, VLLM),
    "onnx": (ORT, TRT, QSCALE),
}

T = "tests/export/test_compat.py::"
SOURCES = {
    "vllm-ct": "vLLM source, vllm/model_executor/layers/quantization/compressed_tensors/schemes/"
    "compressed_tensors_wNa16.py: the W*A16 pack-quantized scheme takes 4 or 8 bits "
    "(WNA16_SUPPORTED_BITS) and zero points for 4 and 8 bits (WNA16_ZP_SUPPORTED_TYPES_MAP)",
    "vllm-gptq": "docs.vllm.ai, Quantization (GPTQModel page and the supported-hardware table: GPTQ on NVIDIA GPUs, "
    "Intel GPU and x86 CPU; Marlin kernels for GPTQ)",
    "vllm-models": "docs.vllm.ai, Supported Models: LlamaForCausalLM, GPTNeoXForCausalLM and GPT2LMHeadModel are "
    "listed",
    "trt-dq": "docs.nvidia.com, TensorRT Operators, Dequantize: the zero_point must only contain zero-valued "
    "coefficients; 2-D (block) scales are supported for INT4 only",
}


@dataclass(frozen=True)
class Note:
    """One cell: does ``loader`` read the folder (``yes`` / ``with`` a setting / ``no``), how or what instead,
    and the evidence (``tested: <test>`` or ``documented: <source>``)."""

    loader: str
    reads: str
    how: str
    evidence: str

    def line(self) -> str:
        """One line for a terminal: loader, verdict, how or what instead, and the kind of evidence."""
        kind = self.evidence.split(":")[0].split(" (")[0]
        return f"{self.loader.replace('`', '')}: {_mark(self)} — {self.how} ({kind})"


def notes(
    fmt: str, symmetric: bool, architecture: str, bits: int | None = 4, group_size: int | None = 128
) -> list[Note]:
    """The loaders of a folder written as ``fmt`` from a model of ``architecture`` (a config ``model_type``),
    quantized ``symmetric`` or not to ``bits`` (None: mixed precision) with ``group_size`` (None = per channel)."""
    arch = architecture if architecture in ARCHITECTURES else None
    return [_cell(fmt, symmetric, arch, bits, group_size, loader) for loader in LOADERS.get(fmt, ())]


def lines(
    fmt: str, symmetric: bool, architecture: str, bits: int | None = 4, group_size: int | None = 128
) -> list[str]:
    """What ``qscale quantize`` prints about a folder it wrote: a heading and one line per loader."""
    arch = ARCHITECTURES.get(architecture, f"{architecture} (not in the tested set)")
    head = f"Loaders of the {fmt} folder ({'symmetric' if symmetric else 'asymmetric'} weights, {arch}):"
    return [
        head,
        *(f"  {n.line()}" for n in notes(fmt, symmetric, architecture, bits, group_size)),
        "  (docs/reference/compatibility.md: versions, tests and sources)",
    ]


def _cell(fmt: str, sym: bool, arch: str | None, bits: int | None, G: int | None, loader: str) -> Note:
    untested = f"not tested for this architecture ({', '.join(ARCHITECTURES.values())} are)"
    if loader == QSCALE:
        if fmt == "onnx":
            return Note(
                loader,
                "no",
                "qscale does not read ONNX graphs: use ONNX Runtime (qscale reads the folder the "
                "graph was exported from)",
                "by design",
            )
        return Note(
            loader,
            "yes",
            "the logits qscale measured when it wrote the folder",
            "tested: test_qscale_reads_every_folder" if arch else untested,
        )
    if loader == HF_CT:
        if sym:
            return Note(
                loader,
                "yes",
                "AutoModelForCausalLM.from_pretrained(folder)",
                "tested: test_transformers_reads_compressed_tensors" if arch else untested,
            )
        return Note(
            loader,
            "with",
            "plain from_pretrained fails (zero-point shape mismatch); pass "
            "quantization_config=CompressedTensorsConfig(dequantize=True)",
            "tested: test_transformers_reads_compressed_tensors" if arch else untested,
        )
    if loader == HF_GPTQ:
        if arch == "gpt2":
            return Note(
                loader,
                "no",
                "fails inside transformers (its CPU kernel module has no .weight); use "
                + ("GPTQModel.load(folder) or " if sym else "")
                + "qscale.load_quantized",
                "tested: test_transformers_gptq_fails_on_gpt2",
            )
        return Note(
            loader,
            "yes",
            "AutoModelForCausalLM.from_pretrained(folder) (needs optimum and gptqmodel)",
            "tested: test_transformers_reads_gptq" if arch else untested,
        )
    if loader == GPTQMODEL:
        if not sym:
            return Note(
                loader,
                "no",
                "GPTQModel.load refuses sym=False GPTQ v1 folders not written by gptqmodel "
                ">= 0.9.0; use "
                + (
                    "qscale.load_quantized"
                    if arch == "gpt2"
                    else "transformers + gptqmodel (from_pretrained) or qscale.load_quantized"
                ),
                "tested: test_gptqmodel_load",
            )
        return Note(
            loader,
            "yes",
            "GPTQModel.load(folder, device=...) (the folder needs the tokenizer qscale copies from the source)",
            "tested: test_gptqmodel_load" if arch else untested,
        )
    if loader == ORT:
        return Note(
            loader,
            "yes",
            "InferenceSession(model.onnx): each DequantizeLinear + MatMul fused into MatMulNBits",
            "tested: test_onnx_runtime_reads_every_architecture" if arch else untested,
        )
    if loader == TRT:
        if not sym:
            return Note(
                loader,
                "no",
                "TensorRT dequantizes only with zero points of 0: quantize symmetrically (--sym) for TensorRT",
                "documented: trt-dq",
            )
        if G is not None and (bits is None or bits > 4):
            return Note(
                loader,
                "no",
                "group-wise (block) scales are INT4-only in TensorRT: use <= 4 bits or "
                "per-channel scales (--group-size 0)",
                "documented: trt-dq",
            )
        return Note(loader, "yes", "symmetric QDQ weights (zero points all 0)", "documented: trt-dq")
    if loader == HF:  # a --format qscale folder
        return Note(
            loader,
            "no",
            "raises by design (model_type qscale_packed, weights qscale-model.safetensors): "
            "only qscale reads this layout",
            "tested: test_native.py",
        )
    return _vllm(fmt, sym, arch, bits)


def _vllm(fmt: str, sym: bool, arch: str | None, bits: int | None) -> Note:
    where = "" if arch else "; architecture not listed here"
    if bits is None and fmt in ("compressed-tensors", "gptq"):
        return Note(
            VLLM,
            "with",
            "mixed precision: each layer's bit width must be one vLLM takes (4 or 8 for "
            "compressed-tensors); otherwise use qscale",
            "documented: vllm-ct, vllm-gptq",
        )
    if fmt == "compressed-tensors":
        if bits in (4, 8):
            return Note(
                VLLM,
                "yes",
                f"vllm serve folder (compressed-tensors W{bits}A16{'' if sym else ' with zero points'}){where}",
                "documented: vllm-ct, vllm-models",
            )
        return Note(
            VLLM,
            "no",
            f"vLLM's compressed-tensors W*A16 path takes 4 or 8 bits, not {bits}: use qscale or transformers",
            "documented: vllm-ct",
        )
    if fmt == "gptq":
        if bits in (2, 3, 4, 8):
            return Note(VLLM, "yes", f"vllm serve folder (GPTQ){where}", "documented: vllm-gptq, vllm-models")
        return Note(VLLM, "no", f"GPTQ v1 has no {bits}-bit form", "documented: vllm-gptq")
    return Note(
        VLLM,
        "no",
        "vLLM does not read qscale's own layout: use --format compressed-tensors or gptq "
        "where the method allows (otherwise serve with qscale)",
        "by design (model_type qscale_packed)",
    )


def _mark(note: Note) -> str:
    return {"yes": "yes", "with": "with setting", "no": "no"}[note.reads]


def table_markdown() -> str:
    """The compatibility table (Markdown) over formats, symmetry and the tested architectures (4-bit, G = 128)."""
    lines = [
        "| format | weights | architecture | loader | reads | how / instead | evidence |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt in FORMATS:
        for sym in (True, False):
            for arch, label in ARCHITECTURES.items():
                if fmt == "compressed-tensors" and arch == "gpt2":
                    lines.append(
                        f"| {fmt} | {'sym' if sym else 'asym'} | {label} | — | not written | GPT-2's Conv1D "
                        "layers have no compressed-tensors form: use --format gptq or qscale | by design |"
                    )
                    continue
                for n in notes(fmt, sym, arch):
                    lines.append(
                        f"| {fmt} | {'sym' if sym else 'asym'} | {label} | {n.loader} | {_mark(n)} | "
                        f"{n.how} | {n.evidence} |"
                    )
    return "\n".join(lines) + "\n"
