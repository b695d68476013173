"""``qscale qat MODEL_DIR --recipe R --tokens N --out DIR``: QAT fine-tuning of a user's model, then a packed folder.

``efficientqat`` runs Block-AP on calibration windows first, then E2E-QP (step sizes only) for ``--tokens``.
``efficientdm`` trains on ``--samples`` sequences the full-precision model samples itself (data-free; the corpus is
read only for the held-out evaluation).
The training state lives next to ``--out`` (``.<out>.qat-state``) until the folder is written, so a killed run
re-run with the same command resumes where it stopped; a different model, data or config is refused.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import typer

from qscale.cli.common import console as make_console
from qscale.cli.output import report
from qscale.cli.pipeline import (
    EVAL_DATA_HELP,
    FORMAT_CHOICES,
    check_out,
    check_vocab,
    export_and_evaluate,
    export_dtype,
    held_out,
    token_streams,
    write_record,
)
from qscale.cli.qat_checks import (
    REQUEST,
    auto_format,
    check_format,
    finished,
    parse_joint_bits,
    parse_rule,
    recipe_options,
)
from qscale.data.batches import calibration_windows, train_batch
from qscale.data.tokenizer import model_tokenizer
from qscale.errors import require
from qscale.evaluate.loss import evaluate
from qscale.export import folder_bytes
from qscale.models import count_params, load_model
from qscale.paths import check_out_folder
from qscale.provenance import config_hash, seed_everything, to_jsonable
from qscale.qat import (
    RECIPES,
    DistillConfig,
    InterventionConfig,
    QATRecipeConfig,
    convert,
    prepare,
    qat_finetune,
)
from qscale.qat.doublerounding import joint_finetune
from qscale.qat.efficientdm import EfficientDMOptions, self_generated_batches
from qscale.qat.efficientqat import block_ap, freeze_codes

# qat trains on --data, so the held-out default is its validation split
QAT_EVAL_DATA_HELP = EVAL_DATA_HELP.replace("the embedded corpus", "--data")


def qat_command(
    model_dir: Path = typer.Argument(..., help="Local Hugging Face causal-LM folder to fine-tune."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder of the quantized model."),
    recipe: str = typer.Option("lsq", "--recipe", help=f"QAT recipe: {', '.join(sorted(RECIPES))}."),
    tokens: int = typer.Option(1_000_000, "--tokens", help="Training tokens (rounded up to whole steps)."),
    w_bits: int = typer.Option(None, "--w-bits", help="Weight bits (default: 4; bitnet 2 (ternary), pbllm 1)."),
    a_bits: int = typer.Option(
        16, "--a-bits", help="Input-activation bits; 16 = weight-only (exports to the standard formats)."
    ),
    group_size: int = typer.Option(
        128, "--group-size", "-g", help="Weight scale per G input columns; 0 = per channel."
    ),
    rule: list[str] = typer.Option(
        [], "--rule", help="Mixed precision, repeatable: PATTERN=w8a8, PATTERN=a8 or PATTERN=skip (glob or re:regex)."
    ),
    distill: bool = typer.Option(
        False, "--distill/--no-distill", help="Distil from the full-precision model (KL + CE)."
    ),
    intervention: bool = typer.Option(
        False,
        "--intervention/--no-intervention",
        help=(
            "Teacher Intervention (Kim et al. 2023): over the first half of the steps the full-precision model's "
            "self-attention output, context, then attention map replace the student's in every layer, then plain QAT; "
            "trains on TernaryBERT's distillation loss (instead of --distill's)."
        ),
    ),
    rank: int = typer.Option(
        None,
        "--rank",
        help=(
            "lrqat / l4q / efficientdm: rank r of the trained update (α/r)·A·B; qvgen: initial rank of the auxiliary "
            "branches (default 16)."
        ),
    ),
    lora_alpha: float = typer.Option(
        None, "--lora-alpha", help="lrqat / l4q / efficientdm: α of the update (α/r)·A·B (default 16)."
    ),
    samples: int = typer.Option(
        None,
        "--samples",
        help="efficientdm: sequences sampled from the full-precision model to train on (default 256).",
    ),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW, warmup then cosine to 10%)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per step."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per training and evaluation window."),
    data: Path = typer.Option(None, "--data", help="Training text (train split). Default: the embedded corpus."),
    eval_data: Path = typer.Option(None, "--eval-data", help=QAT_EVAL_DATA_HELP),
    eval_windows: int = typer.Option(64, "--eval-windows", help="Held-out windows for the loss before and after."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer (default: the model folder's own)."),
    fmt: str = typer.Option(
        "auto",
        "--format",
        help=(
            "compressed-tensors, gptq, qscale, or auto (compressed-tensors where it can hold the layers, else qscale)."
        ),
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="dtype of full-precision tensors: auto (the source's), float32, bfloat16, float16."
    ),
    save_every: int = typer.Option(50, "--save-every", help="Save the resume state every this many steps."),
    block_steps: int = typer.Option(
        None, "--block-steps", help="efficientqat: Block-AP steps per decoder block (default 50)."
    ),
    calib_windows: int = typer.Option(
        None, "--calib-windows", help="efficientqat: Block-AP calibration windows (train split; default 32)."
    ),
    joint_bits: str = typer.Option(
        None,
        "--joint-bits",
        help=(
            "double-rounding: precisions trained jointly, highest = --w-bits (default 8,6,4,2); serve any with qscale "
            "eval --bits."
        ),
    ),
    redo: bool = typer.Option(False, "--redo", help="Train again even if --out already holds this finished run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    """Quantization-aware fine-tuning of MODEL_DIR with a recipe, then convert and export a packed folder."""
    t0 = time.perf_counter()
    for flag, v in (
        ("--tokens", tokens),
        ("--batch-size", batch_size),
        ("--seq-len", seq_len),
        ("--save-every", save_every),
    ):
        require(v >= 1, f"{flag} must be >= 1, got {v}")
    require(lr > 0, f"--lr must be positive, got {lr}")
    require(seed >= 0, f"--seed must be >= 0, got {seed}")
    require(group_size >= 0, f"--group-size must be >= 0 (0 = per channel), got {group_size}")
    check_out(out, model_dir, "model")
    check_out_folder(out.parent)  # the resume state lives next to --out
    require(
        fmt in (*FORMAT_CHOICES, "auto"), f"--format must be one of {', '.join(FORMAT_CHOICES)} or auto, got {fmt!r}"
    )
    require(recipe in RECIPES, f"unknown QAT recipe {recipe!r}; choose from {', '.join(sorted(RECIPES))}")
    opts = recipe_options(
        recipe,
        {
            "--rank": rank,
            "--lora-alpha": lora_alpha,
            "--samples": samples,
            "--block-steps": block_steps,
            "--calib-windows": calib_windows,
            "--joint-bits": joint_bits,
        },
    )
    rank, lora_alpha, samples = opts["--rank"], opts["--lora-alpha"], opts["--samples"]
    block_steps, calib_windows, joint_bits = opts["--block-steps"], opts["--calib-windows"], opts["--joint-bits"]
    given = locals()
    request = {k: str(given[k]) if isinstance(given[k], Path) else given[k] for k in REQUEST}
    request["model_dir"] = str(model_dir.resolve())
    if not redo and finished(out, request):
        typer.echo(
            f"{out} already holds this finished run (qscale-qat.json, same flags): nothing to do; "
            "pass --redo to train it again",
            err=True,
        )
        return
    cfg = QATRecipeConfig(
        recipe,
        w_bits=w_bits,
        a_bits=a_bits,
        group_size=group_size or None,
        rules=tuple(parse_rule(r) for r in rule),
        distill=DistillConfig() if distill and not intervention else None,
        rank=rank,
        lora_alpha=lora_alpha,
        intervention=InterventionConfig() if intervention else None,
        options=EfficientDMOptions(samples=samples) if recipe == "efficientdm" else None,
    )
    out_dtype = export_dtype(dtype, model_dir)
    console = make_console(stderr=True)
    seed_everything(seed)

    model = load_model(model_dir)
    counts = count_params(model)
    if fmt in ("compressed-tensors", "gptq", "all"):
        check_format(model, cfg, fmt)
    tok = model_tokenizer(model_dir, tokenizer)
    train_streams = token_streams(data, tok, progress)
    eval_streams = train_streams if eval_data in (None, data) else token_streams(eval_data, tok, progress)
    check_vocab(model, train_streams, model_dir)
    windows = held_out(model, eval_streams, eval_windows, seq_len)
    fp = evaluate(model, windows, progress=progress)
    steps = -(-tokens // (batch_size * seq_len))
    teacher = copy.deepcopy(model) if cfg.distill or cfg.intervention or recipe == "efficientdm" else None
    run = {
        "model": str(model_dir.resolve()),
        "cfg": to_jsonable(cfg),
        "tokens": tokens,
        "lr": lr,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seed": seed,
        "tokenizer": train_streams.tokenizer_hash,
        "data_fingerprint": train_streams.data_fingerprint,
        "train_tokens": len(train_streams.train),
        "data": str(data or "embedded"),
    }
    state = out.with_name(f".{out.name}.qat-state")
    if recipe == "efficientqat":  # Block-AP (not resumable: deterministic, redone), then E2E-QP below
        require(block_steps >= 1 and calib_windows >= 1, "--block-steps and --calib-windows must be >= 1")
        calib = calibration_windows(train_streams.train, calib_windows, seq_len, seed)
        block_ap(model, cfg, calib, steps=block_steps, progress=progress)
        freeze_codes(model)
        run.update(block_steps=block_steps, calib_windows=calib_windows)
    if recipe == "efficientdm":  # data-free: the full-precision model's own samples
        batches = self_generated_batches(teacher, cfg.options, batch_size, seq_len, seed)
        run.update(samples=samples, data="self-generated (fp model samples)")
    else:

        def batches(step):
            return train_batch(train_streams.train, step, batch_size, seq_len, seed)

    if recipe == "double-rounding":  # one-shot joint training of every precision (ALRS), one stored model
        bits = parse_joint_bits(joint_bits, cfg.default_bits[0])
        run["joint_bits"] = list(bits)
        prepare(model, cfg)
        per_bits = joint_finetune(
            model,
            batches,
            steps,
            lr,
            bits,
            warmup_steps=min(50, steps // 10),
            state_dir=state,
            save_every=save_every,
            fingerprint=config_hash(run),
            progress=progress,
        )
        losses = [sum(x) / len(x) for x in zip(*per_bits.values(), strict=True)]
    else:
        losses = qat_finetune(
            model,
            cfg,
            batches,
            steps,
            lr,
            teacher=teacher,
            warmup_steps=min(50, steps // 10),
            state_dir=state,
            save_every=save_every,
            fingerprint=config_hash(run),
            progress=progress,
        )
    convert(model)
    chosen = auto_format(model, fmt)
    fmts = ["compressed-tensors", "gptq"] if chosen == "all" else [chosen]
    results = export_and_evaluate(model, out, fmts, model_dir, out_dtype, windows, fp, progress)
    extra = " + teacher intervention" if intervention else " + distill" if distill else ""
    report(f"QAT {cfg.label}{extra}, {steps} steps: {model_dir}", counts, fp, results, folder_bytes(model_dir))
    write_record(
        out / "qscale-qat.json",
        {
            "command": "qat",
            "request": request,
            **run,
            "steps": steps,
            "train_loss_first": losses[0] if losses else None,
            "train_loss_last": losses[-1] if losses else None,
            "eval_windows": eval_windows,
            "loss_fp": fp.loss,
            "results": [
                {
                    "format": r.export.format,
                    "path": str(r.export.path),
                    "bytes": r.export.nbytes,
                    "loss": r.loss,
                    "qid": r.qid,
                    "qid_se": r.qid_se,
                }
                for r in results
            ],
            "seconds": time.perf_counter() - t0,
        },
    )
    shutil.rmtree(state, ignore_errors=True)
    console.print(f"done in {time.perf_counter() - t0:.1f} s; record: {out / 'qscale-qat.json'}")
