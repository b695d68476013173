"""``qscale predict``: evaluate a fitted or published law, or invert it for the input that reaches a threshold."""

from __future__ import annotations

from typing import Annotated

import typer

from qscale.cli.fit import LAW_HELP, print_json
from qscale.errors import QscaleError
from qscale.laws.flags import FLAGS, check_flags, extrapolations, flag_message
from qscale.laws.paramfile import ParamEntry, ParamFile, load_params
from qscale.laws.predict import invert, predict
from qscale.laws.published import PUBLISHED
from qscale.laws.registry import get_law
from qscale.laws.uncertainty import invert_interval, predict_interval


def _flag(name: str) -> str:
    return FLAGS.get(name, f"--{name}")


def predict_command(
    params: Annotated[
        str,
        typer.Option(
            "--params",
            help=f"Published set ({', '.join(sorted(PUBLISHED))}), a JSON file "
            "from 'qscale fit --json', or a study's report/fit.json.",
        ),
    ],
    law: Annotated[
        str | None, typer.Option("--law", help=LAW_HELP + " Default: the law the parameters belong to.")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="A study's fit.json: the method (default: every fitted method).")
    ] = None,
    n: Annotated[float | None, typer.Option("--N", help="Non-embedding parameters.")] = None,
    d: Annotated[float | None, typer.Option("--D", help="Training tokens.")] = None,
    bits: Annotated[float | None, typer.Option("--bits", help="Bit width P.")] = None,
    g: Annotated[
        float | None,
        typer.Option("--G", help="Quantization group size (> 1; for per-channel scales pass the layer's input width)."),
    ] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="Precision label (effective_params).")] = None,
    qid: Annotated[
        float | None, typer.Option("--qid", help="Solve for the missing input at which QiD reaches this value.")
    ] = None,
    delta: Annotated[
        float | None, typer.Option("--delta", help="Solve for the missing input at which delta reaches this value.")
    ] = None,
    loss: Annotated[
        float | None,
        typer.Option("--loss", help="Solve for the missing input at which the loss reaches this value."),
    ] = None,
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
        raise QscaleError(f"law {law!r} takes {', '.join(map(_flag, form.inputs))}; not {', '.join(map(_flag, extra))}")
    check_flags(form, inputs)
    entries = _chosen(pf, method)
    try:
        results = {
            name: _predict_or_solve(form, law, e, pf, inputs, {"qid": qid, "delta": delta, "loss": loss})
            for name, e in entries.items()
        }
    except QscaleError as e:
        raise QscaleError(flag_message(str(e))) from None
    if json_out:
        print_json(
            results[""]
            if list(results) == [""]
            else {
                "law": law,
                "source": pf.source,
                "inputs": inputs,
                "methods": results,
                "unfitted": {m: pf.unfitted[m] for m in pf.unfitted if method in (None, m)},
            }
        )
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
        raise QscaleError(
            f"no method {method!r} in {pf.source} (have: {', '.join(list(pf.entries) + list(pf.unfitted))})"
        )
    return {method: pf.entries[method]}


def _line(r: dict) -> str:
    ci = r["interval"]
    text = f"{r['solve_for']} = {r['value']:.6g}" if "solve_for" in r else f"{r['target']} = {r['prediction']:.6g}"
    if ci and ci["lo"] == ci["lo"]:  # not NaN
        text += f"  ({ci['level']:.0%} CI {ci['lo']:.4g} – {ci['hi']:.4g}, bootstrap)"
    elif ci:
        text += (
            f"  (no interval: only {ci['n_samples'] - ci['n_failed']} of {ci['n_samples']} bootstrap samples solvable)"
        )
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
        ((name, value),) = thresholds.items()
        if len(missing) != 1:
            raise QscaleError(
                f"to solve for one input leave exactly one of {', '.join(map(_flag, form.inputs))} "
                f"out (missing: {', '.join(map(_flag, missing)) or 'none'})"
            )
        result.update(
            solve_for=missing[0], threshold={name: value}, value=float(invert(form, values, inputs, value, missing[0]))
        )
        est = invert_interval(samples, inputs, value, missing[0]) if samples else None
    else:
        if missing:
            raise QscaleError(
                f"law {law!r} needs {', '.join(map(_flag, missing))} "
                "(or a threshold such as --qid to solve for one of them)"
            )
        result.update(prediction=float(predict(form, values, inputs)), target=form.target)
        est = predict_interval(samples, inputs) if samples else None
    result["interval"] = est.as_dict() if est else None
    solved = {result["solve_for"]: result["value"]} if "solve_for" in result else {}
    result["extrapolation"] = extrapolations(pf.ranges, {**inputs, **solved})
    return result
