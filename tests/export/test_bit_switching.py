"""``load_quantized(path, bits=b)``: one stored 8-bit model serves every lower precision by Double Rounding."""

import torch
from safetensors import safe_open

from qscale.export import export_model, load_quantized
from qscale.quant import QuantizedLinear, QuantSpec
from qscale.quant.switch import switch_bits


def test_one_stored_model_serves_every_precision(kit, llama, tmp_path):
    model = kit.ptq(llama, method="rtn", spec=QuantSpec(8, True, "group", 32))
    export_model(model, tmp_path / "m8", "compressed-tensors")
    with safe_open(str(tmp_path / "m8" / "model.safetensors"), "pt") as f:
        float_weights = [k for k in f.keys() if "layers" in k and k.endswith("proj.weight")]
    assert not float_weights  # only packed 8-bit codes and scales for the quantized layers
    stored = {n: m.qweight() for n, m in kit.qlayers(model).items()}
    for bits in (8, 6, 4, 2):
        served = load_quantized(tmp_path / "m8", bits=bits)
        for name, layer in kit.qlayers(served).items():
            assert isinstance(layer, QuantizedLinear) and layer.spec.bits == bits
            assert torch.equal(layer.qweight().codes, switch_bits(stored[name], bits).codes)
