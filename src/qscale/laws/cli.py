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
from qscale.laws.bootstrap import bootstrap_problem
from qscale.laws.extrapolate import extrapolation_check
from qscale.laws.fit import fit_problem, make_problem
from qscale.laws.flags import FLAGS, check_flags, extrapolations, fitted_ranges, flag_message, recorded_ranges
from qscale.laws.io import load_table, parse_column_map
from qscale.laws.plot import plot_observed_vs_predicted
from qscale.laws.predict import invert, predict
from qscale.laws.published import PUBLISHED
from qscale.laws.registry import LAWS, get_law
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
    problem = make_problem(get_law(law), rows, target, huber_delta)
    target = target or problem.form.target
    fit = fit_problem(problem, target=target)
    ci = bootstrap_problem(problem, fit, n_boot, seed).ci() if n_boot else {}
    extrapolation = extrapolation_check(law, rows, target, holdout, huber_delta) if holdout else None
    if plot is not None:
        plot_observed_vs_predicted(fit, rows, plot)
    result = {
        "law": law,
        "target": target,
        "data": str(data),
        "params": fit.params,
        "ci": ci,
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


def _load_params(spec: str) -> tuple[str | None, dict, str, dict]:
    """(law name or None, params, source description, fitted ranges) from a published name or a JSON file."""
    if spec in PUBLISHED:
        pub = PUBLISHED[spec]
        return pub.law_name, dict(pub.params), pub.citation, {k: list(v) for k, v in pub.ranges.items()}
    path = Path(spec)
    if not path.is_file():
        raise QscaleError(f"--params {spec!r} is neither a published set ({', '.join(sorted(PUBLISHED))}) nor a file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QscaleError(f"--params {path}: not a JSON file from 'qscale fit --json' ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise QscaleError(f"{path}: expected a JSON object of parameters")
    params = obj.get("params", obj)
    if not isinstance(params, dict):
        raise QscaleError(f"{path}: 'params' must be an object")
    return obj.get("law"), params, str(path), recorded_ranges(obj)


def predict_command(
    params: Annotated[str, typer.Option("--params", help=f"Published set ({', '.join(sorted(PUBLISHED))}) or a JSON file from 'qscale fit --json'.")],
    law: Annotated[Optional[str], typer.Option("--law", help=LAW_HELP + " Default: the law the parameters belong to.")] = None,
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
    """Evaluate a law at (N, D, bits, G, precision), or give a threshold and leave one input out to solve for it."""
    params_law, values, source, ranges = _load_params(params)
    if law and params_law and law != params_law:
        raise QscaleError(f"--law {law!r} does not match the parameters' law {params_law!r}")
    law = law or params_law
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
    try:
        _predict_or_solve(form, law, values, source, ranges, inputs, {"qid": qid, "delta": delta, "loss": loss},
                          json_out)
    except QscaleError as e:
        raise QscaleError(flag_message(str(e))) from None


def _predict_or_solve(form, law: str, values: dict, source: str, ranges: dict, inputs: dict, thresholds: dict,
                      json_out: bool) -> None:
    thresholds = {k: v for k, v in thresholds.items() if v is not None}
    if len(thresholds) > 1:
        raise QscaleError("give at most one of --qid, --delta, --loss")
    missing = [c for c in form.inputs if c not in inputs]
    result: dict[str, object] = {"law": law, "params": values, "source": source, "inputs": inputs}
    if thresholds:
        (name, value), = thresholds.items()
        if len(missing) != 1:
            raise QscaleError(f"to solve for one input leave exactly one of {', '.join(map(_flag, form.inputs))} "
                              f"out (missing: {', '.join(map(_flag, missing)) or 'none'})")
        result.update(solve_for=missing[0], threshold={name: value},
                      value=float(invert(form, values, inputs, value, missing[0])))
    else:
        if missing:
            raise QscaleError(f"law {law!r} needs {', '.join(map(_flag, missing))} "
                              "(or a threshold such as --qid to solve for one of them)")
        result.update(prediction=float(predict(form, values, inputs)), target=form.target)
    solved = {result["solve_for"]: result["value"]} if "solve_for" in result else {}
    result["extrapolation"] = extrapolations(ranges, {**inputs, **solved})
    mark = f"  (extrapolation: {'; '.join(result['extrapolation'])})" if result["extrapolation"] else ""
    if json_out:
        _print_json(result)
    elif "solve_for" in result:
        typer.echo(f"{result['solve_for']} = {result['value']:.6g}{mark}")
    else:
        typer.echo(f"{form.target} = {result['prediction']:.6g}{mark}")
