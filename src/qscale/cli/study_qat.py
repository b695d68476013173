"""``qscale study qat``: the QAT scaling-law study (Chen et al. 2025; SPEC §2) and QAT vs PTQ."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from qscale.cli.common import console as make_console
from qscale.cli.study_options import (
    ADDRESS_OPTION,
    DATA_OPTION,
    DB_OPTION,
    EXECUTOR_OPTION,
    GPUS_OPTION,
    PROGRESS_OPTION,
    TOKENIZER_OPTION,
    check_study_paths,
    ints,
    names,
)
from qscale.study.backends import make_executor
from qscale.study.qat import build_qat_study, run_qat_study


def study_qat_command(
    preset: str = typer.Option(
        "quick",
        "--preset",
        "-p",
        help="Study size: tiny (seconds, tests), quick (< 15 min on 2 CPU cores), gpu (one GPU, bf16).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Study folder (study.sqlite, report/). Default: "
        "./qscale-runs/qat-<preset>. Re-running with the same folder resumes.",
    ),
    recipes: str = typer.Option(
        None,
        "--recipes",
        help="Comma-separated QAT recipes for the QAT-vs-PTQ comparison (ste,lsq,quest). Default: the preset's.",
    ),
    sizes: str = typer.Option(None, "--sizes", help="Comma-separated model sizes of the grid (xs,s,m,l,xl)."),
    steps: str = typer.Option(
        None, "--steps", help="Comma-separated training lengths in steps (D = steps x batch x seq_len)."
    ),
    groups: str = typer.Option(None, "--groups", "-g", help="Comma-separated group sizes G (0 = per channel)."),
    compare: bool = typer.Option(
        True, "--compare/--no-compare", help="Also run QAT vs GPTQ on the QiD suite's final checkpoints."
    ),
    qid_dir: Path = typer.Option(
        None, "--qid-dir", help="QiD study folder whose trained suite to re-use. Default: ./qscale-runs/qid-<suite>."
    ),
    data: Path = DATA_OPTION,
    tokenizer: Path = TOKENIZER_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and calibration."),
    checkpoints: str = typer.Option(
        None,
        "--checkpoints",
        help="QAT vs PTQ on your own suite's final "
        "checkpoints (largest D per size): a folder of checkpoint folders, a glob or a "
        "CSV manifest, as for 'qscale study qid'.",
    ),
    tokens_per_step: int = typer.Option(
        None, "--tokens-per-step", help="With --checkpoints: D = S x this for folders named step<S>."
    ),
    progress: bool = PROGRESS_OPTION,
    db: str = DB_OPTION,
    executor: str = EXECUTOR_OPTION,
    address: str = ADDRESS_OPTION,
    gpus_per_task: float = GPUS_OPTION,
) -> None:
    """Train full-precision and QAT models (W4A4, W4A16, W16A4; STE AbsMax) from scratch over a grid of
    N, D and G, record δ = loss_QAT − loss_fp, fit δ = k·D^γD·(log2 G)^γG/N^γN, attribute the activation
    error per layer, test the FC2-at-8-bits fix, and compare QAT fine-tuning (ste/lsq/quest) with GPTQ W4.
    Resumable: re-run the same command after an interruption."""
    study = build_qat_study(
        preset,
        out=out,
        data=data,
        tokenizer=tokenizer,
        seed=seed,
        recipes=names(recipes),
        sizes=names(sizes),
        steps=ints(steps, "--steps"),
        groups=ints(groups, "--groups"),
        compare=compare,
        qid_dir=qid_dir,
        checkpoints=checkpoints,
        tokens_per_step=tokens_per_step,
    )
    t0 = time.perf_counter()
    check_study_paths(study.out_dir, db)
    res = run_qat_study(
        study,
        progress=progress,
        db=db,  # every check before the first write: errors are one line
        executor=make_executor(executor, address, gpus_per_task),
    )
    console = make_console(stderr=True)
    console.print(f"QAT study {study.name}: {study.out_dir}")
    console.print(
        f"{res.computed} models trained/measured, {res.skipped} already in the store; "
        f"{time.perf_counter() - t0:.0f} s in all."
    )
    console.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))
    for name, f in res.report.fits.items():
        if f.params is None:
            console.print(f"{name}: {f.error}")
        else:
            console.print(
                f"{name}: k={f.params['k']:.3g} gamma_N={f.params['gamma_N']:.3g} "
                f"gamma_D={f.params['gamma_D']:.3g} gamma_G={f.params['gamma_G']:.3g} "
                f"({f.stats['n_points']} points, {f.n_excluded} excluded)"
            )
    typer.echo(f"report: {res.report.folder / 'summary.md'}")
