"""Parameter counts. N is the non-embedding count (Kaplan et al. 2020; SPEC units): all parameters
except token embeddings, the LM head and learned position embeddings; the total is recorded too."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParamCount:
    non_embedding: int  # N
    total: int


def count_params(model: nn.Module) -> ParamCount:
    """Count unique parameters; embeddings = input embeddings, output head and position embeddings."""
    params = {id(p): p for p in model.parameters()}
    embedding_ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            embedding_ids |= {id(p) for p in module.parameters()}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.split(".")[-1] in {
            "wpe",
            "embed_positions",
            "position_embeddings",
        }:
            embedding_ids |= {id(p) for p in module.parameters()}
    total = sum(p.numel() for p in params.values())
    emb = sum(params[i].numel() for i in embedding_ids if i in params)
    return ParamCount(non_embedding=total - emb, total=total)
