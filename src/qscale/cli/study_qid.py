"""``qscale study qid``: train a suite, quantize every checkpoint, store QiD, fit and report."""

from __future__ import annotations

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
    floats,
    ints,
    names,
    parse_target,
)
from qscale.study.backends import make_executor
from qscale.study.qid import build_study, run_qid_study


def study_qid_command(
    preset: str = typer.Option(
        "quick",
        "--preset",
        "-p",
        help="Study size: tiny (seconds, tests), quick (minutes on 2 CPU cores), standard (the papers' regime, "
        "D/N 13-313, ~15 min on 2 CPU cores), gpu (one GPU).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Study folder (suite checkpoints, study.sqlite, report/). "
        "Default: ./qscale-runs/qid-<preset>. Re-running with the same folder resumes.",
    ),
    data: Path = DATA_OPTION,
    tokenizer: Path = TOKENIZER_OPTION,
    methods: str = typer.Option(
        None, "--methods", help="Comma-separated PTQ methods (rtn,gptq). Default: the preset's."
    ),
    bits: str = typer.Option(
        None, "--bits", help="Comma-separated weight bit widths, e.g. 2,3,4,8. Default: the preset's."
    ),
    group_size: int = typer.Option(
        None, "--group-size", "-g", help="Input columns per scale (0 = per output channel). Default: the preset's."
    ),
    grid: str = typer.Option(
        None,
        "--grid",
        help="Symmetric grid: full (GPTQ / compressed-tensors, all 2^b codes) "
        "or restricted (absmax/(2^(b-1)-1)). Default: the preset's (full).",
    ),
    gptq_order: str = typer.Option(
        None,
        "--gptq-order",
        help="GPTQ calibration order: sequential (each stage on the already quantized ones) or block (one pass "
        "per block, llm-compressor's). Default: the preset's (sequential).",
    ),
    eval_windows: int = typer.Option(
        None,
        "--eval-windows",
        help="Held-out windows per loss; more windows lower the noise floor. Default: the preset's.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for calibration windows (and the suite's training)."),
    threshold: str = typer.Option(
        None,
        "--threshold",
        help="Comma-separated QiD levels for the tokens-to-reach table, e.g. 0.05,0.1,0.2. Default: the preset's.",
    ),
    checkpoints: str = typer.Option(
        None,
        "--checkpoints",
        help="Your own suite instead of training one: a "
        "folder of checkpoint folders (suite/<size>/step<N>), a glob, or a CSV "
        "manifest (columns path, size, N, D; all but path optional).",
    ),
    tokens_per_step: int = typer.Option(
        None,
        "--tokens-per-step",
        help="With --checkpoints: D = S x this for folders named step<S> without qscale metadata (Pythia: 2097152).",
    ),
    calib_data: Path = typer.Option(
        None, "--calib-data", help="With --checkpoints: calibration text (train split). Default: --data."
    ),
    target: str = typer.Option(
        None,
        "--target",
        help="Rank the methods at N,D,P, e.g. 7e9,2e12,4: predicted QiD with a 95% bootstrap interval per method.",
    ),
    progress: bool = PROGRESS_OPTION,
    db: str = DB_OPTION,
    executor: str = EXECUTOR_OPTION,
    address: str = ADDRESS_OPTION,
    gpus_per_task: float = GPUS_OPTION,
) -> None:
    """Reproduce 'low-bit quantization favors undertrained LLMs' on your own suite: train, quantize with RTN
    and GPTQ at several bit widths, record QiD = loss_quantized - loss_full_precision, fit
    QiD = k·D^β/(N^α·P^γ) and write a report. Resumable: re-run the same command after an interruption."""
    overrides = {
        "methods": names(methods),
        "bits": ints(bits, "--bits"),
        "group_size": group_size,
        "grid": grid,
        "gptq_order": gptq_order,
        "eval_windows": eval_windows,
    }
    study = build_study(
        preset,
        out=out,
        data=data,
        tokenizer=tokenizer,
        seed=seed,
        thresholds=floats(threshold, "--threshold"),
        checkpoints=checkpoints,
        tokens_per_step=tokens_per_step,
        calib_data=calib_data,
        target=parse_target(target),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    check_study_paths(study.out_dir, db)
    res = run_qid_study(
        study,
        progress=progress,
        db=db,  # every check before the first write: errors are one line
        executor=make_executor(executor, address, gpus_per_task),
    )
    console = make_console(stderr=True)
    console.print(f"QiD study {study.name}: {study.out_dir}")
    console.print(f"{res.computed} cells measured, {res.skipped} already in the store; {res.n_rows} rows reported.")
    console.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))
    for m, f in res.report.fits.items():
        if f.params is None:
            console.print(f"{m}: {f.error}")
        else:
            console.print(
                f"{m}: k={f.params['k']:.3g} alpha={f.params['alpha']:.3g} beta={f.params['beta']:.3g} "
                f"gamma={f.params['gamma']:.3g} ({f.stats['n_points']} points, "
                f"{f.excluded['total']} under the noise floor)"
            )
        if f.noise.floor_ratio > 0.5:
            console.print(
                f"{m}: the noise floor ({f.noise.median_floor:.2g}) is not well below the fitted "
                f"QiD ({f.noise.median_qid_kept:.2g}); raise --eval-windows",
                style="yellow",
            )
    typer.echo(f"report: {res.report.folder / 'summary.md'}")
