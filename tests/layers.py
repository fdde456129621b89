#!/usr/bin/env python3
"""The module layering check of ./tests/run.sh: no module of src/ may use a
module that uses it back, directly or through others.

A module is a top-level module of the crate (src/NAME.rs or src/NAME/).
An arrow A -> B is any `crate::B` path in A's files outside their tests
(`#[cfg(test)] mod tests` blocks and files named tests.rs are skipped: a
test may reach anywhere). Prints the modules in layer order (each uses only
modules above it in the list) or, on a cycle, the modules in it and the
lines that make it, and exits 1."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ROOTS = {"main", "lib"}


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def code_lines(path: Path):
    """(line number, text) outside #[cfg(test)] items."""
    lines = path.read_text().splitlines()
    skip_depth = None
    depth = 0
    pending_test = False
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if skip_depth is None and stripped.startswith("#[cfg(test)]"):
            pending_test = True
            continue
        opens, closes = line.count("{"), line.count("}")
        if pending_test and skip_depth is None:
            if opens:
                skip_depth = depth
            elif stripped.endswith(";"):
                pending_test = False
                continue
        depth += opens - closes
        if skip_depth is not None:
            if depth <= skip_depth:
                skip_depth = None
                pending_test = False
            continue
        if stripped.startswith("//"):
            continue
        yield n, line


def edges():
    found = {}
    modules = set()
    for f in sorted(SRC.rglob("*.rs")):
        m = module_of(f)
        if m in ROOTS:
            continue
        modules.add(m)
        if f.name == "tests.rs":
            continue
        for n, line in code_lines(f):
            for target in re.findall(r"\bcrate::(\w+)", line):
                if target != m and target not in ROOTS:
                    found.setdefault((m, target), []).append(f"{f.relative_to(SRC.parent)}:{n}")
    return modules, found


def main():
    modules, found = edges()
    graph = {m: set() for m in modules}
    for (a, b) in found:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    # Tarjan's strongly connected components.
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
            comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = [c for c in comps if len(c) > 1]
    if cycles:
        for c in cycles:
            print(f"layers: cycle among {', '.join(c)}:")
            for (a, b), where in sorted(found.items()):
                if a in c and b in c:
                    print(f"  {a} -> {b}: {', '.join(where[:3])}{' ...' if len(where) > 3 else ''}")
        sys.exit(1)
    # Tarjan emits components in reverse topological order: leaves first.
    order = [c[0] for c in comps]
    print("layers: no cycles; from the bottom up:", " ".join(order))


if __name__ == "__main__":
    main()
