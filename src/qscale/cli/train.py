"""``qscale train``: train one model (or a whole preset suite) with log-spaced checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from qscale.cli.common import PROGRESS_OPTION, given
from qscale.cli.common import console as make_console
from qscale.cli.output import loss_table
from qscale.data import DataConfig, load_token_streams
from qscale.data.tokenizer import model_tokenizer
from qscale.errors import require
from qscale.models.load import require_full_precision
from qscale.paths import check_out_folder, outside
from qscale.train.config import TrainConfig
from qscale.train.distributed import finish, is_main_process
from qscale.train.loop import train
from qscale.train.suite import SUITE_PRESETS, get_preset, train_suite

_QUICK = SUITE_PRESETS["quick"]
_PER_MODEL = (
    "size",
    "tokens",
    "model",
    "batch_size",
    "grad_accum",
    "seq_len",
    "lr",
    "embed_lr",
    "schedule",
    "warmup_steps",
    "ckpt_every",
)
_DEFAULT = _QUICK.base


def train_command(
    ctx: typer.Context,
    size: str = typer.Option(_DEFAULT.size, help="Model size from the ladder: xxxs, xxs, xs, s, m, l, xl."),
    tokens: int = typer.Option(_DEFAULT.tokens, help="Training tokens (rounded up to whole steps)."),
    out: Path = typer.Option(None, help="Run folder for checkpoints (default: runs/train-SIZE or runs/suite-PRESET)."),
    data: Path = typer.Option(
        None,
        help="Text data: .txt, .jsonl (text field), .parquet (text column) or a folder "
        "(default: the Python standard library sources).",
    ),
    tokenizer: Path = typer.Option(
        None,
        help="tokenizer.json file or HF tokenizer folder (default: the --model "
        "folder's own, else a BPE trained on the data).",
    ),
    model: Path = typer.Option(
        None,
        help="Continue training from this local Hugging Face or qscale checkpoint "
        "folder (a qscale checkpoint's tokens seen count towards D).",
    ),
    vocab_size: int = typer.Option(
        None,
        help="Vocabulary size of the trained BPE tokenizer (>= 256; default: the "
        f"preset's, else the quick suite's, {_QUICK.vocab_size}).",
    ),
    seed: int = typer.Option(None, help="Random seed for initialisation and data order (default: 0)."),
    batch_size: int = typer.Option(_DEFAULT.batch_size, help="Sequences per optimiser step."),
    grad_accum: int = typer.Option(1, help="Micro-batches per step (gradient accumulation)."),
    seq_len: int = typer.Option(_DEFAULT.seq_len, help="Tokens per training sequence."),
    lr: float = typer.Option(
        None,
        help="Peak learning rate (AdamW) of the hidden matrices (default: the quick "
        f"suite's width-scaled one, {_DEFAULT.lr:g} x 64 / d_model; {_DEFAULT.lr:g} "
        "with --model).",
    ),
    embed_lr: float = typer.Option(
        None,
        "--embed-lr",
        help="Peak learning rate of the token embedding and LM head "
        f"(default: the quick suite's {_DEFAULT.embed_lr:g} at every width; --lr with "
        "--model).",
    ),
    schedule: str = typer.Option("cosine", help="LR schedule: cosine (warmup + cosine) or wsd (warmup-stable-decay)."),
    warmup_steps: int = typer.Option(_DEFAULT.warmup_steps, help="Linear warmup steps."),
    ckpt_every: int = typer.Option(None, help="After the log-spaced checkpoints, save one every this many steps."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on cuda)."),
    compile_model: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the model (worth it on CUDA for long runs; minutes of compile time first).",
    ),
    preset: str = typer.Option(
        None,
        help="Train a whole suite preset (tiny, quick, standard, gpu) instead of one model; "
        "only --seed, --device, --compile and the data options apply then.",
    ),
    max_files: int = typer.Option(None, help="Use at most this many documents of the corpus (quick trials)."),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Train a Llama model (or a preset suite) with Pythia-style log-spaced checkpoints; re-run to resume.

    Under ``torchrun --nproc_per_node K -m qscale.cli train ...`` the batch is split over K data-parallel
    processes (DDP; rank 0 writes)."""
    console = make_console()
    if preset is not None:  # a suite preset sets every model's own settings: refuse flags it would ignore
        ignored = [f"--{n.replace('_', '-')}" for n in _PER_MODEL if given(ctx, n)]
        require(
            not ignored,
            f"{', '.join(ignored)}: a --preset suite sets these for each of its models "
            "(drop them, or train one model without --preset)",
        )
    name = size if model is None else model.name
    out = out or Path("runs") / (f"suite-{preset}" if preset is not None else f"train-{name}")
    check_out_folder(out)
    if model is not None and preset is None:
        outside(out, model, "--model")
        require_full_precision(model)
        tokenizer = model_tokenizer(model, tokenizer)
    suite = get_preset(preset) if preset is not None else _QUICK
    vocab_size = suite.vocab_size if vocab_size is None else vocab_size
    data_cfg = DataConfig(data=data, tokenizer=tokenizer, vocab_size=vocab_size, max_files=max_files)
    if preset is not None:
        if seed is not None:
            suite = replace(suite, base=replace(suite.base, seed=seed))
        if compile_model:
            suite = replace(suite, base=replace(suite.base, compile=True))
        if device != "auto":
            suite = replace(suite, base=replace(suite.base, device=device))
        runs = train_suite(suite, load_token_streams(data_cfg, progress=progress), out, progress=progress)
        finish()
        if is_main_process():
            console.print(
                loss_table(
                    runs,
                    f"validation loss (nats/token) on {suite.base.eval_windows} windows x "
                    f"{suite.base.seq_len} tokens, suite {preset!r}",
                )
            )
        return
    default = _QUICK.train_config(size) if model is None else _DEFAULT  # with --model: one LR, no width rule
    lr = default.lr if lr is None else lr
    embed_lr = default.embed_lr if model is None and embed_lr is None else embed_lr
    cfg = TrainConfig(
        size=size,
        tokens=tokens,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seq_len=seq_len,
        lr=lr,
        embed_lr=embed_lr,
        schedule=schedule,
        warmup_steps=warmup_steps,
        seed=seed or 0,
        ckpt_every=ckpt_every,
        model=model,
        device=device,
        compile=compile_model,
    )
    ckpts = train(cfg, load_token_streams(data_cfg, progress=progress), out, progress=progress)
    finish()
    if is_main_process():
        console.print(
            loss_table(
                {name: ckpts}, f"validation loss (nats/token) on {cfg.eval_windows} windows x {cfg.seq_len} tokens"
            )
        )
