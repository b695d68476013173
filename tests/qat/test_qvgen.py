"""QVGen: branch init from the quantization error, rank-decay schedule to rank 0, no extra exported tensors."""

import copy
import math

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
    losses = qat_finetune(
        llama,
        QATRecipeConfig("qvgen", w_bits=4, a_bits=16, group_size=32, rank=4),
        batches,
        steps=16,
        lr=1e-2,
        warmup_steps=2,
    )
    assert losses[-1] < losses[0]
    assert all(q.weight_quantizer.rank == 0 for q in quant_layers(llama).values())
    qat_finetune(lsq, QATRecipeConfig("lsq", w_bits=4, a_bits=16, group_size=32), batches, steps=2, lr=1e-3)
    for name, model in (("qvgen", llama), ("lsq", lsq)):
        convert(model)
        export_model(model, tmp_path / name, "compressed-tensors")

    def shapes(folder):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    assert shapes(tmp_path / "qvgen") == shapes(tmp_path / "lsq")
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "qvgen")(input_ids=ids).logits, llama(input_ids=ids).logits)


# Golden values from ModelTC/QVGen @ 198e761f770fa0728e21da5e76b8198e41cbaf3b, training/quant/quant.py:
# ``low_rank_decomposition``, ``ProgressiveLoRAQuantizer.set_alpha_L_R`` and the branch of its ``_forward``
# (``(L * alpha) @ R``) copied verbatim into a scratch folder outside the project and run on CPU with rank 8,
# ``alpha_T`` 4, no warm-up, cosine strategy, L, R = low_rank_decomposition(golden.matrix(12, 10, 0.1), 8); one
# row per training iteration. Alpha codes: 1 → 1, a → (1 + cos(π/4))/2, h → 1/2, b → (1 − cos(π/4))/2, 0 → 0;
# "-" = L and R deleted (rank 0).
AUTHORS_ALPHA = [
    "11111111",
    "1111aaaa",
    "1111hhhh",
    "1111bbbb",
    "11110000",
    "11aa0000",
    "11hh0000",
    "11bb0000",
    "11000000",
    "1a000000",
    "1h000000",
    "1b000000",
    "10000000",
    "a0000000",
    "h0000000",
    "b0000000",
    "--------",
    "--------",
    "--------",
    "--------",
]
AUTHORS_BRANCH_NORM = [
    0.82826853,
    0.79619277,
    0.73624831,
    0.70582539,
    0.70290321,
    0.66866952,
    0.60360605,
    0.56991732,
    0.56665343,
    0.53034347,
    0.45939249,
    0.42131183,
    0.41756007,
    0.35640982,
    0.20878004,
    0.06115026,
]
AUTHORS_BRANCH_DOT = [
    0.11918646,
    0.077416271,
    -0.023425817,
    -0.12426785,
    -0.1660381,
    -0.16565096,
    -0.16471645,
    -0.16378185,
    -0.16339475,
    -0.16110189,
    -0.15556639,
    -0.15003088,
    -0.14773801,
    -0.12610227,
    -0.073869005,
    -0.021635726,
]


def test_rank_decay_matches_the_authors_progressive_lora(golden):
    """4 phases of 4 steps (decay_end 0.8 of 20 steps = the authors' alpha_T 4): the regulariser of every
    component, and the branch after the SVD re-factorings, step by step."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 12, bias=False))
    cfg = QATRecipeConfig(
        "qvgen", w_bits=4, a_bits=16, group_size=None, rank=8, exclude=(), options=QVGenOptions(decay_end=0.8)
    )
    prepare(model, cfg)
    q = model[0].weight_quantizer
    U, S, Vh = torch.linalg.svd(golden.matrix(12, 10, 0.1), full_matrices=False)
    with torch.no_grad():
        q.U.copy_(U[:, :8] * S[:8].sqrt())
        q.V.copy_(S[:8].sqrt()[:, None] * Vh[:8])
    hooks = get_recipe("qvgen").hooks(model, cfg, None)
    opt = torch.optim.AdamW([q.U, q.V])
    value = {"1": 1.0, "a": (1 + math.cos(math.pi / 4)) / 2, "h": 0.5, "b": (1 - math.cos(math.pi / 4)) / 2, "0": 0.0}
    probe = golden.wave(12, 10, a=0.11)
    for it, alpha in enumerate(AUTHORS_ALPHA):
        if it:
            hooks.after_step(model, opt, it - 1, 20)
        if alpha == "--------":
            assert q.rank == 0
            continue
        assert torch.allclose(q.gamma, torch.tensor([value[c] for c in alpha]), atol=1e-7), it
        branch = q.branch().detach()
        assert branch.norm().item() == pytest.approx(AUTHORS_BRANCH_NORM[it], rel=1e-6), it
        assert (branch * probe).sum().item() == pytest.approx(AUTHORS_BRANCH_DOT[it], rel=1e-5, abs=1e-7), it
