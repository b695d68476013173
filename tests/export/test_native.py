"""``--format qscale`` folders: only qscale reads them; every other loader stops with an error."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.export.load import quantization_method
from qscale.models import load_model
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.quant import QuantSpec


@pytest.fixture(scope="module")
def folder(kit, llama, tmp_path_factory):
    model = kit.ptq(llama, spec=QuantSpec(4, True, "group", 32))
    out = tmp_path_factory.mktemp("native") / "q"
    export_model(model, out, "qscale")
    return model, out


def test_folder_layout_keeps_what_qscale_needs(folder):
    _, out = folder
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qscale_packed" and config["qscale_model_type"] == "llama"
    assert quantization_method(config) == "qscale"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["qscale-model.safetensors"]


def test_transformers_loaders_raise(folder):
    _, out = folder
    with pytest.raises(Exception, match="qscale_packed"):
        AutoConfig.from_pretrained(out)
    with pytest.raises(Exception, match="qscale_packed"):
        AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(OSError, match=r"model\.safetensors|pytorch_model\.bin"):  # architecture given by the caller
        LlamaForCausalLM.from_pretrained(out)
    with pytest.raises(QscaleError, match="already quantized"):  # qscale's full-precision loader refuses it
        load_model(out)


def test_qscale_reads_it_with_the_same_logits(kit, folder):
    model, out = folder
    assert torch.equal(kit.logits(load_quantized(out)), kit.logits(model))


def test_sharded_qscale_folder_and_act_quantizers(kit, tmp_path):
    from qscale.export import native
    from qscale.export.folder import base_config, model_tensors, write_model_folder

    model = kit.tiny_llama()
    prepare(model, QATRecipeConfig("lsq", w_bits=4, a_bits=4, group_size=32))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 64, (2, 8)))
    convert(model)
    cfg = native.folder_config(
        {**base_config(model, torch.float32), "quantization_config": native.quantization_config(model)}
    )
    write_model_folder(
        tmp_path / "s",
        model_tensors(model, native.layer_tensors(torch.float32), torch.float32),
        cfg,
        None,
        max_shard_bytes=20_000,
        weights_name=native.WEIGHTS_NAME,
    )
    assert (tmp_path / "s" / "qscale-model.safetensors.index.json").is_file()
    assert not list((tmp_path / "s").glob("model*"))
    assert torch.equal(kit.logits(load_quantized(tmp_path / "s")), kit.logits(model))
    with pytest.raises(Exception, match="qscale_packed"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "s")
