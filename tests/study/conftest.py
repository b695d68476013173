"""Fixtures of the study tests: a small Pythia-like suite on disk (2 sizes x 4 checkpoints of tiny GPT-NeoX
models, ``<size>/step<N>``), and ``pg_url``, a throwaway PostgreSQL server: ``initdb`` + ``pg_ctl`` from the
Debian ``postgresql`` package, listening only on a Unix socket in a temp dir (no TCP), trust auth; run as
``postgres`` when we are root (initdb refuses root)."""

import contextlib
import glob
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
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
        cfg = GPTNeoXConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=128,
        )
        model = GPTNeoXForCausalLM(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen.manual_seed(0)  # both sizes see the same batches
        for step in range(1, max(STEPS) + 1):
            starts = torch.randint(0, len(ids) - SEQ - 1, (BATCH,), generator=gen)
            batch = torch.stack([ids[s : s + SEQ + 1] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in STEPS:
                folder = suite / name / f"step{step}"
                model.save_pretrained(folder)
                tok.save(str(folder / "tokenizer.json"))
    return suite, root / "data.txt", root / "calib.txt"


def server_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    for p in reversed(found):
        if (Path(p).parent / "pg_ctl").exists():
            return Path(p).parent
    return None


def skip_reason() -> str | None:
    if server_bin() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    try:
        import psycopg  # noqa: F401  (only whether it imports)
    except ImportError:
        return "psycopg 3 is not installed (pip install 'qscale[postgres]')"
    return None


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[str]:
    """Start a server in ``tmp``; yields a ``postgresql://`` URL to its ``postgres`` database over the socket."""
    bindir = server_bin()
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    opts = f"-c listen_addresses='' -k {sock} -c fsync=off -c max_connections=40"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "-t", "60", "start")
    try:
        yield f"postgresql://postgres@/postgres?host={sock}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def pg_url():
    """A running server's URL (skipped, saying why, where no server binary or psycopg exists)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="qscale-pg-"))  # not under pytest's root-only tmp: the server runs as postgres
    try:
        with postgres(tmp) as url:
            yield url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
