"""Low-rank QAT (lrqat, l4q): definitions, frozen base, merge into integer codes, export size."""

import copy

import pytest
import torch

from qscale.export import export_model, folder_bytes, load_quantized
from qscale.ptq import PTQConfig, quantize_model
from qscale.qat import QATRecipeConfig, convert, prepare, qat_finetune, quant_layers
from qscale.qat.lowrank import LRQATWeightQuantizer
from qscale.quant import QuantizedLinear, QuantSpec, fake_quantize

CFGS = [QATRecipeConfig("lrqat", w_bits=3, group_size=32, rank=4), QATRecipeConfig("l4q", w_bits=4, group_size=32, rank=4),
        QATRecipeConfig("lrqat", w_bits=2, group_size=None, rank=2)]


def test_lrqat_definition_at_init_is_rtn_of_the_fixed_point_base():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.05
    spec = QuantSpec(4, True, "group", 32)
    q = LRQATWeightQuantizer(w, spec, rank=4, alpha=4.0)
    assert q.w0_fixed.dtype == torch.int8 and q.frac_bits == 4  # Q4.4 fixed point: W0/s0 to 1/16
    with torch.no_grad():
        # A = 0: Ŵ = s0·clip(round(φ(W0/s0))); φ rounds to 1/16, so it equals RTN except at near-ties
        assert (q(None) != fake_quantize(w, spec)).float().mean() < 0.05
        q.A.fill_(0.01)
    out = q(None)
    out.sum().backward()
    assert q.A.grad is not None and q.B.grad is not None and q.scale.grad is not None
    assert torch.equal(q.freeze(None).dequantize(), q(None).detach())


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.label)
def test_trains_only_the_low_rank_factors_and_scales_and_merges_exactly(llama, batches, cfg):
    before = {n: p.clone() for n, p in llama.named_parameters()}
    losses = qat_finetune(llama, cfg, batches, steps=15, lr=2e-2, warmup_steps=2)
    assert losses[-1] < losses[0]
    trainable = {n for n, p in llama.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[-1] in ("A", "B", "scale", "step") for n in trainable)
    for n, p in llama.named_parameters():
        if n in before:  # embeddings, norms, head: untouched
            assert torch.equal(p, before[n]), n
    assert all(layer.weight is None for layer in quant_layers(llama).values())  # W0 only inside the quantizer
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = llama(input_ids=ids).logits
    convert(llama)
    with torch.no_grad():
        assert torch.equal(llama(input_ids=ids).logits, unmerged)
    layers = [m for m in llama.modules() if isinstance(m, QuantizedLinear)]
    assert layers and not any(hasattr(m, "A") for m in layers)


def test_exported_low_rank_model_is_no_larger_than_ptq(llama, batches, tmp_path):
    ptq = copy.deepcopy(llama)
    quantize_model(ptq, PTQConfig("rtn", QuantSpec(4, True, "group", 32)), None)
    export_model(ptq, tmp_path / "ptq", "compressed-tensors")
    for recipe in ("lrqat", "l4q"):
        model = copy.deepcopy(llama)
        qat_finetune(model, QATRecipeConfig(recipe, w_bits=4, group_size=32, rank=8), batches, steps=3, lr=1e-3)
        convert(model)
        export_model(model, tmp_path / recipe, "compressed-tensors")
        assert folder_bytes(tmp_path / recipe) <= folder_bytes(tmp_path / "ptq")
        back = load_quantized(tmp_path / recipe)
        ids = torch.randint(0, 64, (1, 8))
        with torch.no_grad():
            assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)


def test_low_rank_recipes_are_weight_only():
    with pytest.raises(Exception, match="weight-only"):
        QATRecipeConfig("lrqat", a_bits=4)
    with pytest.raises(Exception, match="rank"):
        QATRecipeConfig("l4q", rank=0)
