"""``qscale qat`` and ``qscale export`` end to end from the CLI on a user's GPT-NeoX folder."""

import json

from qscale.cli import main
from qscale.export import load_quantized

FAST = ["--eval-windows", "8", "--seq-len", "64", "--batch-size", "2", "--no-progress"]


def test_qat_weight_only_exports_compressed_tensors_then_converts(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "qat"
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "lsq",
            "--tokens",
            "1280",
            "--group-size",
            "32",
            "--rule",
            "*.dense_4h_to_h=w8",
            "--out",
            str(out),
            "--data",
            str(corpus),
            *FAST,
        ]
    )
    assert rc == 0
    record = json.loads((out / "qscale-qat.json").read_text())
    assert record["steps"] == 10 and record["results"][0]["format"] == "compressed-tensors"
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]  # mixed precision: two groups
    assert not (tmp_path / ".qat.qat-state").exists()
    assert main(["export", str(out), "--format", "gptq", "--out", str(tmp_path / "g")]) == 2  # mixed bits: refused
    assert "one bit width" in capsys.readouterr().err
    assert main(["export", str(out), "--format", "qscale", "--out", str(tmp_path / "n")]) == 0
    a, b = load_quantized(out), load_quantized(tmp_path / "n")
    for (_, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert x.shape == y.shape


def test_qat_weight_activation_recipe_goes_to_qscale_layout(user_models, corpus, cache, tmp_path):
    out = tmp_path / "quest"
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "quest",
            "--a-bits",
            "4",
            "--tokens",
            "640",
            "--distill",
            "--out",
            str(out),
            "--data",
            str(corpus),
            *FAST,
        ]
    )
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "qscale"
    assert main(["eval", str(out), "--windows", "8", "--seq-len", "64", "--data", str(corpus)]) == 0


def test_qat_with_teacher_intervention(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "ti"
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "ste",
            "--w-bits",
            "2",
            "--tokens",
            "1280",
            "--group-size",
            "32",
            "--intervention",
            "--out",
            str(out),
            "--data",
            str(corpus),
            *FAST,
        ]
    )
    assert rc == 0 and "teacher intervention" in capsys.readouterr().out
    record = json.loads((out / "qscale-qat.json").read_text())
    assert record["cfg"]["intervention"] == {"handback": 0.5} and record["cfg"]["distill"] is None  # TI: its own loss
    assert record["train_loss_last"] < record["train_loss_first"]


def test_qat_bad_rule_and_recipe(user_models, corpus, cache, tmp_path, capsys):
    for args, match in (
        (["--rule", "*.fc2"], "--rule must look like"),
        (["--recipe", "awq"], "unknown QAT recipe"),
        (["--rule", "*.nothing=a8"], "matches no quantizable"),
    ):
        rc = main(["qat", str(user_models["neox"]), "--out", str(tmp_path / "x"), "--data", str(corpus), *FAST, *args])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_qat_efficientqat_and_lrqat_from_the_cli(user_models, corpus, cache, tmp_path):
    for recipe, extra in (
        ("efficientqat", ["--block-steps", "3", "--calib-windows", "4", "--w-bits", "3"]),
        ("lrqat", ["--rank", "4", "--w-bits", "2"]),
    ):
        out = tmp_path / recipe
        rc = main(
            [
                "qat",
                str(user_models["neox"]),
                "--recipe",
                recipe,
                "--tokens",
                "640",
                "--group-size",
                "32",
                "--out",
                str(out),
                "--data",
                str(corpus),
                *FAST,
                *extra,
            ]
        )
        assert rc == 0
        assert (
            json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"
        )


def test_qat_double_rounding_stores_8_bit_codes_and_eval_serves_lower_precisions(
    user_models, corpus, cache, tmp_path, capsys
):
    out = tmp_path / "dr"
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "double-rounding",
            "--tokens",
            "640",
            "--group-size",
            "32",
            "--joint-bits",
            "8,4,2",
            "--out",
            str(out),
            "--data",
            str(corpus),
            *FAST,
        ]
    )
    assert rc == 0
    record = json.loads((out / "qscale-qat.json").read_text())
    assert record["joint_bits"] == [8, 4, 2] and record["results"][0]["format"] == "compressed-tensors"
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert [g["weights"]["num_bits"] for g in groups.values()] == [8]
    capsys.readouterr()
    losses = {}
    for bits in (8, 4, 2):
        assert (
            main(
                [
                    "eval",
                    str(out),
                    "--bits",
                    str(bits),
                    "--windows",
                    "8",
                    "--seq-len",
                    "64",
                    "--data",
                    str(corpus),
                    "--json",
                ]
            )
            == 0
        )
        losses[bits] = json.loads(capsys.readouterr().out)["loss"]
    assert losses[8] == record["results"][0]["loss"] and losses[2] != losses[8]
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "double-rounding",
            "--joint-bits",
            "6,4",
            "--out",
            str(tmp_path / "bad"),
            "--data",
            str(corpus),
            *FAST,
        ]
    )
    assert rc == 2 and "--joint-bits" in capsys.readouterr().err


def test_qat_seed_recipes_from_the_cli(user_models, corpus, cache, tmp_path, capsys):
    for recipe, extra, method in (
        ("qvgen", ["--rank", "4"], "compressed-tensors"),
        ("efficientdm", ["--rank", "4", "--samples", "8"], "compressed-tensors"),
        ("gaqat", ["--a-bits", "8"], "qscale"),
        ("ifairy", [], "qscale"),
    ):
        out = tmp_path / recipe
        rc = main(
            [
                "qat",
                str(user_models["neox"]),
                "--recipe",
                recipe,
                "--tokens",
                "1280",
                "--group-size",
                "32",
                "--out",
                str(out),
                "--data",
                str(corpus),
                *FAST,
                *extra,
            ]
        )
        assert rc == 0, capsys.readouterr().err
        assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == method
        record = json.loads((out / "qscale-qat.json").read_text())
        assert record["data"] == ("self-generated (fp model samples)" if recipe == "efficientdm" else str(corpus))
    capsys.readouterr()
    rc = main(
        [
            "qat",
            str(user_models["neox"]),
            "--recipe",
            "edgeqat",
            "--tokens",
            "640",
            "--out",
            str(tmp_path / "e"),
            "--data",
            str(corpus),
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "'gpt_neox' is not supported" in err and len(err.strip().splitlines()) == 1


def test_finished_qat_rerun_says_done_and_redo_retrains(user_models, corpus, cache, tmp_path, capsys):
    out = tmp_path / "done"
    argv = [
        "qat",
        str(user_models["neox"]),
        "--recipe",
        "ste",
        "--tokens",
        "256",
        "--group-size",
        "32",
        "--out",
        str(out),
        "--data",
        str(corpus),
        *FAST,
    ]
    assert main(argv) == 0
    capsys.readouterr()
    record = (out / "qscale-qat.json").read_bytes()
    assert main(argv) == 0  # the same flags again: nothing retrained, nothing rewritten
    err = capsys.readouterr().err
    assert "already holds this finished run" in err and "--redo" in err
    assert (out / "qscale-qat.json").read_bytes() == record
    assert main([*argv, "--seed", "1"]) == 0  # other flags: a new run replaces it
    assert "already holds" not in capsys.readouterr().err
    assert json.loads((out / "qscale-qat.json").read_text())["seed"] == 1
    assert main([*argv, "--seed", "1", "--redo"]) == 0
    assert "already holds" not in capsys.readouterr().err
