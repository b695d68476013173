"""A small Pythia-like suite on disk: 2 sizes x 4 checkpoints of tiny GPT-NeoX models, ``<size>/step<N>``."""

import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from qscale.data.tokenizer import train_bpe

SIZES = {"neox-a": (32, 2, 2), "neox-b": (64, 2, 4)}  # hidden, layers, heads
STEPS = (8, 16, 32, 64)
BATCH, SEQ = 8, 32  # tokens per step = 256


def corpus_text(n_chars: int, skip: int = 0) -> str:
    """Python standard library sources as plain text (no download)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[skip:]
    out, size = [], 0
    for f in files:
        t = f.read_text(errors="replace")
        out.append(t)
        size += len(t)
        if size >= n_chars:
            break
    return "\n".join(out)[:n_chars]


@pytest.fixture(scope="session")
def pythia_like(tmp_path_factory):
    """(suite folder, data file, calibration file): each checkpoint trained a few AdamW steps, own tokenizer."""
    root = tmp_path_factory.mktemp("pythia-like")
    text = corpus_text(120_000)
    (root / "data.txt").write_text(text)
    (root / "calib.txt").write_text(corpus_text(40_000, skip=40))
    tok = train_bpe([text], 512)
    ids = torch.tensor(tok.encode(text).ids)
    gen = torch.Generator().manual_seed(0)
    suite = root / "suite"
    for name, (hidden, layers, heads) in SIZES.items():
        torch.manual_seed(0)
        cfg = GPTNeoXConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=128)
        model = GPTNeoXForCausalLM(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen.manual_seed(0)  # both sizes see the same batches
        for step in range(1, max(STEPS) + 1):
            starts = torch.randint(0, len(ids) - SEQ - 1, (BATCH,), generator=gen)
            batch = torch.stack([ids[s:s + SEQ + 1] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in STEPS:
                folder = suite / name / f"step{step}"
                model.save_pretrained(folder)
                tok.save(str(folder / "tokenizer.json"))
    return suite, root / "data.txt", root / "calib.txt"
