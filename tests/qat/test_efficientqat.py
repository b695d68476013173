"""EfficientQAT: golden values of the authors' quantizer and Block-AP loop, gradient flow of both phases (Block-AP:
every weight of the block, norms included, and s, z; E2E-QP: the step sizes only), Block-AP beats RTN per block,
the result exports."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from qscale.export import export_model, load_quantized
from qscale.ptq import PTQConfig, quantize_model
from qscale.ptq.layers import find_blocks
from qscale.ptq.sequential import capture_block_inputs, run_block
from qscale.qat import QATRecipeConfig, convert, qat_finetune, quant_layers
from qscale.qat.efficientqat import AsymWeightQuantizer, FrozenCodesQuantizer, block_ap, cosine_lr, freeze_codes
from qscale.quant import QuantSpec, fake_quantize
from qscale.train.engine import OptimConfig, lm_loss, make_optimizer, train_steps

# Golden values from the authors' code, OpenGVLab/EfficientQAT @ 78fd3fb6b6a2e70cc29d9e5d5f4fc6c3ea250619, run on
# CPU in a scratch folder: quantize/quantizer.py's UniformAffineQuantizer(3 bits, group 4) on W below (its
# min-max init, then s scaled by [1.1, 0.9, 1, 1.2] and z shifted by [0.4, -0.3, 9, 0]: the third group's zero
# lies above q_max, where only the straight-through clamp passes a gradient), backward of sum(out * G).
W = [[0.31, -0.12, 0.05, 0.47, -0.22, 0.18, -0.36, 0.09], [0.02, 0.01, -0.03, 0.015, 0.2, -0.45, 0.33, -0.05]]
G = [[1.0, -2.0, 0.5, 3.0, -1.5, 0.25, 2.0, -0.75], [0.5, 1.0, -1.0, 2.0, 1.5, -0.5, 0.75, -2.5]]
AUTHORS_QUANT = {
    "scale0": [0.08428571373224258, 0.0771428570151329, 0.00714285671710968, 0.11142856627702713],
    "zero0": [1.0, 5.0, 4.0, 4.0],
    "out": [
        0.27814286947250366,
        -0.09271428734064102,
        0.09271428734064102,
        0.4635714292526245,
        -0.20828571915626526,
        0.1388571411371231,
        -0.3471428453922272,
        0.06942857056856155,
        0.0,
        0.0,
        -0.02857142686843872,
        0.0,
        0.13371428847312927,
        -0.4011428654193878,
        0.26742857694625854,
        0.0,
    ],
    "gW": [1.0, -2.0, 0.5, 3.0, -1.5, 0.0, 2.0, -0.75, 0.0, 0.0, -1.0, 0.0, 1.5, -0.5, 0.75, -2.5],
    "gs": [-0.9098625183105469, 0.8395066261291504, -0.20000028610229492, -2.2120728492736816],
    "gz": [0.0, -0.01735714077949524, -0.02499999850988388, 0.0],
}
# The authors' Block-AP loop (quantize/block_ap.py's pieces: int_linear_fake.QuantLinear(3 bits, group 32) on
# every linear of the block, quant_parameters / weight_parameters of quantize/utils.py as two AdamW groups with
# weight_decay 0, CosineAnnealingLR(T_max=6, eta_min=lr/20) read with get_last_lr(), MSELoss) in fp32 on CPU,
# 6 iterations at rates 1e-2 (s, z) / 1e-3 (weights) on one 1-block Llama (torch.manual_seed(0), the config of
# _one_block below) and one batch of 4 windows of 16 tokens (randint seed 5).
AUTHORS_BLOCK_AP = {
    "mse": 3.2359384931623936e-05,
    "input_layernorm": [0.998525083065033, 1.0007753372192383, 1.001633644104004, 0.9990445375442505],
    "post_attention_layernorm": [1.0007236003875732, 0.9995172619819641, 0.9979979991912842, 0.9993945360183716],
    "q_proj_weight": [-0.003525526262819767, 0.001784158288501203, 0.047499995678663254, -0.04906783625483513],
    "q_proj_scale": [0.025206895545125008, 0.020452693104743958, 0.016271280124783516, 0.02051512897014618],
    "down_proj_zero": [4.0, 4.0, 4.000789642333984, 3.0004541873931885],
}


def _one_block():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def test_quantizer_matches_the_authors_uniform_affine_quantizer():
    q = AsymWeightQuantizer(torch.tensor(W), QuantSpec(3, False, "group", 4))
    assert q.scale.flatten().tolist() == pytest.approx(AUTHORS_QUANT["scale0"], rel=1e-6)
    assert q.zero.flatten().tolist() == AUTHORS_QUANT["zero0"]
    with torch.no_grad():
        q.scale.mul_(torch.tensor([[1.1], [0.9], [1.0], [1.2]]).reshape(q.scale.shape))
        q.zero.add_(torch.tensor([[0.4], [-0.3], [9.0], [0.0]]).reshape(q.zero.shape))
    w = torch.tensor(W, requires_grad=True)
    out = q(w)
    (out * torch.tensor(G)).sum().backward()
    assert out.flatten().tolist() == pytest.approx(AUTHORS_QUANT["out"], abs=1e-7)
    assert w.grad.flatten().tolist() == AUTHORS_QUANT["gW"]
    assert q.scale.grad.flatten().tolist() == pytest.approx(AUTHORS_QUANT["gs"], rel=1e-5)
    assert q.zero.grad.flatten().tolist() == pytest.approx(AUTHORS_QUANT["gz"], rel=1e-5, abs=1e-9)


def test_block_ap_matches_the_authors_loop():
    model = _one_block()
    calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(5))
    mse = block_ap(
        model, QATRecipeConfig("efficientqat", w_bits=3, group_size=32), calib, steps=6, lr_weight=1e-3, lr_quant=1e-2
    )
    b, want = model.model.layers[0], AUTHORS_BLOCK_AP
    assert mse == [pytest.approx(want["mse"], rel=1e-4)]
    assert b.input_layernorm.weight[:4].tolist() == pytest.approx(want["input_layernorm"], abs=1e-6)
    assert b.post_attention_layernorm.weight[:4].tolist() == pytest.approx(want["post_attention_layernorm"], abs=1e-6)
    assert b.self_attn.q_proj.weight[0, :4].tolist() == pytest.approx(want["q_proj_weight"], abs=1e-6)
    assert b.self_attn.q_proj.weight_quantizer.scale.flatten()[:4].tolist() == pytest.approx(
        want["q_proj_scale"], abs=1e-6
    )
    assert b.mlp.down_proj.weight_quantizer.zero.flatten()[:4].tolist() == pytest.approx(
        want["down_proj_zero"], abs=1e-5
    )


def test_cosine_lr_is_the_authors_annealing_to_a_twentieth():
    assert cosine_lr(1e-4, 0, 10, 20) == pytest.approx(1e-4)
    assert cosine_lr(1e-4, 5, 10, 20) == pytest.approx((1e-4 + 5e-6) / 2)
    assert cosine_lr(2e-5, 10, 10, 20) == pytest.approx(1e-6)


def _block_errors(model, fp, calib):
    """MSE of each block of ``model`` vs the fp block, each on the fp block's own inputs."""
    _, blocks = find_blocks(model)
    _, fp_blocks = find_blocks(fp)
    errs = []
    with torch.no_grad():
        inputs = capture_block_inputs(fp, fp_blocks[0], calib, progress=False)
        for blk, ref in zip(blocks, fp_blocks, strict=True):
            outs = [run_block(ref, i) for i in inputs]
            errs.append(sum(float(F.mse_loss(run_block(blk, i), o)) for i, o in zip(inputs, outs, strict=True)))
            inputs = [i.with_hidden(o) for i, o in zip(inputs, outs, strict=True)]
    return errs


