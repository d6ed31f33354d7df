#!/usr/bin/env python3
"""Fail if a file of either crate imports, directly or through others, a file that imports it.

Reads every `crate::`, `super::` and `self::` path, and every path through one of the file's
own child modules, in each file's non-test code (up to its
test module), resolves it to the file that defines the module, and looks for cycles in
the file graph (strongly connected components of more than one file, or a file naming itself
is ignored). Prints each cycle and exits 1 if there is one."""

import re
import sys
from pathlib import Path

ROOTS = [Path("src"), Path("core/src")]
PATH = re.compile(r"\b(crate|super|self)((?:::\w+)*)(?:::\{([^{}]*)\})?")
COMMENT = re.compile(r"//.*$", re.M)
TESTS = re.compile(r"#\[cfg\((?:any\()?test\b[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*mod \w+ \{")


def module_of(root: Path, file: Path) -> list[str]:
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def file_of(root: Path, parts: list[str]) -> Path | None:
    """The file defining the longest prefix of `parts` that is a module."""
    for n in range(len(parts), -1, -1):
        base = root.joinpath(*parts[:n])
        for candidate in (base.with_suffix(".rs"), base / "mod.rs") if n else (root / "lib.rs",):
            if candidate.is_file():
                return candidate
    return None


def edges(root: Path, file: Path) -> set[Path]:
    text = file.read_text()
    text = COMMENT.sub("", TESTS.split(text)[0])
    here = module_of(root, file)
    # A file's own `super` is its parent module; `mod.rs` is the module itself.
    found = set()
    for kind, path, group in PATH.findall(text):
        if not path and not group:
            continue
        start = {"crate": [], "self": here, "super": here[:-1]}[kind]
        base = start + [p for p in path.split("::") if p]
        items = [g.strip().split("::")[0] for g in group.split(",")] if group else [""]
        for item in items:
            names = base + ([item] if item and item not in ("self", "*") else [])
            target = file_of(root, names)
            if target and target != file:
                found.add(target)
    # Paths through the file's own child modules (`use publisher::Publisher` in a mod.rs).
    for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod (\w+);", text, re.M):
        if re.search(r"(?<![\w:])" + child + r"::", text):
            target = file_of(root, here + [child])
            if target and target != file:
                found.add(target)
    return found


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    found = []
    for root in ROOTS:
        graph = {f: edges(root, f) for f in root.rglob("*.rs")}
        found += cycles(graph)
    for component in found:
        print("import cycle: " + " -> ".join(str(f) for f in component))
    if not found:
        print("no import cycle in " + ", ".join(map(str, ROOTS)))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
