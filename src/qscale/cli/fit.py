"""``qscale fit`` and ``qscale predict``: fit a law to a table; evaluate or invert a fitted / published law."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from qscale._version import __version__
from qscale.errors import QscaleError
from qscale.evaluate.noise import NOISE_K, NoisePolicy
from qscale.laws.bootstrap import bootstrap_problem
from qscale.laws.extrapolate import extrapolation_check
from qscale.laws.fit import fit_problem, make_problem
from qscale.laws.flags import FLAGS, check_flags, extrapolations, fitted_ranges, flag_message, recorded_ranges
from qscale.laws.io import load_table, parse_column_map
from qscale.laws.paramfile import ParamEntry, ParamFile, load_params
from qscale.laws.plot import plot_observed_vs_predicted
from qscale.laws.predict import invert, predict
from qscale.laws.published import PUBLISHED
from qscale.laws.registry import LAWS, get_law
from qscale.laws.screen import screen_rows
from qscale.laws.uncertainty import invert_interval, predict_interval, samples_record
from qscale.provenance import to_jsonable

LAW_HELP = f"Law form: {', '.join(sorted(LAWS))}."
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _print_json(obj: object) -> None:
    typer.echo(json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


def fit_command(
    law: Annotated[str, typer.Option("--law", help=LAW_HELP)],
    data: Annotated[Path, typer.Option("--data", help="Observations: .csv, .parquet or a SQLite store (.sqlite/.db).")],
    target: Annotated[Optional[str], typer.Option(help="Target column (default: the law's: qid, delta or loss).")] = None,
    table: Annotated[Optional[str], typer.Option(help="SQLite table (default: the only one, or 'qid').")] = None,
    where: Annotated[Optional[str], typer.Option(help="SQLite row filter, e.g. \"method = 'gptq'\".")] = None,
    col: Annotated[Optional[list[str]], typer.Option("--col", help="Column mapping LAW_NAME=FILE_COLUMN, e.g. N=n_params (repeatable).")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for 95% intervals (>= 200; 0 = none).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    holdout: Annotated[Optional[str], typer.Option(help="Extrapolation check: hold out the largest N or D.")] = None,
    huber_delta: Annotated[float, typer.Option(help="Huber delta on log residuals (Hoffmann et al. 2022).")] = 1e-3,
    noise_k: Annotated[float, typer.Option(help="With a <target>_se column (a study's store): fit only rows with "
                                                "value > k x SE, as the studies do; the others are counted.")] = NOISE_K,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (accepted by predict --params).")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write an observed-vs-fitted plot here (.png, .pdf or .svg; "
                                                     "its folder must exist).")] = None,
) -> None:
    """Fit a scaling law (Huber loss on log residuals, L-BFGS-B from a grid of starts) with bootstrap CIs."""
    if n_boot and n_boot < 200:
        raise QscaleError(f"--n-boot must be 0 or >= 200, got {n_boot}")
    if holdout not in (None, "N", "D"):
        raise QscaleError(f"--holdout must be N or D, got {holdout!r}")
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise QscaleError(f"--plot {plot}: use a .png, .pdf or .svg file name")
    if plot is not None and not plot.parent.is_dir():
        raise QscaleError(f"--plot {plot}: folder {plot.parent} does not exist")
    rows = load_table(data, table=table, where=where, columns=parse_column_map(col))
    target = target or get_law(law).target
    rows, screening = screen_rows(rows, target, NoisePolicy(noise_k))
    try:
        problem = make_problem(get_law(law), rows, target, huber_delta)
    except QscaleError as e:
        if not screening or not screening.n_excluded:
            raise
        raise QscaleError(f"{e} ({screening.n_excluded} of {screening.n_rows} rows are at or under the noise floor, "
                          f"value <= {noise_k:g} x {screening.se_column}, and were excluded)") from None
    fit = fit_problem(problem, target=target)
    boot = bootstrap_problem(problem, fit, n_boot, seed) if n_boot else None
    extrapolation = extrapolation_check(law, rows, target, holdout, huber_delta) if holdout else None
    if plot is not None:
        plot_observed_vs_predicted(fit, rows, plot)
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
        "extrapolation": extrapolation,
        "ranges": fitted_ranges(problem.form, rows),
        "citation": problem.form.citation,
        "qscale": __version__,
    }
    if json_out:
        _print_json(result)
        return
    _print_fit(result)


def _print_fit(result: dict) -> None:
    console = Console()
    t = Table(title=f"{result['law']} fit to {result['data']} ({result['n_points']} points)")
    for c in ("parameter", "value", "95% CI"):
        t.add_column(c)
    for name, value in result["params"].items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for label, v in items:
            lo_hi = result["ci"].get(name)
            if label is not None and isinstance(lo_hi, dict):
                lo_hi = lo_hi.get(label)
            shown = f"{name}[{label}]" if label is not None else name
            t.add_row(shown, f"{v:.6g}", f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else "-")
    console.print(t)
    noise = result["noise"]
    if noise:
        console.print(f"noise policy: {noise['n_excluded']} of {noise['n_rows']} rows excluded "
                      f"({noise['n_nonpositive']} with {result['target']} <= 0): {noise['policy']}")
    console.print(f"objective {result['objective']:.6g}  R²(log) {result['r2_log']:.4f}  "
                  f"RMSE(log) {result['rmse_log']:.4g}  {result['message']}")
    if result["at_bounds"]:
        console.print(f"[yellow]parameters at their bounds: {', '.join(result['at_bounds'])}[/yellow]")
    ex = result["extrapolation"]
    if ex:
        console.print(f"extrapolation to {ex['hold_out']} = {ex['held_out_value']:.4g} ({ex['n_test']} points): "
                      f"mean |rel. error| {ex['mean_abs_rel_error']:.3%}, max {ex['max_abs_rel_error']:.3%}")


def _flag(name: str) -> str:
    return FLAGS.get(name, f"--{name}")


def predict_command(
    params: Annotated[str, typer.Option("--params", help=f"Published set ({', '.join(sorted(PUBLISHED))}), a JSON file "
                                                         "from 'qscale fit --json', or a study's report/fit.json.")],
    law: Annotated[Optional[str], typer.Option("--law", help=LAW_HELP + " Default: the law the parameters belong to.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="A study's fit.json: the method (default: every "
                                                                   "fitted method).")] = None,
    n: Annotated[Optional[float], typer.Option("--N", help="Non-embedding parameters.")] = None,
    d: Annotated[Optional[float], typer.Option("--D", help="Training tokens.")] = None,
    bits: Annotated[Optional[float], typer.Option("--bits", help="Bit width P.")] = None,
    g: Annotated[Optional[float], typer.Option("--G", help="Quantization group size (> 1; for per-channel scales "
                                                           "pass the layer's input width).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="Precision label (effective_params).")] = None,
    qid: Annotated[Optional[float], typer.Option("--qid", help="Solve for the missing input at which QiD reaches this value.")] = None,
    delta: Annotated[Optional[float], typer.Option("--delta", help="Solve for the missing input at which delta reaches this value.")] = None,
    loss: Annotated[Optional[float], typer.Option("--loss", help="Solve for the missing input at which the loss reaches this value.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Evaluate a law at (N, D, bits, G, precision), or give a threshold and leave one input out to solve for it.

    With bootstrap samples in the parameter file (qscale fit, a study's fit.json) the value carries its 95% interval.
    """
    pf = load_params(params)
    if law and pf.law and law != pf.law:
        raise QscaleError(f"--law {law!r} does not match the parameters' law {pf.law!r}")
    law = law or pf.law
    if law is None:
        raise QscaleError("--law is required: the parameter file does not name its law")
    form = get_law(law)
    given = {"N": n, "D": d, "P": bits, "G": g, "precision": precision}
    inputs = {k: v for k, v in given.items() if v is not None and k in form.inputs}
    extra = [k for k, v in given.items() if v is not None and k not in form.inputs]
    if extra:
        raise QscaleError(f"law {law!r} takes {', '.join(map(_flag, form.inputs))}; "
                          f"not {', '.join(map(_flag, extra))}")
    check_flags(form, inputs)
    entries = _chosen(pf, method)
    try:
        results = {name: _predict_or_solve(form, law, e, pf, inputs, {"qid": qid, "delta": delta, "loss": loss})
                   for name, e in entries.items()}
    except QscaleError as e:
        raise QscaleError(flag_message(str(e))) from None
    if json_out:
        _print_json(results[""] if list(results) == [""] else
                    {"law": law, "source": pf.source, "inputs": inputs, "methods": results,
                     "unfitted": {m: pf.unfitted[m] for m in pf.unfitted if method in (None, m)}})
        return
    for name, r in results.items():
        typer.echo(f"{name + ': ' if name else ''}{_line(r)}")
    for name, why in pf.unfitted.items():
        if method is None:
            typer.echo(f"{name}: {why}")


