"""QVGen: branch init from the quantization error, rank-decay schedule to rank 0, no extra exported tensors."""

import copy

import pytest
import torch
from safetensors import safe_open

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.qat import (
    QATRecipeConfig,
    convert,
    get_recipe,
    prepare,
    qat_finetune,
    quant_layers,
)
from qscale.qat.qvgen import QVGenOptions, QVGenWeightQuantizer, phase_at, rank_phases
from qscale.quant import QuantSpec


def test_rank_phases_and_schedule():
    assert rank_phases(8) == [4, 2, 1, 0] and rank_phases(1) == [0] and rank_phases(6) == [3, 1, 0]
    assert [phase_at(s, 16, 8, 0.5)[0] for s in range(0, 16, 2)] == [0, 1, 2, 3, 4, 4, 4, 4]
    assert phase_at(1, 16, 8, 0.5) == (0, 0.5)


def test_branch_starts_as_low_rank_quantization_error():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    q = QVGenWeightQuantizer(w, QuantSpec(2, True, "group", 32), rank=4)
    with torch.no_grad():
        plain = super(QVGenWeightQuantizer, q).forward(w)
        err = w - plain
        U, S, Vh = torch.linalg.svd(err)
        assert torch.allclose(q.branch(), (U[:, :4] * S[:4]) @ Vh[:4], atol=1e-5)  # best rank-4 approximation
        assert (w - q(w)).norm() < err.norm()
    with pytest.raises(QscaleError, match="still has rank 4"):
        q.freeze(w)


def test_ranks_decay_to_zero_by_the_end_of_the_schedule(llama, batches):
    cfg = QATRecipeConfig("qvgen", w_bits=3, a_bits=16, group_size=32, rank=8, options=QVGenOptions(decay_end=0.5))
    prepare(llama, cfg)
    hooks = get_recipe("qvgen").hooks(llama, cfg, None)
    opt = torch.optim.AdamW([p for p in llama.parameters() if p.requires_grad], lr=1e-3)
    ranks = []
    for step in range(20):
        hooks.after_step(llama, opt, step, 20)
        ranks.append({q.weight_quantizer.rank for q in quant_layers(llama).values()})
    assert all(len(r) == 1 for r in ranks)
    ranks = [r.pop() for r in ranks]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] == 8 and ranks[9] == 0 and ranks[8] > 0


def test_rank_reaches_zero_even_with_fewer_steps_than_phases(llama):
    cfg = QATRecipeConfig("qvgen", w_bits=3, a_bits=16, group_size=32, rank=16)  # 5 phases, 3 steps
    prepare(llama, cfg)
    hooks = get_recipe("qvgen").hooks(llama, cfg, None)
    opt = torch.optim.AdamW([p for p in llama.parameters() if p.requires_grad], lr=1e-3)
    ranks = []
    for step in range(3):
        hooks.after_step(llama, opt, step, 3)
        ranks.append(max(q.weight_quantizer.rank for q in quant_layers(llama).values()))
    assert ranks[-1] == 0 and ranks == sorted(ranks, reverse=True) and ranks[0] < 16
    convert(llama)


def test_qvgen_trains_and_exports_without_extra_parameters(llama, batches, tmp_path):
    lsq = copy.deepcopy(llama)
    losses = qat_finetune(llama, QATRecipeConfig("qvgen", w_bits=4, a_bits=16, group_size=32, rank=4), batches,
                          steps=16, lr=1e-2, warmup_steps=2)
    assert losses[-1] < losses[0]
    assert all(q.weight_quantizer.rank == 0 for q in quant_layers(llama).values())
    qat_finetune(lsq, QATRecipeConfig("lsq", w_bits=4, a_bits=16, group_size=32), batches, steps=2, lr=1e-3)
    for name, model in (("qvgen", llama), ("lsq", lsq)):
        convert(model)
        export_model(model, tmp_path / name, "compressed-tensors")

    def shapes(folder):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safetensors reader, not a dict)

    assert shapes(tmp_path / "qvgen") == shapes(tmp_path / "lsq")
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "qvgen")(input_ids=ids).logits, llama(input_ids=ids).logits)
