"""Data flows one way: no import cycle between qscale's modules, and ``report`` never imports ``study``.

Every module of ``src/qscale`` is parsed (not imported); every import statement counts, including those
inside functions, so a cycle cannot hide behind a function-local import; only imports under
``if TYPE_CHECKING:`` (never executed: annotations) are left out. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``; relative imports are resolved.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qscale"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the qscale modules it imports (anywhere in the file)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:  # "qscale.x.y.Name" -> the module "qscale.x.y"
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_relative_and_function_local_imports():
    g = cycles({"a": {"b"}, "b": {"a"}, "c": set()})
    assert g == [["a", "b"]]
    graph = import_graph()
    assert "qscale.errors" in graph["qscale.study.store"] and "qscale.laws.predict" in graph["qscale.laws"]
    assert len(graph) > 50
    assert "qscale.ptq.config" not in graph["qscale.ptq.registry"]  # under TYPE_CHECKING only


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_report_never_imports_study():
    bad = [
        (m, t)
        for m, ts in import_graph().items()
        if m.startswith("qscale.report")
        for t in ts
        if t == "qscale.study" or t.startswith("qscale.study.")
    ]
    assert not bad, f"report imports study: {bad}"


def package_of(module: str) -> str:
    """``qscale.laws.fit`` -> ``qscale.laws``; top-level modules (``qscale.errors``) stand for themselves."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> dict[str, set[str]]:
    """The module graph collapsed to qscale's subpackages (self-edges dropped)."""
    out: dict[str, set[str]] = {}
    for mod, targets in import_graph().items():
        src = package_of(mod)
        out.setdefault(src, set()).update(package_of(t) for t in targets if package_of(t) != src)
    for targets in list(out.values()):
        for t in targets:
            out.setdefault(t, set())
    return out


def test_package_graph_collapses_modules():
    g = package_graph()
    assert "qscale.laws" in g["qscale.cli"] and "qscale.errors" in g["qscale.laws"]
    assert "qscale.laws" not in g["qscale.laws"]
    # a package-level cycle is found even when no two modules import each other
    assert cycles({"qscale.a": {"qscale.b"}, "qscale.b": {"qscale.a"}}) == [["qscale.a", "qscale.b"]]


def test_no_package_level_import_cycles():
    """e.g. evaluate -> export -> qat -> train -> evaluate through a command module inside evaluate/."""
    found = cycles(package_graph())
    assert not found, "package-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


CLI_ENTRY_POINTS = {"qscale.__main__"}  # ``python -m qscale``: runs the CLI


def test_only_the_cli_layer_parses_flags():
    """typer / click are imported by ``qscale.cli`` only, and nothing below it imports ``qscale.cli``."""
    bad = []
    for mod, (path, _) in _modules().items():
        if mod == "qscale.cli" or mod.startswith("qscale.cli.") or mod in CLI_ENTRY_POINTS:
            continue
        for name in _imports_of(path):
            top = name.split(".")[0]
            if top in ("typer", "click") or name == "qscale.cli" or name.startswith("qscale.cli."):
                bad.append(f"{mod} imports {name}")
    assert not bad, bad


def test_importing_the_library_and_cli_leaves_triton_unloaded():
    """Triton (~70 MB RSS, ~1 s) loads only where it runs: transformers' model classes import torch._dynamo,
    which imports Triton, so ``qscale``, ``qscale.ptq`` and ``qscale.cli`` import them where a model is built."""
    import subprocess
    import sys

    code = (
        "import sys; import qscale, qscale.ptq, qscale.cli; "
        "print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": str(SRC.parent)},
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
