"""What the commands print: result tables (rich, markup off so user paths print literally) and summaries."""

from __future__ import annotations

from rich.table import Table

from qscale.cli.common import console as make_console
from qscale.cli.pipeline import FormatResult
from qscale.evaluate.loss import EvalResult
from qscale.models.params import ParamCount
from qscale.train.checkpoint import CheckpointInfo


def report(title: str, counts: ParamCount, fp: EvalResult, results: list[FormatResult], source_bytes: int) -> None:
    """A table: format, folder, size (and bits per quantized weight incl. scales), loss, QiD ± paired SE."""
    console = make_console()
    console.width = max(console.width, 132)
    table = Table(title=title)
    table.add_column("format", no_wrap=True, min_width=18)
    table.add_column("folder", overflow="fold")
    for col in ("size", "loss fp", "loss q", "QiD ± SE"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row("fp (source)", "", f"{source_bytes / 1e6:,.2f} MB", f"{fp.loss:.4f}", "", "")
    for r in results:
        table.add_row(
            r.export.format,
            str(r.export.path),
            f"{r.export.nbytes / 1e6:,.2f} MB",
            f"{fp.loss:.4f}",
            f"{r.loss:.4f}",
            f"{r.qid:+.4f} ± {r.qid_se:.4f}",
        )
    console.print(table)
    console.print(
        f"N (non-embedding) = {counts.non_embedding:,}, total = {counts.total:,}; losses in nats/token on "
        f"{len(fp.per_window)} held-out windows; QiD = loss q − loss fp (paired standard error)"
    )


def loss_table(runs: dict[str, list[CheckpointInfo]], title: str) -> Table:
    """Validation loss (nats/token) of every checkpoint: one row per step, one column per run."""
    table = Table(title=title)
    table.add_column("step", justify="right")
    table.add_column("tokens D", justify="right")
    for name, ckpts in runs.items():
        n = ckpts[0].meta.get("N") if ckpts else None
        table.add_column(f"{name} (N={n:,})" if n else name, justify="right")
    by_step = {name: {c.step: c for c in ckpts} for name, ckpts in runs.items()}
    for step in sorted({c.step for ckpts in runs.values() for c in ckpts}):
        tokens = next(c.tokens for ckpts in runs.values() for c in ckpts if c.step == step)
        cells = [f"{by_step[n][step].meta['val_loss']:.4f}" if step in by_step[n] else "" for n in runs]
        table.add_row(str(step), f"{tokens:,}", *cells)
    return table


def print_fit(result: dict) -> None:
    console = make_console()
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
        console.print(
            f"noise policy: {noise['n_excluded']} of {noise['n_rows']} rows excluded "
            f"({noise['n_nonpositive']} with {result['target']} <= 0): {noise['policy']}"
        )
    console.print(
        f"objective {result['objective']:.6g}  R²(log) {result['r2_log']:.4f}  "
        f"RMSE(log) {result['rmse_log']:.4g}  {result['message']}"
    )
    if result["at_bounds"]:
        console.print(f"parameters at their bounds: {', '.join(result['at_bounds'])}", style="yellow")
    sc = result.get("scatter")
    if sc:
        console.print(
            f"residual scatter (log): {sc['sd_log']:.3g}, beyond measurement noise {sc['sd_model']:.3g} "
            "(enters the prediction interval)"
        )
    for v in (result.get("validation") or {}).values():
        console.print(validation_text(v))


def validation_text(v: dict) -> str:
    """One line of a held-out check (``qscale.laws.validate``)."""
    if v.get("error"):
        return f"largest {v['hold']} held out: {v['error']}"
    if not v["n_test"]:
        return f"largest {v['hold']} held out: no held-out point"
    return (
        f"largest {v['hold']} = {v['held_out_value']:.4g} held out ({v['n_test']} points, fitted on "
        f"{v['n_train']}): median |rel. error| {v['median_abs_rel_error']:.1%}, max {v['max_abs_rel_error']:.1%}; "
        f"{v['covered']}/{v['n_test']} inside the 95% prediction interval "
        f"({v['covered_mean']}/{v['n_test']} inside the interval on the mean law)"
    )