def test_asym_quantizer_starts_at_rtn_and_freezes_exactly():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    spec = QuantSpec(3, False, "group", 32)
    q = AsymWeightQuantizer(w, spec)
    assert torch.equal(q(w), fake_quantize(w, spec))
    assert torch.equal(q.freeze(w).dequantize(), q(w))


def test_block_ap_lowers_each_blocks_error_below_rtn(llama, batches):
    calib = torch.cat([batches(s)[:, :-1] for s in range(4)])
    cfg = QATRecipeConfig("efficientqat", w_bits=2, group_size=32)
    fp = copy.deepcopy(llama)
    rtn = copy.deepcopy(llama)
    quantize_model(rtn, PTQConfig("rtn", QuantSpec(2, False, "group", 32)), None)
    block_ap(llama, cfg, calib, steps=40, lr_weight=1e-3, lr_quant=1e-3)
    ours, base = _block_errors(llama, fp, calib), _block_errors(rtn, fp, calib)
    assert all(o < b for o, b in zip(ours, base, strict=True)), (ours, base)


def test_block_ap_gradient_flow_every_block_weight_and_quantizer_trains(llama, batches, monkeypatch):
    """Block-AP: every weight of each block (linear and norm weights) and every s, z gets a non-zero gradient in
    its block's optimizer and moves; nothing outside the blocks is in an optimizer or moves."""
    seen: dict[int, bool] = {}
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        for group in self.param_groups:
            for p in group["params"]:
                seen[id(p)] = seen.get(id(p), False) or (p.grad is not None and bool(p.grad.abs().sum() > 0))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    calib = torch.cat([batches(s)[:, :-1] for s in range(2)])
    block_ap(llama, QATRecipeConfig("efficientqat", w_bits=3, group_size=32), calib, steps=4)
    params = dict(llama.named_parameters())
    trained = {
        n
        for n in params
        if n.startswith("model.layers.")
        and (n.endswith(".weight") or n.endswith((".weight_quantizer.scale", ".weight_quantizer.zero")))
    }
    assert any("layernorm" in n for n in trained) and {id(params[n]) for n in trained} == set(seen)
    assert all(seen[id(params[n])] for n in trained), [n for n in trained if not seen[id(params[n])]]
    for n in trained:
        if n in before:
            assert not torch.equal(params[n], before[n]), n
    for n in set(params) - trained:
        assert torch.equal(params[n], before[n]), n


