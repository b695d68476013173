"""iFairy recipe: QAT lowers its loss, converts to the complex-phase layout, exports (qscale), equal storage to BitNet."""

import copy

import pytest
import torch

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.qat import QATRecipeConfig, convert, prepare, qat_finetune
from qscale.quant import QuantizedLinear
from qscale.quant.phase import mulfree_linear


def test_ifairy_trains_converts_and_round_trips(llama, batches, tmp_path):
    bitnet = copy.deepcopy(llama)
    losses = qat_finetune(llama, QATRecipeConfig("ifairy"), batches, steps=15, lr=1e-2, warmup_steps=2)
    assert losses[-1] < losses[0]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    llama.eval()
    with torch.no_grad():
        trained = llama(input_ids=ids).logits
    convert(llama)
    layers = [m for m in llama.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.layout == "complex-phase" and m.spec.bits == 2 for m in layers)
    with torch.no_grad():
        assert torch.equal(llama(input_ids=ids).logits, trained)
        x = torch.randn(3, layers[0].in_features)
        qw = layers[0].qweight()
        xq = layers[0].act_quantizer(x)  # A8 per token, as BitNet
        assert torch.allclose(mulfree_linear(xq, qw.codes, qw.extras["phase_scale"]), layers[0](x), atol=1e-5)
    with pytest.raises(QscaleError, match="complex-phase layout"):
        export_model(llama, tmp_path / "ct", "compressed-tensors")
    export_model(llama, tmp_path / "n", "qscale")
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "n")(input_ids=ids).logits, trained)
    # equal storage: the same packed code bytes per layer as BitNet b1.58's 2-bit layout
    qat_finetune(bitnet, QATRecipeConfig("bitnet"), batches, steps=1, lr=1e-3)
    convert(bitnet)
    b_layers = [m for m in bitnet.modules() if isinstance(m, QuantizedLinear)]
    assert [m.weight_packed.numel() for m in layers] == [m.weight_packed.numel() for m in b_layers]


def test_ifairy_needs_even_widths_and_two_bits():
    with pytest.raises(QscaleError, match="w_bits 2"):
        QATRecipeConfig("ifairy", w_bits=4)
    lin = torch.nn.Sequential(torch.nn.Linear(5, 4))
    with pytest.raises(QscaleError, match="even in/out"):
        prepare(lin, QATRecipeConfig("ifairy", exclude=()))
