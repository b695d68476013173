"""Tiny Hugging Face causal LMs and synthetic structured token batches for the QAT tests."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_neox(seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(cfg).eval()


def structured_batch(step: int, batch: int = 8, seq: int = 32) -> torch.Tensor:
    """Arithmetic sequences mod VOCAB with a per-row stride in {1, 2, 3}: learnable in a few steps."""
    g = torch.Generator().manual_seed(1000 + step)
    start = torch.randint(0, VOCAB, (batch, 1), generator=g)
    stride = torch.randint(1, 4, (batch, 1), generator=g)
    return (start + stride * torch.arange(seq + 1)) % VOCAB


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def neox():
    return tiny_neox()


@pytest.fixture
def tiny():
    """Builders by name (tests parametrize over the names): ``tiny["llama"](seed)``."""
    return {"llama": tiny_llama, "neox": tiny_neox}


@pytest.fixture
def batches():
    return structured_batch


def wave(*shape: int, a: float = 0.37, b: float = 0.1, scale: float = 1.0) -> torch.Tensor:
    """A fixed float32 tensor, ``scale·(sin(a·k + b) + sin(1.91·k + 2b)/2)`` over the flat index k, computed in
    float64: the input of the golden-value tests (the authors' code ran on the same formula)."""
    k = torch.arange(math.prod(shape), dtype=torch.float64)
    return ((torch.sin(a * k + b) + 0.5 * torch.sin(1.91 * k + 2 * b)) * scale).reshape(shape).float()


def wave_matrix(rows: int, cols: int, scale: float = 1.0) -> torch.Tensor:
    """A fixed full-rank float32 matrix (``wave`` is of low rank as a matrix), for golden-value tests."""
    i = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(cols, dtype=torch.float64)[None, :]
    return ((torch.sin(0.37 * i * j + 0.1 * i + 0.7 * j) + 0.5 * torch.cos(1.3 * i + 0.29 * j * j)) * scale).float()


class Golden:
    """The golden-value inputs, for tests (``--import-mode=importlib`` cannot import conftest by name)."""

    wave = staticmethod(wave)
    matrix = staticmethod(wave_matrix)


@pytest.fixture(scope="session")
def golden():
    return Golden
