"""EfficientQAT: Block-AP beats RTN per block; E2E-QP changes scales only; the result exports."""

import copy

import torch
import torch.nn.functional as F

from qscale.export import export_model, load_quantized
from qscale.ptq import PTQConfig, quantize_model
from qscale.ptq.layers import find_blocks
from qscale.ptq.sequential import capture_block_inputs, run_block
from qscale.qat import QATRecipeConfig, convert, qat_finetune, quant_layers
from qscale.qat.efficientqat import AsymWeightQuantizer, FrozenCodesQuantizer, block_ap, freeze_codes
from qscale.quant import QuantSpec, fake_quantize


def _block_errors(model, fp, calib):
    """MSE of each block of ``model`` vs the fp block, each on the fp block's own inputs."""
    _, blocks = find_blocks(model)
    _, fp_blocks = find_blocks(fp)
    errs = []
    with torch.no_grad():
        inputs = capture_block_inputs(fp, fp_blocks[0], calib, progress=False)
        for blk, ref in zip(blocks, fp_blocks):
            outs = [run_block(ref, i) for i in inputs]
            errs.append(sum(float(F.mse_loss(run_block(blk, i), o)) for i, o in zip(inputs, outs)))
            inputs = [i.with_hidden(o) for i, o in zip(inputs, outs)]
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
    assert all(o < b for o, b in zip(ours, base)), (ours, base)


def test_e2e_qp_changes_only_scales_then_exports(llama, batches, tmp_path):
    calib = torch.cat([batches(s)[:, :-1] for s in range(2)])
    cfg = QATRecipeConfig("efficientqat", w_bits=3, group_size=32)
    block_ap(llama, cfg, calib, steps=5)
    freeze_codes(llama)
    layers = quant_layers(llama)
    assert all(isinstance(m.weight_quantizer, FrozenCodesQuantizer) and m.weight is None for m in layers.values())
    before = {n: (m.weight_quantizer.codes.clone(), m.weight_quantizer.scale.detach().clone()) for n, m in layers.items()}
    qat_finetune(llama, cfg, batches, steps=5, lr=1e-3)
    assert {n for n, p in llama.named_parameters() if p.requires_grad} == {f"{n}.weight_quantizer.scale" for n in layers}
    for n, m in layers.items():
        assert torch.equal(m.weight_quantizer.codes, before[n][0])
        assert not torch.equal(m.weight_quantizer.scale, before[n][1])
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        fake = llama(input_ids=ids).logits
    convert(llama)
    export_model(llama, tmp_path / "m", "gptq")
    with torch.no_grad():
        assert torch.allclose(load_quantized(tmp_path / "m")(input_ids=ids).logits, fake, atol=1e-3)
