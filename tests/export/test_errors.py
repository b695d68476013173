"""Corrupt or mismatched folders, unsupported combinations and non-finite values are clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qscale.errors import QscaleError
from qscale.export import export_model, load_quantized
from qscale.qat import QATRecipeConfig, convert, prepare
from qscale.quant import QuantSpec


@pytest.fixture(scope="module")
def folders(kit, tmp_path_factory):
    base = tmp_path_factory.mktemp("folders")
    model = kit.ptq(kit.tiny_llama(), spec=QuantSpec(4, False, "group", 32))
    for fmt in ("compressed-tensors", "gptq", "qscale"):
        export_model(model, base / fmt, fmt)
    return base


def _edit(src, dst, change):
    """Copy a folder with ``change(tensors, config)`` applied."""
    dst.mkdir()
    (weights,) = src.glob("*.safetensors")  # model.safetensors; qscale-model.safetensors for --format qscale
    tensors = load_file(weights)
    config = json.loads((src / "config.json").read_text())
    change(tensors, config)
    save_file(tensors, dst / weights.name)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


PACKED = {"compressed-tensors": "weight_packed", "gptq": "qweight", "qscale": "weight_packed"}
SCALE = {"compressed-tensors": "weight_scale", "gptq": "scales", "qscale": "weight_scale"}
L0 = "model.layers.0.self_attn.q_proj"


def _drop(key):
    return lambda t, c: t.pop(key)


def _nan_scale(fmt):
    return lambda t, c: t[f"{L0}.{SCALE[fmt]}"].view(-1)[3:5].fill_(float("nan"))


def _shrink(fmt):
    return lambda t, c: t.__setitem__(f"{L0}.{PACKED[fmt]}", t[f"{L0}.{PACKED[fmt]}"][:-1].contiguous())


def _extra(t, c):
    t["model.layers.0.mystery"] = torch.zeros(3)


def _nan_norm(t, c):
    t["model.norm.weight"][0] = float("inf")


@pytest.mark.parametrize("fmt", list(PACKED))
@pytest.mark.parametrize(
    "case,match",
    [
        ("drop_scale", "missing tensor"),
        ("nan_scale", "non-finite"),
        ("shrink", "shape"),
        ("extra", "does not use"),
        ("nan_norm", "NaN or Inf"),
        ("drop_norm", "lacks"),
    ],
)
def test_corrupt_folder_is_an_error(folders, tmp_path, fmt, case, match):
    change = {
        "drop_scale": _drop(f"{L0}.{SCALE[fmt]}"),
        "nan_scale": _nan_scale(fmt),
        "shrink": _shrink(fmt),
        "extra": _extra,
        "nan_norm": _nan_norm,
        "drop_norm": _drop("model.norm.weight"),
    }[case]
    with pytest.raises(QscaleError, match=match):
        load_quantized(_edit(folders / fmt, tmp_path / "bad", change))


def test_truncated_file_wrong_config_and_no_folder(folders, tmp_path):
    bad = _edit(folders / "compressed-tensors", tmp_path / "trunc", lambda t, c: None)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(QscaleError, match="cannot read"):
        load_quantized(bad)
    for change, match in [
        (lambda t, c: c["quantization_config"].update(bits=5), "bits 5"),
        (lambda t, c: c.update(quantization_config={"quant_method": "awq"}), "not a quantized"),
        (lambda t, c: c.update(hidden_size=32), "shape"),
    ]:
        target = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        with pytest.raises(QscaleError, match=match):
            load_quantized(_edit(folders / "gptq", target, change))
    with pytest.raises(QscaleError, match="does not exist"):
        load_quantized(tmp_path / "nope")


def test_unsupported_combinations_name_the_layer_and_the_way_out(kit, tmp_path):
    five = kit.ptq(kit.tiny_llama(), spec=QuantSpec(5, True, "group", 32))
    with pytest.raises(QscaleError, match=r"q_proj to GPTQ: GPTQ v1 holds 2, 3, 4, 8 bits.*compressed-tensors"):
        export_model(five, tmp_path / "g", "gptq")
    ragged = kit.ptq(kit.tiny_llama(), spec=QuantSpec(4, True, "group", 48))
    with pytest.raises(QscaleError, match="multiple of the group size"):
        export_model(ragged, tmp_path / "r", "compressed-tensors")
    for cfg in (
        QATRecipeConfig("pbllm"),
        QATRecipeConfig("quest", w_bits=4, a_bits=16),
        QATRecipeConfig("ste", w_bits=4, a_bits=8),
    ):
        model = kit.tiny_llama()
        prepare(model, cfg)
        convert(model)
        for fmt in ("compressed-tensors", "gptq"):
            with pytest.raises(QscaleError, match="use --format"):
                export_model(model, tmp_path / "x", fmt)
    w16a8 = kit.tiny_llama()
    prepare(w16a8, QATRecipeConfig("ste", w_bits=16, a_bits=8))
    convert(w16a8)
    with pytest.raises(QscaleError, match="W16Ax"):
        export_model(w16a8, tmp_path / "y", "qscale")
    with pytest.raises(QscaleError, match="no quantized linear layers"):
        export_model(kit.tiny_llama(), tmp_path / "z", "compressed-tensors")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
