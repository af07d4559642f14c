"""The package's structure stays as docs/architecture.md draws it: no import cycles, one home per job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpokit"


def import_graph() -> dict[str, set[str]]:
    """dpokit module -> the dpokit modules it imports (at module level or inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "dpokit":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from . import vocab` imports the submodule dpokit.tasks.vocab
                if f"{target}.{alias.name}" in modules:
                    deps.add(f"{target}.{alias.name}")
                    break
            else:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target:
                    deps.add(target)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    # a package's __init__ re-exporting its submodules is not a cycle of jobs; everything else is
    real = [c for c in cycles(graph) if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not real, real


def test_trl_private_names_are_used_only_in_trl_hooks():
    hooked = ("_prepare_dataset", "_precompute_ref_logps", "_use_triton", "_tokenizer", "tokenize_row")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "trl_hooks.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.name}: {name}" for name in hooked if re.search(rf"(?<![A-Za-z0-9_]){name}\b", text)]
    assert not offenders, offenders
