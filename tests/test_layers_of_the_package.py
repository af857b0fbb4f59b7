"""The package's layering, read from the source: weights/ (checkpoint files and key rules) knows no model, even
through imports inside functions, and no two modules import each other, directly or around a cycle, at import
time."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "orca_jax"


def _imports(path: Path, modules: dict, *, lazy: bool) -> set[str]:
    """The orca_jax modules `path` imports at its top level (and inside functions, with `lazy`)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if lazy else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orca_jax"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= submodules or {node.module}  # `from orca_jax.data import sources` needs the submodule alone
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("orca_jax"))
    return found


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for other in sorted(graph.get(name, ())):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[name] = "done"
        stack.pop()
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_weights_import_no_model_and_no_module_imports_in_a_cycle():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("orca_jax.weights"):
            upward = {m for m in _imports(path, modules, lazy=True)
                      if m in modules and not m.startswith(("orca_jax.weights", "orca_jax.atomic"))}
            assert not upward, f"{name} imports {sorted(upward)}: weights/ must not know the models or the training"
    eager = {name: {m for m in _imports(path, modules, lazy=False) if m in modules and m != name}
             for name, path in modules.items()}
    assert _cycle(eager) is None, f"import cycle at import time: {' -> '.join(_cycle(eager))}"
