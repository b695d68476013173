"""``qscale predict``: evaluate a fitted or published law, or invert it for the input that reaches a threshold."""

from __future__ import annotations

from typing import Annotated

import typer

from qscale.cli.fit import LAW_HELP, print_json
from qscale.errors import QscaleError
from qscale.laws.flags import FLAGS, check_flags, extrapolations, flag_message
from qscale.laws.intervals import prediction_interval
from qscale.laws.paramfile import ParamEntry, ParamFile, load_params
from qscale.laws.plausibility import fp_loss_bound, pythia_loss16, range_warnings, sign_warnings, value_warnings
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
    loss_fp: Annotated[
        float | None,
        typer.Option(
            "--loss-fp",
            help="The model's full-precision loss (nats), to flag a predicted QiD/delta above it "
            "(default: bounded from a study's measured losses, or Pythia's fit for the published sets).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Evaluate a law at (N, D, bits, G, precision), or give a threshold and leave one input out to solve for it.

    With bootstrap samples in the parameter file (qscale fit, a study's fit.json) the value carries two 95%
    intervals: the prediction interval (PI), where a new measurement should fall (parameter spread + the fit's
    residual scatter), and the narrower interval on the mean law (CI). Predictions far outside the fitted range,
    physically implausible values and exponents of the wrong sign carry a warning.
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
            name: _predict_or_solve(form, law, e, pf, inputs, {"qid": qid, "delta": delta, "loss": loss}, loss_fp)
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
        for w in r["warnings"]:
            typer.echo(f"{name + ': ' if name else ''}warning: {w}")
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
    ci, pi = r["interval"], r.get("prediction_interval")
    text = f"{r['solve_for']} = {r['value']:.6g}" if "solve_for" in r else f"{r['target']} = {r['prediction']:.6g}"
    if pi and pi["lo"] == pi["lo"] and ci and ci["lo"] == ci["lo"]:
        text += (
            f"  ({pi['level']:.0%} PI {pi['lo']:.4g} – {pi['hi']:.4g} for a new measurement; "
            f"{ci['level']:.0%} CI {ci['lo']:.4g} – {ci['hi']:.4g} of the mean law, bootstrap)"
        )
    elif ci and ci["lo"] == ci["lo"]:  # not NaN
        kind = "of the mean law, " if "solve_for" not in r else ""
        text += f"  ({ci['level']:.0%} CI {ci['lo']:.4g} – {ci['hi']:.4g}, {kind}bootstrap)"
    elif ci:
        text += (
            f"  (no interval: only {ci['n_samples'] - ci['n_failed']} of {ci['n_samples']} bootstrap samples solvable)"
        )
    mark = f"  (extrapolation: {'; '.join(r['extrapolation'])})" if r["extrapolation"] else ""
    return text + mark


def _predict_or_solve(
    form, law: str, entry: ParamEntry, pf: ParamFile, inputs: dict, thresholds: dict, loss_fp: float | None = None
) -> dict:
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
        scatter = entry.scatter_of(pf.source)
        if samples and scatter:
            result["prediction_interval"] = prediction_interval(samples, scatter, inputs).as_dict()
    result["interval"] = est.as_dict() if est else None
    solved = {result["solve_for"]: result["value"]} if "solve_for" in result else {}
    point = {**inputs, **solved}
    result["extrapolation"] = extrapolations(pf.ranges, point)
    bound, source = _loss_fp(pf, point, loss_fp)
    result["warnings"] = [
        *range_warnings(pf.ranges, point),
        *(value_warnings(form.target, result["prediction"], bound, source) if "prediction" in result else []),
        *sign_warnings(law, values, entry.ci),
    ]
    return result


def _loss_fp(pf: ParamFile, point: dict, given: float | None) -> tuple[float | None, str]:
    """The full-precision loss a predicted QiD/δ is checked against, and where it comes from."""
    if given is not None:
        return given, ", --loss-fp"
    N, D = point.get("N"), point.get("D")
    if N is None or D is None:
        return None, ""
    if pf.fp_losses:
        bound = fp_loss_bound(pf.fp_losses, N, D)
        return bound, ", at most: the lowest measured at N and D no larger"
    if pf.published and pf.published.startswith("ouyang2024"):
        return pythia_loss16(N, D), ", Pythia's Loss16 fit"
    return None, ""