def test_e2e_qp_trains_only_the_step_sizes_then_exports(llama, batches, tmp_path):
    """E2E-QP: the step sizes get non-zero gradients and move; every other parameter (norms, embeddings, head) is
    bit-identical after several steps and has no optimizer state; the integer codes and zero points stay."""
    calib = torch.cat([batches(s)[:, :-1] for s in range(2)])
    cfg = QATRecipeConfig("efficientqat", w_bits=3, group_size=32)
    block_ap(llama, cfg, calib, steps=5)
    freeze_codes(llama)
    layers = quant_layers(llama)
    assert all(isinstance(m.weight_quantizer, FrozenCodesQuantizer) and m.weight is None for m in layers.values())
    frozen_codes = {n: m.weight_quantizer.freeze(None) for n, m in layers.items()}
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    scales = {f"{n}.weight_quantizer.scale" for n in layers}
    optim = OptimConfig(lr=1e-3)
    opt = make_optimizer(llama, optim)
    train_steps(llama, batches, optim, 5, opt=opt)
    params = dict(llama.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == scales
    for n, p in params.items():
        if n in scales:
            assert not torch.equal(p, before[n]) and p in opt.state, n
        else:
            assert torch.equal(p, before[n]) and p not in opt.state, n
    for n, m in layers.items():
        now = m.weight_quantizer.freeze(None)
        assert torch.equal(now.codes, frozen_codes[n].codes) and torch.equal(now.zero, frozen_codes[n].zero)
    llama.zero_grad(set_to_none=True)
    lm_loss(llama, batches(9))[0].backward()
    assert all(bool(params[n].grad.abs().sum() > 0) for n in scales)


def test_e2e_qp_exports(llama, batches, tmp_path):
    calib = torch.cat([batches(s)[:, :-1] for s in range(2)])
    cfg = QATRecipeConfig("efficientqat", w_bits=3, group_size=32)
    block_ap(llama, cfg, calib, steps=5)
    freeze_codes(llama)
    qat_finetune(llama, cfg, batches, steps=3, lr=1e-3)
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        fake = llama(input_ids=ids).logits
    convert(llama)
    export_model(llama, tmp_path / "m", "gptq")
    with torch.no_grad():
        assert torch.allclose(load_quantized(tmp_path / "m")(input_ids=ids).logits, fake, atol=1e-3)
