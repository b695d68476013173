"""EdgeQAT: the entropy and distribution terms by hand, token importance and adaptive bits, training, export."""

import copy
import math

import pytest
import torch

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.models.ladder import build_model
from qscale.qat import QATRecipeConfig, convert, get_recipe, prepare, qat_finetune
from qscale.qat.edgeqat import (
    EdgeQATOptions,
    EdgeState,
    TokenAdaptiveActQuantizer,
    distribution_term,
    entropy_term,
    gaussian_entropy,
    install,
    token_importance,
)
from qscale.qat.finetune import lm_loss


def test_entropy_term_by_hand():
    c = math.log(2 * math.pi * math.e) / 2  # H of a unit-variance Gaussian
    assert gaussian_entropy(torch.tensor([1.0, -1.0, 1.0, -1.0])) == pytest.approx(c)
    # layer 1: query heads of variance 1 and 4, one key head of variance 1; layer 2: everything variance 9
    q1 = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 2.0, -2.0]).reshape(1, 2, 2, 2)
    k1 = torch.tensor([1.0, -1.0, -1.0, 1.0]).reshape(1, 1, 2, 2)
    q2, k2 = q1.sign() * 3, k1 * 3
    h = lambda var: c + math.log(var) / 2
    layer1 = (h(1) + h(4)) / 2 + h(1)
    layer2 = h(9) + h(9)
    assert float(entropy_term([(q1, k1), (q2, k2)])) == pytest.approx(-(layer1 + layer2) / 2, rel=1e-6)


def test_distribution_term_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).reshape(1, 1, 2, 2)
    q = torch.tensor([[1.0, 0.0], [0.25, 0.75]]).reshape(1, 1, 2, 2)
    row1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(distribution_term([p.log()], [q.log()])) == pytest.approx(row1 / 2, rel=1e-6)  # row 0: KL 0
    assert float(distribution_term([p.log(), p.log()], [p.log(), q.log()])) == pytest.approx(row1 / 4, rel=1e-6)


def test_token_importance_and_adaptive_bits():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]).reshape(1, 1, 3, 3)
    imp = token_importance(torch.cat([a, a], dim=1).log())  # two heads, identical
    assert torch.allclose(imp, torch.tensor([[1.7 / 3, 0.8 / 2, 0.5 / 1]]))
    q = TokenAdaptiveActQuantizer(bits=2, high_bits=8, fraction=0.2, qk_bits=4)
    q.state = EdgeState(4, importance=torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.0, 0.05, 0.02, 0.01, 0.03, 0.04]]))
    x = torch.randn(1, 10, 16)
    assert q.token_bits(x).flatten().tolist() == [2, 8, 2, 8, 2, 2, 2, 2, 2, 2]  # top ceil(0.2·10) = 2 tokens
    err = (q(x) - x).abs().amax(-1)
    absmax = x.abs().amax(-1)
    assert torch.all(err[0, [1, 3]] <= absmax[0, [1, 3]] / 127 / 2 + 1e-6)
    assert torch.allclose(q(x)[0, 0] / (absmax[0, 0] / 1), (q(x)[0, 0] / absmax[0, 0]).round())  # ternary levels
    q.state = None
    assert q.token_bits(x).unique().tolist() == [2]


def test_hooked_attention_without_quantization_is_the_model(llama):
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = llama(input_ids=ids).logits
        install(llama, None)
        after = llama(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_edgeqat_trains_records_terms_and_round_trips(llama, batches, tmp_path):
    cfg = QATRecipeConfig("edgeqat", w_bits=4, a_bits=4, group_size=32)
    losses = qat_finetune(llama, cfg, batches, steps=15, lr=1e-2, warmup_steps=2)
    assert losses[-1] < losses[0]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    llama.eval()
    with torch.no_grad():
        trained = llama(input_ids=ids).logits
    convert(llama)
    export_model(llama, tmp_path / "e", "qscale")
    back = load_quantized(tmp_path / "e")
    with torch.no_grad():
        assert torch.equal(llama(input_ids=ids).logits, trained)
        assert torch.equal(back(input_ids=ids).logits, trained)


def test_edgeqat_loss_adds_both_terms(llama, batches):
    teacher = copy.deepcopy(llama)
    cfg = QATRecipeConfig("edgeqat", w_bits=4, a_bits=4, group_size=32)
    prepare(llama, cfg)
    hooks = get_recipe("edgeqat").hooks(llama, cfg, teacher)
    loss = hooks.backward(llama, batches(0), lambda b: lm_loss(llama, b)[0], 0, 1)
    o = cfg.options
    expected = hooks.last["task"] + o.entropy_weight * hooks.last["entropy"] + o.distribution_weight * hooks.last["distribution"]
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert hooks.last["distribution"] > 0


def test_edgeqat_refuses_unhooked_architectures(neox, batches):
    with pytest.raises(QscaleError, match="gpt_neox' is not supported"):
        qat_finetune(neox, QATRecipeConfig("edgeqat", group_size=32), batches, steps=1, lr=1e-3)


def test_edgeqat_hooks_the_ladder_models(batches):
    model = build_model("xs", vocab_size=64, max_seq_len=64)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fp = model(input_ids=ids).logits
    cfg = QATRecipeConfig("edgeqat", w_bits=8, a_bits=8, group_size=32, options=EdgeQATOptions(qk_bits=8))
    losses = qat_finetune(model, cfg, batches, steps=2, lr=1e-6)
    state = model._qscale_edgeqat
    with torch.no_grad():
        q = model.eval()(input_ids=ids).logits
    assert state.importance is not None and state.importance.shape == (2, 16)  # set by the last attention layer
    assert len(losses) == 2 and (q - fp).abs().max() < 0.1  # 8-bit everything: close to the fp model