def _chosen(pf: ParamFile, method: str | None) -> dict[str, ParamEntry]:
    if method is None:
        if not pf.entries:
            raise QscaleError(f"{pf.source}: no fitted law ({'; '.join(f'{m}: {w}' for m, w in pf.unfitted.items())})")
        return pf.entries
    if list(pf.entries) == [""] and not pf.unfitted:
        raise QscaleError("--method applies to a study's fit.json with several methods")
    if method in pf.unfitted:
        raise QscaleError(f"method {method!r} has no fitted law in {pf.source}: {pf.unfitted[method]}")
    if method not in pf.entries:
        raise QscaleError(f"no method {method!r} in {pf.source} (have: {', '.join(list(pf.entries) + list(pf.unfitted))})")
    return {method: pf.entries[method]}


def _line(r: dict) -> str:
    ci = r["interval"]
    text = f"{r['solve_for']} = {r['value']:.6g}" if "solve_for" in r else f"{r['target']} = {r['prediction']:.6g}"
    if ci and ci["lo"] == ci["lo"]:  # not NaN
        text += f"  ({ci['level']:.0%} CI {ci['lo']:.4g} – {ci['hi']:.4g}, bootstrap)"
    elif ci:
        text += f"  (no interval: only {ci['n_samples'] - ci['n_failed']} of {ci['n_samples']} bootstrap samples solvable)"
    mark = f"  (extrapolation: {'; '.join(r['extrapolation'])})" if r["extrapolation"] else ""
    return text + mark


