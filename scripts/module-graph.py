#!/usr/bin/env python3
"""Checks the import structure of the workspace's crates: no two top-level modules of a crate
import each other through a loop (a "module knot"), and no files import each other in a circle.

Reads `use` paths and inline paths (`crate::a::b`, `super::x`, `self::y`) from each crate's
sources; a path that names a module resolves to its file (`a.rs` or `a/mod.rs`), an item to the
file of the module that holds it. Test modules (`#[cfg(test)]`) count too: a circle through a
test is still a circle.

    python3 scripts/module-graph.py            # report, exit 1 on a knot or circle
    python3 scripts/module-graph.py --crate server/src   # one crate
"""
import argparse
import os
import re
import sys

CRATE_ROOTS = ("lib.rs", "main.rs")

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")


def crate_dirs(repo):
    found = []
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", ".venv", ".tools", "fuzz", "node_modules")]
        if os.path.basename(dirpath) == "src" and "Cargo.toml" in os.listdir(os.path.dirname(dirpath)):
            found.append(dirpath)
    proto = os.path.join(repo, "proto")
    if os.path.exists(os.path.join(proto, "lib.rs")):
        found.append(proto)
    return sorted(found)


def module_of(src, path):
    """The module path of a file: src/a/b.rs and src/a/b/mod.rs -> ['a', 'b']."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if len(rel) == 1 and rel[0] in ("lib", "main"):
        return []
    return rel


def file_of(modules, parts):
    """The longest prefix of `parts` that is a module with a file of its own."""
    for n in range(len(parts), -1, -1):
        key = tuple(parts[:n])
        if key in modules:
            return modules[key]
    return None


def expand_group(text, start):
    """Paths inside `{...}` starting at text[start] == '{': yields suffix lists."""
    depth, i, token, out, stack = 0, start, "", [], [[]]
    prefixes = [[]]
    while i < len(text):
        c = text[i]
        if c == "{":
            prefixes.append(prefixes[-1] + [p for p in token.strip(":").split("::") if p])
            token = ""
            depth += 1
        elif c in ",}":
            t = [p for p in token.strip().strip(":").split("::") if p and p not in ("self", "*")]
            t = [p.split(" as ")[0].strip() for p in t]
            if t or c == ",":
                out.append(prefixes[-1] + t)
            token = ""
            if c == "}":
                prefixes.pop()
                depth -= 1
                if depth == 0:
                    break
        else:
            token += c
        i += 1
    return [o for o in out if o]


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] if not line.lstrip().startswith("//") else "" for line in text.splitlines())


def edges(src):
    files = []
    for dirpath, _, filenames in os.walk(src):
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".rs")]
    modules = {}
    for f in files:
        modules[tuple(module_of(src, f))] = f
    # Inline `mod name { ... }` blocks are part of their file; `#[path]` modules are rare enough to ignore.
    graph = {f: set() for f in files}
    for f in files:
        here = module_of(src, f)
        # A non-mod.rs file's `super` is its parent; a mod.rs file's `self` is itself.
        text = strip_comments(open(f, encoding="utf-8").read())
        for m in PATH.finditer(text):
            kind, rest = m.group(1), m.group(2)
            if rest == "::{":
                suffixes = expand_group(text, m.end() - 1)
            else:
                suffixes = [rest.strip(":").split("::")]
            for suffix in suffixes:
                if kind == "crate":
                    parts = suffix
                elif kind == "self":
                    parts = here + suffix
                else:
                    parts = here[:-1] + suffix
                    rest_supers = list(suffix)
                    base = here[:-1]
                    while rest_supers and rest_supers[0] == "super":
                        rest_supers.pop(0)
                        base = base[:-1]
                    parts = base + rest_supers
                target = file_of(modules, parts)
                if target and target != f:
                    graph[f].add(target)
    return modules, graph


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(100000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def is_ancestor_chain(comp, src):
    """A module and its own children (mod.rs declaring them, children using `super::`) are one unit."""
    mods = [module_of(src, f) for f in comp]
    shortest = min(mods, key=len)
    return all(m[: len(shortest)] == shortest for m in mods) and sum(1 for m in mods if len(m) == len(shortest)) == 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crate", action="append", help="a crate's src folder (default: every crate)")
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    srcs = args.crate or crate_dirs(args.repo)
    failed = False
    for src in srcs:
        modules, graph = edges(src)
        rel = os.path.relpath(src, args.repo)
        # Top-level modules: each file maps to its first module segment.
        top = {}
        for f, targets in graph.items():
            a = (module_of(src, f) or ["<root>"])[0]
            for t in targets:
                b = (module_of(src, t) or ["<root>"])[0]
                if a != b and a != "<root>" and b != "<root>":
                    top.setdefault(a, set()).add(b)
        for comp in cycles(top):
            failed = True
            print(f"{rel}: module knot: {' <-> '.join(comp)}")
            for a in comp:
                for b in sorted(top.get(a, ())):
                    if b in comp:
                        print(f"    {a} -> {b}")
        for comp in cycles(graph):
            if is_ancestor_chain(comp, src):
                continue
            failed = True
            print(f"{rel}: file circle: {', '.join(os.path.relpath(f, src) for f in comp)}")
    if not failed:
        print(f"no module knot and no file circle in {len(srcs)} crates")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
