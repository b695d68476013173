"""Tiny quantized models for the export tests (random weights; PTQ and QAT paths)."""

import copy

import pytest
import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from qscale.ptq import PTQConfig, quantize_model
from qscale.quant import QuantizedLinear, QuantSpec

V = 64


def tiny_llama(seed: int = 0, tie: bool = False, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_neox(seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(cfg).eval()


def ptq(model, method="gptq", spec=QuantSpec(4, granularity="group", group_size=32), **kw):
    model = copy.deepcopy(model)
    calib = torch.randint(0, V, (8, 16), generator=torch.Generator().manual_seed(1))
    quantize_model(model, PTQConfig(method, spec, **kw), calib)
    return model


def qlayers(model) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def logits(model) -> torch.Tensor:
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(input_ids=ids).logits


class Kit:
    """The helpers above, for tests (``--import-mode=importlib`` cannot import conftest by name)."""

    tiny_llama = staticmethod(tiny_llama)
    tiny_neox = staticmethod(tiny_neox)
    ptq = staticmethod(ptq)
    qlayers = staticmethod(qlayers)
    logits = staticmethod(logits)


@pytest.fixture(scope="session")
def kit():
    return Kit


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()
