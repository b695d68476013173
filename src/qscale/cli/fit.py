"""``qscale fit``: fit a scaling law to a table (CSV, Parquet, SQLite) with bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from qscale._version import __version__
from qscale.cli.output import print_fit
from qscale.errors import QscaleError
from qscale.evaluate.noise import NOISE_K, NoisePolicy
from qscale.laws.bootstrap import bootstrap_problem
from qscale.laws.fit import fit_problem, make_problem
from qscale.laws.flags import fitted_ranges
from qscale.laws.intervals import fit_scatter
from qscale.laws.io import load_table, parse_column_map
from qscale.laws.plot import plot_observed_vs_predicted
from qscale.laws.registry import LAWS, get_law
from qscale.laws.screen import screen_rows
from qscale.laws.uncertainty import samples_record
from qscale.laws.validate import HOLDS, validate_all
from qscale.paths import check_out_file
from qscale.provenance import to_jsonable

LAW_HELP = f"Law form: {', '.join(sorted(LAWS))}."
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def print_json(obj: object) -> None:
    typer.echo(json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


def fit_command(
    law: Annotated[str, typer.Option("--law", help=LAW_HELP)],
    data: Annotated[Path, typer.Option("--data", help="Observations: .csv, .parquet or a SQLite store (.sqlite/.db).")],
    target: Annotated[str | None, typer.Option(help="Target column (default: the law's: qid, delta or loss).")] = None,
    table: Annotated[str | None, typer.Option(help="SQLite table (default: the only one, or 'qid').")] = None,
    where: Annotated[str | None, typer.Option(help="SQLite row filter, e.g. \"method = 'gptq'\".")] = None,
    col: Annotated[
        list[str] | None,
        typer.Option("--col", help="Column mapping LAW_NAME=FILE_COLUMN, e.g. N=n_params (repeatable)."),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for 95% intervals (>= 200; 0 = none).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    validate: Annotated[
        str | None,
        typer.Option(
            "--validate",
            help="Held-out check: refit without the largest N (or D; 'N,D' for both), predict those points, "
            "report median/max relative error and 95%-prediction-interval coverage.",
        ),
    ] = None,
    validate_plot: Annotated[
        Path | None,
        typer.Option(help="With --validate: write the held-out parity plot here (.png, .pdf or .svg)."),
    ] = None,
    holdout: Annotated[str | None, typer.Option(hidden=True, help="Old name of --validate.")] = None,
    huber_delta: Annotated[float, typer.Option(help="Huber delta on log residuals (Hoffmann et al. 2022).")] = 1e-3,
    noise_k: Annotated[
        float,
        typer.Option(
            help="With a <target>_se column (a study's store): fit only rows with "
            "value > k x SE, as the studies do; the others are counted."
        ),
    ] = NOISE_K,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (accepted by predict --params).")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write an observed-vs-fitted plot here (.png, .pdf or .svg; its folder must exist)."),
    ] = None,
) -> None:
    """Fit a scaling law (Huber loss on log residuals, L-BFGS-B from a grid of starts) with bootstrap CIs."""
    if n_boot and n_boot < 200:
        raise QscaleError(f"--n-boot must be 0 or >= 200, got {n_boot}")
    holds = _holds(validate if validate is not None else holdout)
    if validate_plot is not None and not holds:
        raise QscaleError("--validate-plot needs --validate N or D")
    for flag, path in (("--plot", plot), ("--validate-plot", validate_plot)):
        if path is not None and path.suffix.lower() not in PLOT_SUFFIXES:
            raise QscaleError(f"{flag} {path}: use a .png, .pdf or .svg file name")
        if path is not None:
            check_out_file(path, flag)
    rows = load_table(data, table=table, where=where, columns=parse_column_map(col))
    target = target or get_law(law).target
    rows, screening = screen_rows(rows, target, NoisePolicy(noise_k))
    try:
        problem = make_problem(get_law(law), rows, target, huber_delta)
    except QscaleError as e:
        if not screening or not screening.n_excluded:
            raise
        raise QscaleError(
            f"{e} ({screening.n_excluded} of {screening.n_rows} rows are at or under the noise floor, "
            f"value <= {noise_k:g} x {screening.se_column}, and were excluded)"
        ) from None
    fit = fit_problem(problem, target=target)
    boot = bootstrap_problem(problem, fit, n_boot, seed) if n_boot else None
    se = screening.se_column if screening else None
    rel_se = None if se is None else np.asarray(rows[se], dtype=float) / np.exp(problem.y)
    resid = problem.form._log_predict(fit.theta, problem.X) - problem.y
    scatter = fit_scatter(resid, len(problem.form.params), rel_se)
    validation = (
        validate_all(rows, law, holds, target=target, n_boot=n_boot or 200, seed=seed, huber_delta=huber_delta)
        if holds
        else None
    )
    if plot is not None:
        plot_observed_vs_predicted(fit, rows, plot)
    if validate_plot is not None and validation:
        write_parity(validate_plot, validation, target)
    result = {
        "law": law,
        "target": target,
        "data": str(data),
        "params": fit.params,
        "ci": boot.ci() if boot else {},
        "bootstrap": samples_record(boot) if boot else None,
        "noise": screening.as_dict() if screening else None,
        **fit.stats(),
        "n_boot": n_boot,
        "seed": seed,
        "scatter": scatter.as_dict(),
        "validation": validation,
        "ranges": fitted_ranges(problem.form, rows),
        "citation": problem.form.citation,
        "qscale": __version__,
    }
    if json_out:
        print_json(result)
        return
    print_fit(result)


def _holds(spec: str | None) -> tuple[str, ...]:
    """``N``, ``D`` or ``N,D`` -> the variables whose largest value is held out."""
    if spec is None:
        return ()
    holds = tuple(dict.fromkeys(h.strip() for h in spec.split(",")))
    if not holds or any(h not in HOLDS for h in holds):
        raise QscaleError(f"--validate must be N, D or N,D, got {spec!r}")
    return holds


def write_parity(path: Path, validation: dict, target: str) -> None:
    """The held-out parity plot (a column per held-out variable) written to ``path`` (.png, .pdf or .svg)."""
    from qscale.report.validation import plot_parity

    path.write_bytes(plot_parity({"": validation}, target, tuple(validation), path.suffix.lower().lstrip(".")))
