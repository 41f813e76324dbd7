"""The package layers hold: no module imports a higher layer or forms an import cycle, lazy imports included.

Order (lower first): foundation (``lavila.atomic``, ``lavila.dist``, ``lavila.config``, ``lavila.errors``,
``lavila.failpoints``, ``lavila.malloc``, ...) -> ``lavila.models`` -> ``lavila.data`` -> ``lavila.eval`` ->
``lavila.train`` -> ``lavila.narrate`` -> the top (``lavila.cli``, ``lavila.demo``, ``lavila.conformance``, app).
``docs/architecture.md`` describes the same order.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lavila"
LAYERS = ["foundation", "models", "data", "eval", "train", "narrate", "top"]
FOUNDATION = {"lavila", "lavila.atomic", "lavila.dist", "lavila.config", "lavila.errors", "lavila.failpoints",
              "lavila.progress", "lavila.locks", "lavila.malloc"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    if module in FOUNDATION:
        return 0
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return LAYERS.index("top")


def imports_of(path: Path, module: str) -> set[str]:
    """Every lavila module imported anywhere in the file (function bodies too), resolved to existing modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lavila"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            if not base.startswith("lavila"):
                continue
            for alias in node.names:  # `from lavila.models import factory` imports a module, not a name
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in ALL_MODULES else base)
    return {m for m in found if m in ALL_MODULES}


ALL_MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, module_name(p)) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_layer():
    upward = [f"{src} ({LAYERS[layer_of(src)]}) imports {dst} ({LAYERS[layer_of(dst)]})"
              for src, deps in sorted(graph().items()) for dst in sorted(deps)
              if layer_of(dst) > layer_of(src) and not dst == "lavila"]
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_cycles():
    g = graph()
    # package __init__ modules re-export their children; an edge child -> parent package is not a cycle of code
    g = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_imports(tmp_path):
    """The walk covers imports inside functions (the cycles that lazy imports used to hide)."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from lavila.train.loop import train\n")
    assert imports_of(src, "lavila.models.mod") == {"lavila.train.loop"}
