"""``qscale quantize`` end to end from the CLI on user folders (GPT-NeoX, GPT-2)."""

import json

import pytest
import torch

from qscale.cli import main
from qscale.export import load_quantized
from qscale.quant import QuantizedLinear

FAST = ["--calib-windows", "8", "--eval-windows", "8", "--seq-len", "64", "--no-progress"]
RTN_FAST = ["--eval-windows", "8", "--seq-len", "64", "--no-progress"]  # rtn refuses calibration flags


def _data(corpus):
    return ["--calib-data", str(corpus), "--eval-data", str(corpus)]


def test_neox_gptq_all_formats(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(
        [
            "quantize",
            str(user_models["neox"]),
            "--out",
            str(out),
            "--format",
            "all",
            "--bits",
            "3",
            "--group-size",
            "32",
            *_data(corpus),
            *FAST,
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "compressed-tensors" in text and "gptq" in text and "QiD" in text
    assert "Loaders of the compressed-tensors folder (symmetric weights, GPT-NeoX):" in text  # qscale.export.compat
    assert "Loaders of the gptq folder (symmetric weights, GPT-NeoX):" in text
    assert "vLLM: no — vLLM's compressed-tensors W*A16 path takes 4 or 8 bits, not 3" in text
    record = json.loads((out / "qscale-quantize.json").read_text())
    assert record["config"]["spec"]["bits"] == 3 and record["tokenizer_hash"] and record["versions"]["torch"]
    for fmt in ("compressed-tensors", "gptq"):
        res = next(r for r in record["results"] if r["format"] == fmt)
        assert abs(res["qid"]) < 1 and res["qid_se"] > 0 and res["bytes"] > 0
        assert (out / fmt / "tokenizer.json").is_file()
        config = json.loads((out / fmt / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == fmt
        model = load_quantized(out / fmt)
        assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 8  # 4 per block
    assert main(["eval", str(out / "gptq"), "--windows", "8", "--seq-len", "64", "--data", str(corpus), "--json"]) == 0
    loss = json.loads(capsys.readouterr().out)["loss"]
    assert loss == pytest.approx(next(r["loss"] for r in record["results"] if r["format"] == "gptq"), abs=1e-6)


def test_gpt2_rtn_asym_gptq_format_and_ct_refused(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "g"
    rc = main(
        [
            "quantize",
            str(user_models["gpt2"]),
            "--out",
            str(out),
            "--method",
            "rtn",
            "--asym",
            "--bits",
            "4",
            "--group-size",
            "0",
            "--format",
            "gptq",
            "--eval-data",
            str(corpus),
            *RTN_FAST,
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out  # GPT-2 GPTQ: transformers cannot, GPTQModel.load refuses asymmetric: qscale
    assert "Loaders of the gptq folder (asymmetric weights, GPT-2):" in text
    assert "transformers 5.25.0 + optimum 2.3.0 + gptqmodel 7.7.0: no — fails inside transformers" in text
    model = load_quantized(out)
    assert isinstance(model.transformer.h[0].attn.c_attn, QuantizedLinear)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.randint(0, 512, (1, 8))).logits).all()
    rc = main(["quantize", str(user_models["gpt2"]), "--out", str(tmp_path / "ct"), *_data(corpus), *FAST])
    assert rc == 2 and "Conv1D" in capsys.readouterr().err and not (tmp_path / "ct").exists()


def test_gptq_block_order_is_recorded(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["quantize", str(user_models["neox"]), "--out", str(out), "-g", "32", "--format", "qscale"]
    assert main([*argv, "--gptq-order", "block", *_data(corpus), *FAST]) == 0
    assert "gptq w4g32-sym block-order:" in capsys.readouterr().out
    record = json.loads((out / "qscale-quantize.json").read_text())
    assert record["config"]["gptq_order"] == "block" and record["config"]["method"] == "gptq"


@pytest.mark.parametrize(
    "args,match",
    [
        (["--bits", "9"], "--bits"),
        (["--bits", "5", "--format", "gptq"], "GPTQ checkpoints hold"),
        (["--format", "awq"], "--format"),
        (["--method", "awq"], "--method must be one of"),
        (["--group-size", "-1"], "group-size"),
        (["--eval-windows", "100000"], "would overlap"),
        (["--seq-len", "4096"], "positions"),
        (["--skip", "re:("], "regular expression"),
        (["--tokenizer", "/nonexistent"], "does not exist"),
    ],
)
def test_bad_input_one_line_exit_2(user_models, corpus, cache, tmp_path, capsys, args, match):
    rc = main(
        ["quantize", str(user_models["neox"]), "--out", str(tmp_path / "o"), *_data(corpus), *FAST, "-g", "32", *args]
    )
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_refuses_to_overwrite_an_unrelated_folder(user_models, corpus, cache, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    rc = main(["quantize", str(user_models["neox"]), "--out", str(tmp_path / "mine"), *_data(corpus), *FAST])
    assert rc == 2 and "not a qscale output" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_neox_qllm_w4a4_qscale_format(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "qllm"
    rc = main(
        [
            "quantize",
            str(user_models["neox"]),
            "--out",
            str(out),
            "--method",
            "qllm",
            "--act-bits",
            "4",
            "--group-size",
            "32",
            "--format",
            "qscale",
            *_data(corpus),
            *FAST,
        ]
    )
    assert rc == 0 and "qllm w4g32-sym a4" in capsys.readouterr().out
    record = json.loads((out / "qscale-quantize.json").read_text())
    assert record["config"]["act_bits"] == 4 and abs(record["results"][0]["qid"]) < 2
    layers = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    assert all(isinstance(c["reassembly"], bool) and c["act"]["bits"] == 4 for c in layers.values())
    layer = load_quantized(out).gpt_neox.layers[0].attention.query_key_value
    assert layer.act_quantizer.spec.bits == 4
    assert main(["eval", str(out), "--windows", "8", "--seq-len", "64", "--data", str(corpus), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(record["results"][0]["loss"], abs=1e-6)
    rc = main(
        [
            "quantize",
            str(user_models["neox"]),
            "--out",
            str(tmp_path / "ct"),
            "--act-bits",
            "4",
            "--method",
            "rtn",
            "--eval-data",
            str(corpus),
            *RTN_FAST,
        ]
    )
    assert rc == 2 and "--format qscale" in capsys.readouterr().err


def test_neox_learned_round_mixed_precision_budget(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "mix"
    rc = main(
        [
            "quantize",
            str(user_models["neox"]),
            "--out",
            str(out),
            "--method",
            "learned-round",
            "--avg-bits",
            "3",
            "--group-size",
            "32",
            "--format",
            "qscale",
            *_data(corpus),
            *FAST,
        ]
    )
    assert rc == 0 and "wmixg32-sym avg 3 bits" in capsys.readouterr().out
    record = json.loads((out / "qscale-quantize.json").read_text())
    model = load_quantized(out)
    sizes = {n: m.out_features * m.in_features for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    bits = {n: s["bits"] for n, s in record["layers"].items()}
    assert sum(sizes[n] * b for n, b in bits.items()) <= 3 * sum(sizes.values()) and len(set(bits.values())) > 1
    rc = main(
        [
            "quantize",
            str(user_models["neox"]),
            "--out",
            str(tmp_path / "g"),
            "--method",
            "learned-round",
            "--avg-bits",
            "3",
            "--format",
            "gptq",
            "--eval-data",
            str(corpus),
            *RTN_FAST,
        ]
    )
    assert rc == 2 and "one bit width" in capsys.readouterr().err
