"""User law forms: a Python callable or an expression string over declared parameters and inputs.

Expressions are parsed with :mod:`ast` and only arithmetic, numbers, the declared names and a few
NumPy functions are allowed, so a law string from a file cannot run arbitrary code.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from qscale.errors import QscaleError
from qscale.laws.forms import LawForm, Param

FUNCTIONS: dict[str, Callable] = {
    "exp": np.exp,
    "log": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "minimum": np.minimum,
    "maximum": np.maximum,
}
CONSTANTS = {"pi": float(np.pi), "e": float(np.e)}
_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)


def compile_expression(expr: str, names: Sequence[str]) -> Callable[..., np.ndarray]:
    """A function of keyword arguments ``names`` evaluating ``expr`` with NumPy, after checking it."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise QscaleError(f"law expression {expr!r}: {e.msg}") from None
    allowed = set(names) | set(FUNCTIONS) | set(CONSTANTS)
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise QscaleError(f"law expression {expr!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and node.id not in allowed:
            raise QscaleError(
                f"law expression {expr!r}: unknown name {node.id!r} (allowed: {', '.join(sorted(allowed))})"
            )
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise QscaleError(f"law expression {expr!r}: only {', '.join(FUNCTIONS)} may be called")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise QscaleError(f"law expression {expr!r}: constant {node.value!r} is not a number")
    code = compile(tree, "<law>", "eval")
    namespace = {"__builtins__": {}, **FUNCTIONS, **CONSTANTS}

    def f(**values: np.ndarray) -> np.ndarray:
        return eval(code, namespace, values)

    return f


class UserLaw(LawForm):
    """A law ``y = f(inputs, params)``; parameters with a positive lower bound are fitted as logs."""

    def __init__(
        self,
        name: str,
        f: Callable[..., np.ndarray] | str,
        params: Mapping[str, tuple[float, float]],
        inputs: Sequence[str],
        target: str = "loss",
        log_inputs: Sequence[str] = (),
    ) -> None:
        if not params or not inputs:
            raise QscaleError(f"user law {name!r} needs at least one parameter and one input")
        self.name, self.target, self.inputs, self.log_inputs = name, target, tuple(inputs), tuple(log_inputs)
        self.params = tuple(Param(p, float(lo), float(hi), log=lo > 0) for p, (lo, hi) in params.items())
        self.description = f if isinstance(f, str) else getattr(f, "__name__", "callable")
        self._f = compile_expression(f, [*self.param_names, *self.inputs]) if isinstance(f, str) else f

    def _log_predict(self, theta: np.ndarray, X: Mapping[str, np.ndarray]) -> np.ndarray:
        values = {p.name: p.to_natural(t) for p, t in zip(self.params, theta, strict=True)}
        with np.errstate(all="ignore"):
            y = np.asarray(self._f(**{c: X[c] for c in self.inputs}, **values), dtype=float)
            return np.log(np.where(y > 0, y, np.nan)) * np.ones(len(X[self.inputs[0]]))
