#!/usr/bin/env python3
"""The house rules ARCHITECTURE.md states, checked (CI runs this; it needs only cargo and python3):

- crate arrows: server -> cluster -> worker, server -> trace, cluster -> trace; the cluster never
  depends on the server or the OpenAI bridge, the tracer never on the worker or the cluster;
- etcd-client, async-nats, zeromq and kube (with k8s-openapi) are dependencies of the cluster
  alone, opentelemetry* of the tracer alone;
- no module knot in server, cluster or trace, no file circle anywhere (scripts/module-graph.py);
- one lock type: no std::sync::Mutex or RwLock in the tree (parking_lot's; clippy.toml says the
  same to clippy).

    python3 scripts/check-structure.py
"""
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORBIDDEN_ARROWS = {
    "tritium-cluster": {"tritium-server", "tritium-openai-bridge"},
    "tritium-trace": {"tritium-worker", "tritium-cluster", "tritium-server", "tritium-openai-bridge"},
    "tritium-worker": {"tritium-cluster", "tritium-trace", "tritium-server"},
}
REQUIRED_ARROWS = {
    "tritium-server": {"tritium-cluster", "tritium-trace"},
    "tritium-cluster": {"tritium-worker", "tritium-trace"},
}
# External crates only one of our crates may name.
OWNED = {
    "etcd-client": "tritium-cluster",
    "async-nats": "tritium-cluster",
    "zeromq": "tritium-cluster",
    "kube": "tritium-cluster",
    "k8s-openapi": "tritium-cluster",
    "opentelemetry": "tritium-trace",
    "opentelemetry_sdk": "tritium-trace",
    "opentelemetry-otlp": "tritium-trace",
}
KNOT_FREE = ["server/src", "cluster/src", "trace/src"]
STD_LOCK = re.compile(r"std::sync::(Mutex|RwLock)\b|std::sync::\{[^}]*\b(Mutex|RwLock)\b")


def main():
    problems = []
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
    )
    deps = {}
    for package in metadata["packages"]:
        names = {d["name"] for d in package["dependencies"] if d.get("kind") in (None, "build")}
        deps[package["name"]] = names
    for crate, forbidden in FORBIDDEN_ARROWS.items():
        for bad in sorted(deps.get(crate, set()) & forbidden):
            problems.append(f"{crate} depends on {bad}")
    for crate, required in REQUIRED_ARROWS.items():
        for missing in sorted(required - deps.get(crate, set())):
            problems.append(f"{crate} should depend on {missing}")
    for external, owner in OWNED.items():
        for crate, names in sorted(deps.items()):
            if external in names and crate != owner:
                problems.append(f"{crate} depends on {external}, which only {owner} may")

    graph = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "module-graph.py")], capture_output=True, text=True
    )
    for line in graph.stdout.splitlines():
        if "file circle" in line or any(line.startswith(f"{src}: module knot") for src in KNOT_FREE):
            problems.append(line)

    for top in os.listdir(REPO):
        if top in ("target", ".git", ".venv", ".tools", "fuzz") or not os.path.isdir(os.path.join(REPO, top)):
            continue
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, top)):
            dirnames[:] = [d for d in dirnames if d not in ("target", "node_modules", ".venv")]
            for name in filenames:
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, name)
                for number, line in enumerate(open(path, encoding="utf-8"), 1):
                    if STD_LOCK.search(line.split("//")[0]):
                        problems.append(f"{os.path.relpath(path, REPO)}:{number}: std's lock (use parking_lot's)")

    for problem in problems:
        print(problem)
    if problems:
        print(f"check-structure: {len(problems)} problem(s)")
        return 1
    print("check-structure: crate arrows, dependency owners, module knots, file circles and lock types hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
