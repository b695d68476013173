"""The one training engine: weight-decay policy, schedule, autocast helper, accumulation and losses."""

import contextlib

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.qat import QATRecipeConfig, prepare
from qscale.train.engine import (
    OptimConfig,
    StepHooks,
    autocast,
    decay_groups,
    device_for,
    lm_loss,
    make_optimizer,
    train_model,
    train_steps,
)

VOCAB = 64


def tiny_llama_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def structured(step: int) -> torch.Tensor:
    """Arithmetic sequences mod VOCAB with a per-row stride in {1, 2, 3}: learnable in a few steps."""
    g = torch.Generator().manual_seed(1000 + step)
    start, stride = torch.randint(0, VOCAB, (8, 1), generator=g), torch.randint(1, 4, (8, 1), generator=g)
    return (start + stride * torch.arange(33)) % VOCAB


def test_no_decay_on_norms_biases_and_quantizer_parameters():
    model = tiny_llama_model()
    model.model.layers[0].mlp.up_proj.bias = nn.Parameter(torch.zeros(128))  # a bias to check
    prepare(model, QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32, lsq_plus=True))
    decay, rest = decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, kept = {names[id(p)] for p in decay}, {names[id(p)] for p in rest}
    quant = {n for n in names.values() if "quantizer" in n}
    assert quant and quant <= kept  # LSQ step sizes and LSQ+ offsets are never decayed
    assert any(n.endswith("norm.weight") for n in kept) and "model.layers.0.mlp.up_proj.bias" in kept
    assert "model.layers.0.mlp.up_proj.weight" in decayed and not any("norm" in n for n in decayed)
    assert decayed | kept == set(names.values()) and not decayed & kept
    opt = make_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_embedding_lr_moves_embeddings_and_head_at_their_own_rate():
    """Adam's first step moves every parameter with a gradient by ~its group's LR (|m / sqrt(v)| = 1)."""
    model, ref = tiny_llama_model(), tiny_llama_model()
    cfg = OptimConfig(lr=1e-3, embed_lr=1e-2, min_lr_ratio=1.0)
    opt = make_optimizer(model, cfg)
    embed = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    scaled = [g for g in opt.param_groups if g.get("lr_scale")]
    assert {id(p) for g in scaled for p in g["params"]} == embed and scaled[0]["lr_scale"] == pytest.approx(10.0)
    train_steps(model, structured, cfg, 1, opt=opt)
    moved = {
        n: (p - q).abs().max().item() for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True)
    }
    assert moved["lm_head.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["model.embed_tokens.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["model.layers.0.mlp.up_proj.weight"] == pytest.approx(1e-3, rel=1e-3)
    same_a, same_b = tiny_llama_model(), tiny_llama_model()  # embed_lr = lr is the plain optimiser, bit for bit
    train_steps(same_a, structured, OptimConfig(lr=1e-3, warmup=1), 3)
    train_steps(same_b, structured, OptimConfig(lr=1e-3, warmup=1, embed_lr=1e-3), 3)
    assert all(torch.equal(p, q) for p, q in zip(same_a.parameters(), same_b.parameters(), strict=True))
    with pytest.raises(QscaleError, match="embedding learning rate"):
        OptimConfig(lr=1e-3, embed_lr=0.0)


def test_low_rank_factors_are_quantizer_parameters():
    model = tiny_llama_model()
    prepare(model, QATRecipeConfig("lrqat", w_bits=4, group_size=32, rank=4))
    decay, rest = decay_groups(model)
    assert not decay and any(p.ndim == 2 for p in rest)  # A, B (2-D) live in the quantizer: not decayed


def test_schedule_and_config_validation():
    cfg = OptimConfig(lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0, 100) == pytest.approx(0.1) and cfg.lr_at(10, 100) == pytest.approx(1.0)
    assert cfg.lr_at(99, 100) == pytest.approx(0.1)
    for bad in (
        {"lr": 0.0},
        {"lr": 1.0, "schedule": "step"},
        {"lr": 1.0, "betas": (0.9, 1.0)},
        {"lr": 1.0, "warmup": -1},
    ):
        with pytest.raises(QscaleError):
            OptimConfig(**bad)


def test_device_and_autocast_on_cpu():
    assert device_for("cpu").type == "cpu"
    assert isinstance(autocast(torch.device("cpu")), contextlib.nullcontext)
    with pytest.raises(QscaleError, match="unknown device"):
        device_for("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(QscaleError, match="CUDA is not available"):
            device_for("cuda")


def test_accumulation_matches_the_full_batch_and_losses_are_the_mean():
    a, b = tiny_llama_model(), tiny_llama_model()
    cfg = OptimConfig(lr=1e-3, warmup=1, weight_decay=0.1)
    la = train_steps(a, structured, cfg, 3)
    lb = train_steps(b, structured, cfg, 3, grad_accum=2)
    assert la == pytest.approx(lb, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
    with torch.no_grad():
        assert lm_loss(a, structured(3))[0].item() < la[0]


class OwnLossHooks(StepHooks):
    """Like a distillation recipe's hooks: its own loss (not the engine's objective) plus a batch-independent term."""

    def backward(self, model, batch, objective, step, total):
        loss = lm_loss(model, batch)[0] + 0.1 * model.lm_head.weight.square().sum()
        loss.backward()
        return loss.detach()


def test_accumulation_with_hooks_that_make_their_own_gradients():
    a, b = tiny_llama_model(), tiny_llama_model()
    cfg = OptimConfig(lr=1e-3, warmup=1)
    la = train_steps(a, structured, cfg, 3, hooks=OwnLossHooks())
    lb = train_steps(b, structured, cfg, 3, grad_accum=2, hooks=OwnLossHooks())
    assert la == pytest.approx(lb, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_resumed_steps_equal_uninterrupted_ones_and_nan_is_an_error():
    cfg = OptimConfig(lr=1e-3, warmup=2)
    whole = tiny_llama_model()
    ref = train_steps(whole, structured, cfg, 6)
    part = tiny_llama_model()
    opt = make_optimizer(part, cfg)
    first = train_steps(part, structured, cfg, 6, opt=opt, end=4)
    rest = train_steps(part, structured, cfg, 6, opt=opt, start=4)
    assert first + rest == ref
    assert all(torch.equal(p, q) for p, q in zip(whole.parameters(), part.parameters(), strict=True))
    with pytest.raises(QscaleError, match="not finite"):
        train_steps(tiny_llama_model(), structured, cfg, 2, loss_fn=lambda m, b, s: lm_loss(m, b)[0] * float("nan"))


def test_train_model_lowers_the_loss_and_leaves_eval_mode():
    model = tiny_llama_model()
    losses = train_model(model, OptimConfig(lr=3e-3, warmup=2), structured, 20)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]) and not model.training
