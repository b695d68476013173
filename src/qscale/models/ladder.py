"""The model ladder: Llama-architecture causal LMs (RMSNorm, RoPE, SwiGLU, SDPA attention).

Sizes are named ``xxxs``, ``xxs``, ``xs`` .. ``xl``; their non-embedding parameter counts N span ~350x (the
two smallest, N = 13,408 and 40,160, let a CPU suite train its smallest model to D/N of several hundred). Every width
(model and SwiGLU hidden) is a multiple of 32, so a group size of 32 (or 16, 8) means the same
thing at every size. Input embeddings
and the LM head are untied (the Llama default), and neither counts toward N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import LlamaConfig

if TYPE_CHECKING:  # the model classes load torch._dynamo and Triton: imported where a model is built
    from transformers import PreTrainedModel

from qscale.errors import require


@dataclass(frozen=True)
class ModelSize:
    """Shape of one rung: width, depth, heads and SwiGLU hidden width."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    ffn: int


SIZES: dict[str, ModelSize] = {
    s.name: s
    for s in (
        ModelSize("xxxs", d_model=32, n_layers=1, n_heads=1, ffn=96),
        ModelSize("xxs", d_model=32, n_layers=3, n_heads=1, ffn=96),
        ModelSize("xs", d_model=64, n_layers=2, n_heads=2, ffn=192),
        ModelSize("s", d_model=96, n_layers=3, n_heads=3, ffn=256),
        ModelSize("m", d_model=128, n_layers=4, n_heads=4, ffn=384),
        ModelSize("l", d_model=192, n_layers=5, n_heads=6, ffn=512),
        ModelSize("xl", d_model=256, n_layers=6, n_heads=8, ffn=704),
    )
}


def get_size(name: str) -> ModelSize:
    require(name in SIZES, f"unknown model size {name!r} (choose from {', '.join(SIZES)})")
    return SIZES[name]


def llama_config(size: str, vocab_size: int, max_seq_len: int = 1024) -> LlamaConfig:
    """The ``LlamaConfig`` of a ladder rung for a given vocabulary and context length."""
    s = get_size(size)
    require(vocab_size >= 2, f"vocab size must be >= 2, got {vocab_size}")
    require(max_seq_len >= 1, f"max sequence length must be >= 1, got {max_seq_len}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.d_model,
        intermediate_size=s.ffn,
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_heads,
        max_position_embeddings=max_seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=0.02,
        use_cache=False,
        attn_implementation="sdpa",
    )


def build_model(size: str, vocab_size: int, max_seq_len: int = 1024, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised fp32 ``LlamaForCausalLM`` of the named size (init seeded by ``seed``)."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(size, vocab_size, max_seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.float()
