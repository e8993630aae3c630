"""The import graph of vlm_grades/, eval/ and nanovlm/, read from the source (every import statement, those inside
functions too: a lazy import is still a dependency). Used by tests/test_layout.py; as a script it prints the
cycles and the layer violations, and with --dot FILE writes a Graphviz drawing of the packages:

    python tests/import_graph.py --dot docs/imports.dot && dot -Tsvg docs/imports.dot -o docs/imports.svg
"""
from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlm_grades", "eval", "nanovlm")

# The order data flows through a run (docs/DESIGN): a package may import its own layer and those below it,
# never one above. Top-level modules of vlm_grades are named by their module name.
LAYERS = [
    ("nanovlm", "vlm_grades.errors"),
    ("vlm_grades.components", "vlm_grades.grades", "vlm_grades.data", "vlm_grades.feature_cache"),
    ("vlm_grades.config", "vlm_grades.models"),
    ("vlm_grades.training.run_folder", "vlm_grades.training.checkpoint", "vlm_grades.training.divergence"),
    ("vlm_grades.parallel", "eval"),
    ("vlm_grades.training", "vlm_grades.callback"),
    ("vlm_grades.report",),
    ("vlm_grades.commands", "vlm_grades.cli", "vlm_grades.__main__", "vlm_grades"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies inside ("a.b.c" -> "a.b" when c is a symbol)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges(known: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    known = known or modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            for name in names:
                target = _resolve(name, known)
                if target and target != mod and not mod.startswith(target + "."):   # a parent package: not an edge
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def layer(mod: str) -> int:
    """The layer of the most specific LAYERS entry that `mod` is or lies inside."""
    best, best_len = len(LAYERS), -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (mod == name or mod.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    return best


def climbing(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a module from a higher layer than the importer's own."""
    return sorted((a, b) for a, bs in graph.items() for b in bs if layer(b) > layer(a))


def package_of(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if parts[0] == "vlm_grades" and len(parts) > 1 else parts[0]


def dot(graph: dict[str, set[str]]) -> str:
    """Packages as boxes ranked by layer, one arrow per package pair that imports."""
    pairs = {(package_of(a), package_of(b)) for a, bs in graph.items() for b in bs}
    pairs = {(a, b) for a, b in pairs if a != b}
    nodes = sorted({n for pair in pairs for n in pair})
    lines = ["digraph imports {", "  rankdir=TB; node [shape=box, fontname=Helvetica];"]
    for i in range(len(LAYERS) + 1):
        same = [n for n in nodes if layer(n) == i]
        if same:
            lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in same) + " }")
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(pairs)]
    return "\n".join(lines + ["}"]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", type=Path, help="write a Graphviz drawing of the package graph here")
    args = parser.parse_args()
    graph = edges()
    found, up = cycles(graph), climbing(graph)
    print(f"{len(modules())} modules, {sum(map(len, graph.values()))} imports")
    for c in found:
        print("cycle:", " <-> ".join(c))
    for a, b in up:
        print(f"climbs: {a} -> {b}")
    if args.dot:
        args.dot.write_text(dot(graph))
    return 1 if found or up else 0


if __name__ == "__main__":
    raise SystemExit(main())
