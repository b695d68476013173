"""Tiny Hugging Face causal LMs and synthetic structured token batches for the QAT tests."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_neox(seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64)
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