def _predict_or_solve(form, law: str, entry: ParamEntry, pf: ParamFile, inputs: dict, thresholds: dict) -> dict:
    thresholds = {k: v for k, v in thresholds.items() if v is not None}
    if len(thresholds) > 1:
        raise QscaleError("give at most one of --qid, --delta, --loss")
    values, samples = entry.params, entry.samples(law, pf.source)
    missing = [c for c in form.inputs if c not in inputs]
    result: dict[str, object] = {"law": law, "params": values, "source": pf.source, "inputs": inputs}
    if thresholds:
        (name, value), = thresholds.items()
        if len(missing) != 1:
            raise QscaleError(f"to solve for one input leave exactly one of {', '.join(map(_flag, form.inputs))} "
                              f"out (missing: {', '.join(map(_flag, missing)) or 'none'})")
        result.update(solve_for=missing[0], threshold={name: value},
                      value=float(invert(form, values, inputs, value, missing[0])))
        est = invert_interval(samples, inputs, value, missing[0]) if samples else None
    else:
        if missing:
            raise QscaleError(f"law {law!r} needs {', '.join(map(_flag, missing))} "
                              "(or a threshold such as --qid to solve for one of them)")
        result.update(prediction=float(predict(form, values, inputs)), target=form.target)
        est = predict_interval(samples, inputs) if samples else None
    result["interval"] = est.as_dict() if est else None
    solved = {result["solve_for"]: result["value"]} if "solve_for" in result else {}
    result["extrapolation"] = extrapolations(pf.ranges, {**inputs, **solved})
    return result
