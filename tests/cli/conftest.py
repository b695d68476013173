"""A small text corpus and user model folders (GPT-NeoX, GPT-2) saved with ``save_pretrained`` + a tokenizer;
the bad-input matrix's inputs (a tiny trained checkpoint, broken and quantized variants of it, odd files)."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from qscale.cli import main
from qscale.paths import writable


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """80 .txt documents (the first stdlib sources): enough held-out text for 16 windows of 64 tokens."""
    folder = tmp_path_factory.mktemp("corpus")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:80]
    for f in files:
        (folder / f"{f.stem}.txt").write_text(f.read_text(errors="replace"))
    return folder


@pytest.fixture(scope="session")
def user_models(tmp_path_factory, streams):
    """``{"neox": path, "gpt2": path}``: random tiny models as a user would have them on disk."""
    base = tmp_path_factory.mktemp("user-models")
    torch.manual_seed(0)
    models = {
        "neox": GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=512,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=128,
            )
        ),
        "gpt2": GPT2LMHeadModel(
            GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)
        ),
    }
    paths = {}
    for name, model in models.items():
        model.save_pretrained(base / name)
        streams.tokenizer.save(str(base / name / "tokenizer.json"))
        paths[name] = base / name
    return paths


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QSCALE_CACHE", str(tmp_path_factory.getbasetemp() / "commands-cache"))


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy checkpoint ``src`` to ``dst`` with its tensors changed by ``edit(dict)``."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, streams, data_cfg):
    """Every input file the matrix refers to as ``{name}``."""
    from tokenizers import Tokenizer

    from qscale.data.tokenizer import train_bpe
    from qscale.models import build_model
    from qscale.qat import QATRecipeConfig, convert, prepare
    from qscale.train import TrainConfig, train

    d = tmp_path_factory.mktemp("bad-inputs")
    ckpt = train(
        TrainConfig(size="xs", tokens=2 * 8 * 32, batch_size=8, seq_len=32, warmup_steps=1, eval_windows=4),
        streams,
        d / "run",
        progress=False,
    )[-1].path
    first = sorted(load_file(str(ckpt / "model.safetensors")))[0]
    _rewrite(ckpt, d / "missing-weight", lambda t: t.pop(first))
    _rewrite(ckpt, d / "extra-weight", lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
    _rewrite(ckpt, d / "nan", lambda t: t[first].view(-1).__setitem__(0, float("nan")))
    _rewrite(ckpt, d / "overflow", lambda t: t["lm_head.weight"].fill_(3e38))  # finite weights, infinite logits
    shutil.copytree(ckpt, d / "no-tokenizer")
    (d / "no-tokenizer" / "tokenizer.json").unlink()
    shutil.copytree(ckpt, d / "no-config")
    (d / "no-config" / "config.json").unlink()
    (d / "corrupt").mkdir()
    (d / "corrupt" / "config.json").write_text('{"model_type": "llama", "vocab_size": 512}')
    (d / "corrupt" / "model.safetensors").write_bytes(b"\x00\x01truncated")
    qat = build_model("xs", streams.vocab_size, max_seq_len=64)
    convert(prepare(qat, QATRecipeConfig(recipe="ste", w_bits=4, a_bits=16)))
    qat.save_pretrained(d / "qat-converted")
    streams.tokenizer.save(str(d / "qat-converted" / "tokenizer.json"))
    GPT2LMHeadModel(
        GPT2Config(vocab_size=streams.vocab_size, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    ).save_pretrained(d / "gpt2-16pos")
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=128, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        d / "gpt2-300vocab"
    )
    streams.tokenizer.save(str(d / "tok.json"))
    other: Tokenizer = train_bpe(["def f(x):\n    return x + 1\n"] * 20, 300)
    other.save(str(d / "other-tok.json"))
    (d / "bad-tok.json").write_text("not a tokenizer")
    binary = bytes(range(256)) * 64
    (d / "binary.txt").write_bytes(binary)
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1") * 50)
    (d / "empty.txt").write_text("")
    (d / "other.txt").write_text("def g(y):\n    return y * 2\n" * 2000)
    (d / "binary.csv").write_bytes(binary)
    (d / "binary.json").write_bytes(binary)
    (d / "text.json").write_text("N=1e9 D=1e10")
    (d / "list.json").write_text("[1, 2]")
    (d / "data.xyz").write_text("N,D\n1,2\n")
    grid = [(n, dd, p) for n in (1e6, 4e6) for dd in (1e8, 1e9) for p in (2, 4)]
    rows = ["N,D,P,qid"] + [f"{n},{dd},{p},{0.01 * p * dd / n}" for n, dd, p in grid]
    (d / "points.csv").write_text("\n".join(rows) + "\n")
    (d / "two.csv").write_text("N,D,P,qid\n1e6,1e8,2,0.1\n2e6,1e8,2,0.05\n")
    (d / "bad-params.json").write_text(
        json.dumps({"law": "qid", "params": {"k": "abc", "alpha": 0.2, "beta": 0.5, "gamma": 5.0}})
    )
    bad_rows = [*rows[:3], rows[3].rsplit(",", 1)[0] + ",abc", *rows[4:]]  # data row 3 (line 4 of the file)
    (d / "bad-row.csv").write_text("\n".join(bad_rows) + "\n")
    shutil.copytree(ckpt, d / "lying")
    config = json.loads((d / "lying" / "config.json").read_text())
    (d / "lying" / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    with pytest.MonkeyPatch.context() as mp:  # two already-quantized folders, as qscale quantize writes them
        mp.setenv("QSCALE_CACHE", str(data_cfg.cache_dir))
        for fmt in ("compressed-tensors", "gptq"):
            assert (
                main(
                    [
                        "quantize",
                        str(ckpt),
                        "--method",
                        "rtn",
                        "-g",
                        "32",
                        "--format",
                        fmt,
                        "--out",
                        str(d / fmt),
                        "--eval-data",
                        str(d / "other.txt"),
                        "--seq-len",
                        "32",
                        "--eval-windows",
                        "4",
                        "--no-progress",
                    ]
                )
                == 0
            )
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return d


@pytest.fixture(scope="module")
def read_only(inputs) -> Path | None:
    """A folder no file can be created in: ``inputs/ro`` (mode 555) for a normal user; as root (who ignores
    the mode bits) the read-only /sys; None when neither is read-only here."""
    for folder in (inputs / "ro", Path("/sys")):
        if writable(folder) is not None:
            return folder
    return None
